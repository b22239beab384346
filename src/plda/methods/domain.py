"""PLDA's pixel-level domain adaptation: MaskAssign (source = discriminative pixels, target =
pixels that only respond once the source is erased), gradient reversal and the per-class domain
classifier with its entropy-weighted, class-balanced loss (usr922/plda, ``plda_train.py``)."""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from plda.methods.heads import conv1x1
from plda.models.fastpath import full_precision

IGNORE = 255  # domain label of pixels that are neither source nor target


class GradientReversal(torch.autograd.Function):
    """Identity forward; the backward pass multiplies the gradient by -alpha (Ganin & Lempitsky)."""

    @staticmethod
    def forward(ctx, x: Tensor, alpha: float) -> Tensor:  # type: ignore[override]
        ctx.alpha = alpha
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        return grad.neg() * ctx.alpha, None


def reverse_gradient(x: Tensor, alpha: float) -> Tensor:
    """``GradientReversal`` applied to ``x`` with strength ``alpha``."""
    return GradientReversal.apply(x, alpha)


def grl_alpha(progress: float, gamma: float = 10.0) -> float:
    """DANN schedule alpha = 2 / (1 + exp(-gamma p)) - 1 for training progress p in [0, 1]."""
    p = min(max(float(progress), 0.0), 1.0)
    return 2.0 / (1.0 + math.exp(-gamma * p)) - 1.0


class DomainClassifier(nn.Module):
    """Shared trunk (1x1 conv F->1024, ReLU, Dropout, 1x1 conv 1024->512, ReLU, Dropout) and
    one 2-way head per class. The C heads (``head_list`` in the reference) are one 1x1 conv
    512->2C: rows 2c, 2c+1 are head c, so the output is identical and one kernel does all."""

    def __init__(self, in_channels: int, num_classes: int,
                 hidden: tuple[int, int] = (1024, 512), dropout: float = 0.5) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.trunk = nn.Sequential(
            conv1x1(in_channels, hidden[0], bias=True), nn.ReLU(inplace=True), nn.Dropout(dropout),
            conv1x1(hidden[0], hidden[1], bias=True), nn.ReLU(inplace=True), nn.Dropout(dropout))
        self.heads = nn.Conv2d(hidden[1], 2 * num_classes, 1)
        with torch.no_grad():
            # Xavier per head, as C separate (2, 512) convs: fan_out is 2, not 2C.
            for c in range(num_classes):
                nn.init.xavier_uniform_(self.heads.weight[2 * c:2 * c + 2])

    def forward(self, features: Tensor) -> Tensor:
        """Domain logits (B, C, 2, h, w): index 0 = source, 1 = target."""
        logits = full_precision(self.heads(self.trunk(features)))  # the loss runs in fp32
        return logits.unflatten(1, (self.num_classes, 2))

    @staticmethod
    def merge_heads(weights: Sequence[Tensor], biases: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        """C separate head weights (2, D, 1, 1) and biases (2,) -> merged (2C, D, 1, 1), (2C,)."""
        return torch.cat(list(weights), 0), torch.cat(list(biases), 0)

    @torch.no_grad()
    def from_separate_heads(self, weights: Sequence[Tensor], biases: Sequence[Tensor]) -> None:
        """Load C separate heads (the reference's ``head_list.<c>.weight/.bias``)."""
        if len(weights) != self.num_classes or len(biases) != self.num_classes:
            raise ValueError(f"expected {self.num_classes} head weights and biases, got "
                             f"{len(weights)} and {len(biases)}")
        weight, bias = self.merge_heads(weights, biases)
        self.heads.weight.copy_(weight)
        self.heads.bias.copy_(bias)

    @torch.no_grad()
    def to_separate_heads(self) -> tuple[list[Tensor], list[Tensor]]:
        """The C heads as separate (2, D, 1, 1) weights and (2,) biases (copies)."""
        return ([w.clone() for w in self.heads.weight.split(2, 0)],
                [b.clone() for b in self.heads.bias.split(2, 0)])


@torch.no_grad()
def mask_assign(cam_rv: Tensor, label: Tensor, tau: float = 0.6, eps: float = 1e-5) -> Tensor:
    """Pixels of each present class whose min-max normalised ReLU(revised CAM) exceeds ``tau``.

    cam_rv: (B, C+1, h, w) with background first; label: (B, C). Returns bool (B, C, h, w).
    """
    score = F.relu(cam_rv.detach()[:, 1:])
    flat = score.flatten(2)
    low = flat.amin(-1)[..., None, None]
    high = flat.amax(-1)[..., None, None]
    norm = F.relu(score - low - eps) / (high - low + eps)
    return norm * label[:, :, None, None] > tau


@torch.no_grad()
def erase(image: Tensor, source: Tensor) -> Tensor:
    """Zero (= mean colour after normalisation) every image pixel under a source pixel of any
    class; the stride-grid mask is upsampled by nearest neighbour, as the reference does."""
    union = source.any(1, keepdim=True).to(image.dtype)
    return image * (1 - F.interpolate(union, size=image.shape[-2:], mode="nearest"))


@torch.no_grad()
def near_source(target: Tensor, source: Tensor, cells: int) -> Tensor:
    """``target`` (B, C, h, w) bool kept only within ``cells`` grid cells (Chebyshev) of the same
    class's ``source``; ``cells`` 0 returns it unchanged."""
    if cells <= 0:
        return target
    grown = F.max_pool2d(source.float(), 2 * cells + 1, stride=1, padding=cells) > 0
    return target & grown


@torch.no_grad()
def domain_labels(source: Tensor, target: Tensor) -> Tensor:
    """Per class: 0 on source pixels, 1 on target pixels that are not source, IGNORE elsewhere."""
    ignore = torch.full(source.shape, IGNORE, dtype=torch.long, device=source.device)
    return torch.where(source, 0, torch.where(target, 1, ignore))


def domain_loss(logits: Tensor, labels: Tensor, average_classes: bool = True) -> Tensor:
    """L_uda of one view: for each class c,
    mean over (b, u) of w_ent(u) * w_bal(b, u) * CE(D_c(u), d_c(u)), with ignored pixels 0 but
    counted; w_ent = 1 + exp(-H) (H: detached entropy of softmax(D_c), natural log);
    w_bal = N_T / (N_S + N_T + 1) on source, N_S / (N_S + N_T + 1) on target pixels (per image).
    Classes are summed (reference) or, with ``average_classes``, averaged over the classes with
    at least one labelled pixel in the batch.

    logits: (B, C, 2, h, w); labels: (B, C, H, W) long in {0, 1, IGNORE}.
    """
    b, c, _, h, w = logits.shape
    size = labels.shape[-2:]
    if (h, w) != tuple(size):
        logits = F.interpolate(logits.flatten(1, 2), size=size, mode="bilinear",
                               align_corners=True).unflatten(1, (c, 2))
    log_prob = F.log_softmax(logits, 2)
    is_source, is_target = labels == 0, labels == 1
    ce = -log_prob.gather(2, is_target.long().unsqueeze(2)).squeeze(2)
    with torch.no_grad():
        prob = log_prob.detach().exp()
        entropy = -(prob * torch.log(prob + 1e-10)).sum(2)
        n_source = is_source.sum((2, 3), keepdim=True).to(ce.dtype)
        n_target = is_target.sum((2, 3), keepdim=True).to(ce.dtype)
        balance = (is_source * n_target + is_target * n_source) / (n_source + n_target + 1)
        weight = (1 + torch.exp(-entropy)) * balance
    per_class = (weight * ce).mean((0, 2, 3))
    if not average_classes:
        return per_class.sum()
    present = (is_source | is_target).flatten(2).any(2).any(0)
    return per_class.sum() / present.sum().clamp(min=1)
