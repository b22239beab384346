"""IRN's class-boundary branch (Ahn, Cho, Kwak, CVPR 2019), semantic part: a boundary map
learned from inter-pixel relation labels on a frozen backbone, and the random walk of CAMs over
the affinities it implies (jiwoon-ahn/irn ``resnet50_irn``, ``train_irn``, ``make_sem_seg``).

The backbone stays frozen (features detached, as IRN); only the boundary head trains. Each
chosen level gets a 1x1 conv to ``width`` channels, GroupNorm, ReLU, upsampling to the boundary
grid (the backbone's stride-4 level, IRN's grid); the concatenation goes through a 1x1 conv to
one boundary logit per pixel. The grid is that of the shallowest of these levels.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from plda.refinement.affinity import (affinity_loss, boundary_to_affinity, displacements,
                                      pair_labels, propagate_cams)

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
