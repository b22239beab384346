"""AffinityNet (Ahn & Kwak, CVPR 2018; jiwoon-ahn/psa ``resnet38_aff``, as SEAM uses it).

Features: 1x1 convs (no bias, Kaiming) of the backbone's two PCM levels and its final level to
64 / 128 / 256 channels, ELU, concatenated on the final level's grid, a 1x1 conv 448 -> 448
(Xavier, gain 4), ELU. The affinity of two pixels is ``exp(-mean_c |f_i - f_j|)``. Unlike IRN the
backbone trains too (psa's four groups: backbone 1x / 2x, new layers 10x). Labels come from the
"la"/"ha" CRF seeds: foreground where "la" has a class, background where "ha" has background,
ignored elsewhere. Inference walks all classes and a background plane ``(1 - max CAM)^alpha``,
pooled to the feature grid, ``2^logt`` steps with affinities raised to ``beta``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from plda.refinement.base import Refiner, pending, train_refiner_net
from plda.refinement.walk import (
    _shift,
    affinity_loss,
    displacements,
    pair_labels,
    random_walk,
    valid_pairs,
)
from plda.refinement.irn import downsample_labels
from plda.registry import REFINERS

IGNORE = 255


def affinity_labels(la: np.ndarray, ha: np.ndarray) -> np.ndarray:
    """psa's label: the class where the "la" seed has one, background where the "ha" seed is
    background, 255 elsewhere (``(H, W) uint8`` maps of equal size)."""
    la, ha = np.asarray(la), np.asarray(ha)
    if la.shape != ha.shape:
        raise ValueError(f"la seed {la.shape} and ha seed {ha.shape} differ in size")
    out = la.astype(np.uint8).copy()
    out[la == 0] = IGNORE
    out[ha == 0] = 0
    return out


class AffinityNet(nn.Module):
    """Backbone + psa's affinity head; ``forward(image)`` -> features ``(B, 448, h, w)``."""

    def __init__(self, backbone: nn.Module, widths: Sequence[int] = (64, 128, 256)) -> None:
        super().__init__()
        self.backbone = backbone
        self.levels = [*backbone.pcm_levels, backbone.final_level]
        self.reduce = nn.ModuleList(nn.Conv2d(backbone.channels[n], w, 1, bias=False)
                                    for n, w in zip(self.levels, widths))
        for conv in self.reduce:
            nn.init.kaiming_normal_(conv.weight)
        total = sum(widths)
        self.fuse = nn.Conv2d(total, total, 1, bias=False)
        nn.init.xavier_uniform_(self.fuse.weight, gain=4)
        self.input_mean, self.input_std = backbone.input_mean, backbone.input_std

    @property
    def stride(self) -> int:
        return int(self.backbone.strides[self.backbone.final_level])

    def forward(self, image: Tensor) -> Tensor:
        levels = self.backbone(image)
        size = levels[self.backbone.final_level].shape[-2:]
        parts = []
        for name, conv in zip(self.levels, self.reduce):
            x = F.elu(conv(levels[name]))
            if x.shape[-2:] != size:
                x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
            parts.append(x)
        return F.elu(self.fuse(torch.cat(parts, 1)))

    def parameter_groups(self) -> list[dict]:
        weights, biases = self.backbone.parameter_groups()
        new = [p for m in (*self.reduce, self.fuse) for p in m.parameters() if p.requires_grad]
        return [{"params": list(weights), "lr_mult": 1.0, "weight_decay_mult": 1.0,
                 "name": "backbone_weights"},
                {"params": list(biases), "lr_mult": 2.0, "weight_decay_mult": 0.0,
                 "name": "backbone_biases"},
                {"params": new, "lr_mult": 10.0, "weight_decay_mult": 1.0, "name": "new_weights"}]


def pair_affinity(features: Tensor, disps: Sequence[tuple[int, int]]) -> Tensor:
    """``exp(-mean_c |f(p) - f(p + d)|)`` for every pair -> ``(B, D, h, w)``; 0 off the grid."""
    valid = valid_pairs(features.shape[-2:], disps, features.device)
    out = [torch.exp(-(features - _shift(features, dy, dx)).abs().mean(1)) * valid[k]
           for k, (dy, dx) in enumerate(disps)]
    return torch.stack(out, 1)


class AffinityNetModel(nn.Module):
    """The trainer's model: psa's affinity loss (bg/4 + fg/4 + neg/2) on ``{"image", "mask"}``
    (mask: :func:`affinity_labels`) for the pairs within ``radius`` on the feature grid."""

    def __init__(self, net: AffinityNet, radius: int = 5) -> None:
        super().__init__()
        self.net = net
        self.disps = displacements(radius)

    def forward(self, batch: dict[str, Tensor], progress: float = 0.0) -> dict[str, Tensor]:
        features = self.net(batch["image"])
        labels = pair_labels(downsample_labels(batch["mask"], features.shape[-2:]), self.disps)
        terms = affinity_loss(pair_affinity(features, self.disps), labels)
        out = {"loss": terms["total"]}
        out.update({k: v.detach() for k, v in terms.items() if k != "total"})
        return out

    def parameter_groups(self) -> list[dict]:
        return self.net.parameter_groups()


@torch.no_grad()
def affinity_pseudo_mask(net: AffinityNet, image: Tensor, cams: Tensor, keys: Sequence[int], *,
                         radius: int = 5, alpha: float = 16.0, beta: float = 8.0,
                         logt: int = 8) -> Tensor:
    """psa's ``infer_aff`` for one image.

    Args:
        image: ``(3, H, W)`` normalised image; cams: ``(C, H, W)`` normalised CAMs of its
            classes; keys: their label values.
    Returns:
        ``(H, W) uint8`` pseudo mask (0 background, ``keys``).
    """
    was_training = net.training
    net.eval()
    try:
        height, width = image.shape[-2:]
        s = net.stride
        pad_h, pad_w = -height % s, -width % s
        features = net(F.pad(image[None], (0, pad_w, 0, pad_h)))[0]
    finally:
        net.train(was_training)
    cams = cams.float()
    fg_max = cams.amax(0, keepdim=True) if cams.shape[0] else torch.zeros(1, height, width)
    full = torch.cat([(1 - fg_max) ** alpha, cams]).to(features.device, features.dtype)
    full = F.pad(full, (0, pad_w, 0, pad_h))
    small = F.avg_pool2d(full[None], s, s)[0]
    if small.shape[-2:] != features.shape[-2:]:
        small = F.interpolate(small[None], size=features.shape[-2:], mode="bilinear",
                              align_corners=False)[0]
    short = min(features.shape[-2:])
    if short < 2 * radius + 1:  # psa: a radius that fits the grid
        radius = max(2, (short - 1) // 2)
    disps = displacements(radius)
    walked = random_walk(small, pair_affinity(features[None], disps)[0], disps, beta=beta,
                         exp_times=logt)
    up = F.interpolate(walked[None], size=(height + pad_h, width + pad_w), mode="bilinear",
                       align_corners=False)[0, :, :height, :width]
    lookup = torch.tensor([0, *keys], dtype=torch.uint8)
    return lookup[up.argmax(0).cpu()]


# -------------------------------------------------------------------- the AffinityNet refiner

AFFINITY_WEIGHTS = "affinitynet.safetensors"


def _affinity_label_task(task: tuple) -> None:
    from plda.data.labels import load_label_png, save_label_png

    la_path, ha_path, out_path = task
    save_label_png(out_path, affinity_labels(load_label_png(la_path), load_label_png(ha_path)))


def build_affinity_net(cfg, num_classes: int) -> AffinityNet:
    """AffinityNet on the stage-1 run's trained backbone (which trains on with it)."""
    from plda.engine.seed import seeded
    from plda.methods.build import load_stage1_model

    backbone = load_stage1_model(cfg, num_classes).backbone
    with seeded(cfg.refine.affinity.train.seed):
        return AffinityNet(backbone)


@REFINERS.register("affinity", description="psa's AffinityNet trained on the la/ha CRF seeds "
                   "of the training split (<run_dir>/affinity/), then the walk of each "
                   "image's CAMs")
class AffinityRefiner(Refiner):
    """psa / SEAM: "la" / "ha" CRF seeds -> AffinityNet -> random walk of the CAMs."""

    needs_train_cams = True
    folder = "affinity"
    weights = AFFINITY_WEIGHTS
    train_section = "affinity_train"
    title = "AffinityNet"
    sharded = True

    def make_labels(self, *, workers=None) -> dict:
        """psa's training labels: "la" / "ha" CRF seeds of the training split, then the label
        (class from "la", background from "ha", 255 elsewhere) in ``affinity/labels/``."""
        from plda.inference.seeds import write_seeds
        from plda.runfolder import load_layout, run_dir
        from plda.utils.parallel import map_in_workers

        cfg = self.cfg
        layout = load_layout(cfg, generate=False)
        split = cfg.data.train_split
        ids = layout.ids(split)
        cams = run_dir(cfg) / "cams" / split
        seeds = {name: self.out_dir() / name for name in ("la", "ha")}
        for name, folder in seeds.items():
            write_seeds(cams, folder, ids, None, crf=name, layout=layout, workers=workers)
        tasks = [(str(seeds["la"] / f"{i}.png"), str(seeds["ha"] / f"{i}.png"), str(target))
                 for i, target, _ in pending(cfg, split, ids, self.out_dir() / "labels")]
        map_in_workers(_affinity_label_task, tasks, 1, desc="affinity labels")
        return {"written": len(tasks), "skipped": len(ids) - len(tasks)}

    def train(self, *, resume, dist) -> dict:
        from plda.runfolder import load_layout

        aff = self.cfg.refine.affinity
        net = build_affinity_net(self.cfg, load_layout(self.cfg, generate=False).num_classes)
        return train_refiner_net(self, AffinityNetModel(net, radius=aff.radius), net, aff,
                                 self.out_dir() / "labels", resume=resume, dist=dist)

    def setup(self, dist) -> None:
        from plda.data.transforms import EvalTransform
        from plda.errors import DataError
        from plda.runfolder import load_layout
        from plda.weights.io import load_state_dict_file

        path = self.out_dir() / AFFINITY_WEIGHTS
        if not path.is_file():
            raise DataError(f"no trained AffinityNet at {path}: run 'plda refine affinity' "
                            "first")
        self._layout = load_layout(self.cfg, generate=False)
        net = build_affinity_net(self.cfg, self._layout.num_classes)
        net.load_state_dict(load_state_dict_file(path), strict=True)
        self._net = net.to(dist.device, memory_format=torch.channels_last).eval()
        self._device = dist.device
        self._transform = EvalTransform(tuple(net.input_mean), tuple(net.input_std))

    def mask(self, image_id, cam_path, image_path):
        from plda.data.camfile import load_cams

        aff = self.cfg.refine.affinity
        cam_file = load_cams(cam_path)
        image = self._transform(self._layout.load_image(image_id)).to(self._device)
        cams = torch.from_numpy(np.asarray(cam_file.cams, np.float32))
        return affinity_pseudo_mask(self._net, image, cams, list(cam_file.keys),
                                    radius=aff.radius, alpha=aff.alpha, beta=aff.beta,
                                    logt=aff.logt).numpy()
