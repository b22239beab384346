"""IRN's class-boundary branch (Ahn, Cho, Kwak, CVPR 2019), semantic part: a boundary map
learned from inter-pixel relation labels on a frozen backbone, and the random walk of CAMs over
the affinities it implies (jiwoon-ahn/irn ``resnet50_irn``, ``train_irn``, ``make_sem_seg``).

The backbone stays frozen (features detached, as IRN); only the boundary head trains. Each
chosen level gets a 1x1 conv to ``width`` channels, GroupNorm, ReLU, upsampling to the boundary
grid (the backbone's stride-4 level, IRN's grid); the concatenation goes through a 1x1 conv to
one boundary logit per pixel. The grid is that of the shallowest of these levels.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from plda.refinement.base import Refiner, pending, train_refiner_net
from plda.refinement.walk import (affinity_loss, boundary_to_affinity, displacements,
                                  pair_labels, propagate_cams)
from plda.registry import REFINERS

def boundary_levels(backbone: nn.Module) -> list[str]:
    """Every level at output stride >= 4, shallow to deep (IRN uses all five ResNet stages)."""
    levels = [n for n in backbone.level_names if backbone.strides[n] >= 4]
    if not levels:
        raise ValueError(f"{type(backbone).__name__} has no level at output stride >= 4")
    return levels


class BoundaryNet(nn.Module):
    """Frozen backbone + IRN's boundary head. ``forward(image)`` -> boundary logits
    ``(B, 1, h, w)`` on the grid of the finest chosen level (stride 4 for the usual backbones)."""

    def __init__(self, backbone: nn.Module, width: int = 32, groups: int = 4) -> None:
        super().__init__()
        self.backbone = backbone
        self.backbone.requires_grad_(False)
        self.levels = boundary_levels(backbone)
        self.heads = nn.ModuleDict({
            name: nn.Sequential(nn.Conv2d(backbone.channels[name], width, 1, bias=False),
                                nn.GroupNorm(groups, width), nn.ReLU(inplace=True))
            for name in self.levels})
        self.fuse = nn.Conv2d(width * len(self.levels), 1, 1, bias=True)
        self.input_mean, self.input_std = backbone.input_mean, backbone.input_std

    @property
    def stride(self) -> int:
        return int(self.backbone.strides[self.levels[0]])

    def train(self, mode: bool = True) -> "BoundaryNet":
        super().train(mode)
        self.backbone.eval()  # frozen: BN statistics and dropout stay in inference mode
        return self

    def forward(self, image: Tensor) -> Tensor:
        with torch.no_grad():
            levels = self.backbone(image)
        size = levels[self.levels[0]].shape[-2:]
        parts = []
        for name in self.levels:
            x = self.heads[name](levels[name].detach())
            if x.shape[-2:] != size:
                x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
            parts.append(x)
        return self.fuse(torch.cat(parts, 1))


def downsample_labels(labels: Tensor, size: tuple[int, int]) -> Tensor:
    """Nearest-neighbour resize of ``(B, H, W)`` label maps to the boundary grid."""
    return F.interpolate(labels[:, None].float(), size=size, mode="nearest")[:, 0].long()


class IRNModel(nn.Module):
    """The trainer's model for the boundary branch: ``forward(batch, progress)`` takes
    ``{"image", "mask"}`` (mask: relation labels, 0 background, classes, 255 unsure) and returns
    IRN's affinity loss over the pairs within ``radius`` on the boundary grid."""

    def __init__(self, net: BoundaryNet, radius: int = 10) -> None:
        super().__init__()
        self.net = net
        self.radius = radius
        self.disps = displacements(radius)

    def forward(self, batch: dict[str, Tensor], progress: float = 0.0) -> dict[str, Tensor]:
        logits = self.net(batch["image"])
        boundary = torch.sigmoid(logits[:, 0])
        labels = pair_labels(downsample_labels(batch["mask"], boundary.shape[-2:]), self.disps)
        terms = affinity_loss(boundary_to_affinity(boundary, self.disps), labels)
        out = {"loss": terms["total"]}
        out.update({k: v.detach() for k, v in terms.items() if k != "total"})
        out["stat/pos_pairs"] = (labels["bg_pos"].sum() + labels["fg_pos"].sum()).float()
        return out

    def parameter_groups(self) -> list[dict]:
        """The head's weights and biases (IRN trains them at one rate with weight decay on
        both; the biases of GroupNorm and the last conv included)."""
        params = [p for p in self.net.parameters() if p.requires_grad]
        return [{"params": params, "lr_mult": 1.0, "weight_decay_mult": 1.0, "name": "boundary"}]


@torch.no_grad()
def boundary_map(net: BoundaryNet, image: Tensor, flip: bool = True) -> Tensor:
    """IRN's inference boundary of one normalised image ``(3, H, W)``: sigmoid of the mean of
    the logits of the image and of its (flipped back) mirror -> ``(h, w)``."""
    was_training = net.training
    net.eval()
    try:
        batch = torch.stack([image, image.flip(-1)]) if flip else image[None]
        logits = net(batch)[:, 0]
        if flip:
            logits = (logits[0] + logits[1].flip(-1)) / 2
        else:
            logits = logits[0]
        return torch.sigmoid(logits)
    finally:
        net.train(was_training)


def irn_walk_scores(cams: Tensor, boundary: Tensor, *, radius: int = 5, beta: float = 10.0,
                    exp_times: int = 8) -> Tensor:
    """IRN's walked CAMs of one image: ``cams`` ``(C, H, W)`` (normalised, image size) resized
    to the boundary grid and max-normalised per class (IRN's stride-4 CAMs), walked
    ``2^exp_times`` steps over the affinities of ``boundary`` ``(h, w)``, upsampled to
    ``(H, W)`` and divided by their overall maximum -> ``(C, H, W)`` in [0, 1]."""
    height, width = cams.shape[-2:]
    grid = boundary.shape[-2:]
    small = F.interpolate(cams[None].float(), size=grid, mode="bilinear", align_corners=False)[0]
    small = small / (small.flatten(1).amax(1)[:, None, None] + 1e-5)
    walked = propagate_cams(small.to(boundary.dtype), boundary, radius=radius, beta=beta,
                            exp_times=exp_times)
    up = F.interpolate(walked[None], size=(height, width), mode="bilinear",
                       align_corners=False)[0]
    return up / up.max().clamp(min=1e-12)


def label_walked(scores: Tensor, keys: Sequence[int], bg_threshold: float) -> Tensor:
    """``(H, W) uint8`` labels of walked scores ``(C, H, W)``: the best class, or background
    (0) where every score stays under ``bg_threshold`` (IRN's ``sem_seg_bg_thres``)."""
    scores = torch.cat([torch.full_like(scores[:1], bg_threshold), scores])
    lookup = torch.tensor([0, *keys], dtype=torch.uint8)
    return lookup[scores.argmax(0)]


def irn_pseudo_mask(cams: Tensor, keys: Sequence[int], boundary: Tensor, *, radius: int = 5,
                    beta: float = 10.0, exp_times: int = 8, bg_threshold: float = 0.25
                    ) -> Tensor:
    """IRN's ``make_sem_seg_labels`` for one image.

    Args:
        cams: ``(C, H, W)`` normalised CAMs of the image's classes at image size.
        keys: their label values (e.g. VOC class ids).
        boundary: ``(h, w)`` boundary map from :func:`boundary_map`.
    Returns:
        ``(H, W) uint8`` pseudo mask: 0 background, ``keys`` for the classes.
    """
    if cams.shape[0] == 0:
        return torch.zeros(*cams.shape[-2:], dtype=torch.uint8)
    scores = irn_walk_scores(cams, boundary, radius=radius, beta=beta, exp_times=exp_times)
    return label_walked(scores, keys, bg_threshold)


# ------------------------------------------------------------------------- the IRN refiner

BOUNDARY_WEIGHTS = "boundary.safetensors"
# IRN's seed threshold (cam_eval_thres), for which its relation and walk thresholds were set.
IRN_SEED_THRESHOLD = 0.15
_MAX_THRESHOLD = 0.95


def irn_thresholds(cfg) -> dict[str, float]:
    """IRN's confident-foreground, confident-background and walked-background thresholds:
    ``refine.irn``'s values, or with ``relative_to_seeds`` those values moved with the run's
    chosen seed threshold ``t``: ``v ** (ln t / ln 0.15)`` (``relative_rule: power``, the
    monotone map of CAM values that sends ``t`` onto IRN's 0.15) or ``v * t / 0.15`` capped at
    0.95 (``linear``)."""
    import math

    from plda.errors import DataError
    from plda.runfolder import background_threshold

    irn = cfg.refine.irn
    values = {"fg": irn.fg_threshold, "bg": irn.bg_threshold, "walk_bg": irn.sem_seg_bg_threshold}
    if not irn.relative_to_seeds:
        return values
    seed_threshold = background_threshold(cfg)
    if not 0 < seed_threshold < 1:
        raise DataError(f"refine.irn.relative_to_seeds needs a seed threshold in (0, 1), got "
                        f"{seed_threshold}")
    if irn.relative_rule == "linear":
        ratio = seed_threshold / IRN_SEED_THRESHOLD
        return {k: min(v * ratio, _MAX_THRESHOLD) for k, v in values.items()}
    exponent = math.log(seed_threshold) / math.log(IRN_SEED_THRESHOLD)
    return {k: v ** exponent for k, v in values.items()}


def _relation_task(task: tuple) -> None:
    """Worker: one training image's relation-label PNG from its CAM file."""
    import numpy as np

    from plda.data.camfile import load_cams
    from plda.data.labels import save_label_png
    from plda.inference.runtime import scaled_size
    from plda.inference.seeds import load_image_for_cams
    from plda.refinement.base import resize_image, resize_labels, resize_maps
    from plda.refinement.relations import relation_labels

    cam_path, image_path, out_path, fg, bg, crf, image_scale = task
    cam_file = load_cams(cam_path)
    cams = np.asarray(cam_file.cams, np.float32)
    image = load_image_for_cams(image_path, cam_file, cam_path) if crf else None
    size = cams.shape[1:]
    if image_scale != 1.0:
        small = scaled_size(*size, image_scale)
        cams = resize_maps(cams, small)
        image = None if image is None else resize_image(image, small)
    labels = relation_labels(cams, list(cam_file.keys), image, fg_threshold=fg, bg_threshold=bg)
    if labels.shape != size:  # nearest neighbour back to the image size the trainer expects
        labels = resize_labels(labels, size)
    save_label_png(out_path, labels)


def build_boundary_net(cfg, num_classes: int) -> BoundaryNet:
    """The boundary net on the stage-1 run's trained backbone (frozen)."""
    from plda.engine.seed import seeded
    from plda.methods.build import load_stage1_model

    stage1 = load_stage1_model(cfg, num_classes)
    with seeded(cfg.refine.irn.train.seed):
        return BoundaryNet(stage1.backbone, width=cfg.refine.irn.width)


def load_boundary_net(cfg, num_classes: int) -> BoundaryNet:
    """The trained boundary net of a run (``irn/boundary.safetensors``), eval mode."""
    from plda.errors import DataError
    from plda.runfolder import run_dir
    from plda.weights.io import load_state_dict_file

    net = build_boundary_net(cfg, num_classes)
    path = run_dir(cfg) / IRNRefiner.folder / BOUNDARY_WEIGHTS
    if not path.is_file():
        raise DataError(f"no trained boundary net at {path}: run 'plda refine irn' first")
    net.load_state_dict(load_state_dict_file(path), strict=True)
    return net.eval().to(memory_format=torch.channels_last)  # faster convolutions, same math


def irn_boundary(cfg, net: BoundaryNet, image: Tensor) -> Tensor:
    """The boundary map ``(h, w)`` (float, CPU) of a normalised image ``(3, H, W)``, computed
    at ``refine.irn.image_scale`` (a smaller grid; the walked mask keeps the CAMs' size)."""
    from plda.inference.runtime import scaled_size

    scale = cfg.refine.irn.image_scale
    if scale != 1.0:
        size = scaled_size(*image.shape[-2:], scale)
        image = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False,
                              antialias=True)[0]
    return boundary_map(net, image).float().cpu()


@REFINERS.register("irn", description="IRN: relation labels of the training split from its "
                   "CAMs (<run_dir>/irn/relations/), the boundary head trained on them on "
                   "the frozen stage-1 backbone (<run_dir>/irn/), then each split's CAMs "
                   "walked over the boundary affinities")
class IRNRefiner(Refiner):
    """IRN's boundary branch: relation labels -> boundary net -> random walk of the CAMs."""

    needs_train_cams = True
    folder = "irn"
    weights = BOUNDARY_WEIGHTS
    train_section = "irn_train"
    title = "IRN boundary net"
    sharded = True

    def make_labels(self, *, workers=None) -> dict:
        import time

        from plda.inference.crf import require_pydensecrf
        from plda.runfolder import load_layout
        from plda.utils.parallel import map_in_workers

        cfg, irn = self.cfg, self.cfg.refine.irn
        if irn.crf:
            require_pydensecrf()
        layout = load_layout(cfg, generate=False)
        split = cfg.data.train_split
        ids = layout.ids(split)
        thresholds = irn_thresholds(cfg)
        tasks = [(str(cam_path), str(layout.image_path(image_id)), str(target),
                  thresholds["fg"], thresholds["bg"], irn.crf, irn.image_scale)
                 for image_id, target, cam_path in pending(cfg, split, ids,
                                                           self.out_dir() / "relations")]
        start = time.perf_counter()
        workers = workers if workers is not None else (os.cpu_count() or 1)
        map_in_workers(_relation_task, tasks, workers, desc="relation labels")
        return {"written": len(tasks), "skipped": len(ids) - len(tasks),
                "seconds": time.perf_counter() - start, "thresholds": thresholds}

    def train(self, *, resume, dist) -> dict:
        from plda.runfolder import load_layout

        irn = self.cfg.refine.irn
        net = build_boundary_net(self.cfg, load_layout(self.cfg, generate=False).num_classes)
        return train_refiner_net(self, IRNModel(net, radius=irn.train_radius), net, irn,
                                 self.out_dir() / "relations", resume=resume, dist=dist)

    def pseudo_info(self) -> dict:
        return {"irn_thresholds": self._thresholds}

    def setup(self, dist) -> None:
        from plda.data.transforms import EvalTransform
        from plda.runfolder import load_layout

        self._thresholds = irn_thresholds(self.cfg)  # reads the chosen seed threshold once
        self._layout = load_layout(self.cfg, generate=False)
        self._net = load_boundary_net(self.cfg, self._layout.num_classes).to(dist.device)
        self._device = dist.device
        self._transform = EvalTransform(tuple(self._net.input_mean),
                                        tuple(self._net.input_std))

    def mask(self, image_id, cam_path, image_path):
        import numpy as np

        from plda.data.camfile import load_cams

        irn = self.cfg.refine.irn
        cam_file = load_cams(cam_path)
        image = self._transform(self._layout.load_image(image_id)).to(self._device)
        cams = torch.from_numpy(np.asarray(cam_file.cams, np.float32))
        return irn_pseudo_mask(cams, list(cam_file.keys),
                               irn_boundary(self.cfg, self._net, image), radius=irn.radius,
                               beta=irn.beta, exp_times=irn.exp_times,
                               bg_threshold=self._thresholds["walk_bg"]).numpy()
