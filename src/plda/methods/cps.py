"""Confident pseudo-supervision (CPS) of PLDA: PAMR-refined CAM -> one-hot pseudo labels, kept
only inside the source (or target) regions, and the class-balanced cross-entropy that trains the
raw CAM on them (the pseudo-label and loss functions follow visinf/1-stage-wseg)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from plda.methods.config import CPSConfig
from plda.methods.pamr import PAMR


@torch.no_grad()
def cam_probabilities(raw: Tensor, background_logit: float = 1.0) -> Tensor:
    """Softmax over the C+1 channels of the raw CAM with its background logit set to a constant."""
    logits = raw.detach().clone()
    logits[:, 0] = background_logit
    return F.softmax(logits, 1)


@torch.no_grad()
def pseudo_labels(prob: Tensor, cutoff_low: float = 0.2, cutoff_top: float = 0.6,
                  cutoff_top_bg: float = 0.7) -> Tensor:
    """One-hot (B, K, h, w) bool: channel k claims u where prob_k(u) > max(cutoff_low,
    cutoff_top * max_u prob_k) (``cutoff_top_bg`` for channel 0, the background); pixels claimed
    by two or more channels are dropped."""
    scale = torch.full(prob.shape[:2], cutoff_top, dtype=prob.dtype, device=prob.device)
    scale[:, 0] = cutoff_top_bg
    threshold = (prob.flatten(2).amax(-1) * scale).clamp(min=cutoff_low)
    claimed = prob > threshold[..., None, None]
    return claimed & (claimed.sum(1, keepdim=True) <= 1)


@torch.no_grad()
def restrict_to_regions(pseudo: Tensor, regions: Tensor) -> Tensor:
    """Keep foreground channel k only inside ``regions[:, k-1]`` (S or T) and drop background."""
    return torch.cat([torch.zeros_like(pseudo[:, :1]), pseudo[:, 1:] & regions], 1)


@torch.no_grad()
def cps_targets(raw: Tensor, image: Tensor, label: Tensor, regions: Tensor, pamr: PAMR,
                cfg: CPSConfig) -> tuple[Tensor, Tensor]:
    """(restricted, full) pseudo labels (B, C+1, h, w) from the raw CAM (B, C+1, h, w), the
    image in 0-1 units (B, 3, H, W), labels (B, C) and source/target regions (B, C, h, w)."""
    prob = cam_probabilities(raw, cfg.background_logit)
    small = F.interpolate(image, size=prob.shape[-2:], mode="bilinear", align_corners=True)
    full_label = torch.cat([torch.ones_like(label[:, :1]), label], 1)[:, :, None, None]
    full = pseudo_labels(pamr(small, prob) * full_label, cfg.cutoff_low, cfg.cutoff_top,
                         cfg.cutoff_top_bg)
    return restrict_to_regions(full, regions), full


def constant_background(raw: Tensor, value: float) -> Tensor:
    """``raw`` (B, C+1, h, w) whose channel 0 reads ``value`` everywhere while its gradient still
    reaches the real background logit: A0 - sg(A0) + value (the published code's CPS input)."""
    background = raw[:, :1]
    return torch.cat([background - background.detach() + value, raw[:, 1:]], 1)


def balanced_cross_entropy(logits: Tensor, target: Tensor, counts_from: Tensor | None = None
                           ) -> Tensor:
    """Class-balanced CE of ``logits`` (B, K, h, w) against one-hot ``target`` (B, K, H, W):
    pixel weight (N - N_k) / (N + 1) with N_k the pixels of the pixel's class k and N their sum
    over classes, per image, counted on ``counts_from`` (default: ``target``); unlabelled pixels
    weigh 0; mean over all pixels. Logits are resized to the target grid (bilinear)."""
    if logits.shape[-2:] != target.shape[-2:]:
        logits = F.interpolate(logits, size=target.shape[-2:], mode="bilinear",
                               align_corners=True)
    target = target.to(logits.dtype)
    source = target if counts_from is None else counts_from.to(logits.dtype)
    counts = source.flatten(2).sum(-1)
    total = counts.sum(1, keepdim=True)
    class_weight = (total - counts) / (total + 1)
    weight = (target * class_weight[..., None, None]).sum(1)
    ce = F.cross_entropy(logits, target.argmax(1), reduction="none")
    return (weight * ce).mean()
