"""Pixel-adaptive mask refinement (PAMR; Araslanov & Roth, CVPR 2020, visinf/1-stage-wseg).

Each iteration replaces a pixel's mask by a weighted mean of its 8 neighbours at every dilation
(replicate padding at the border; the pixel itself is not among them). The weights are a softmax
over all those neighbours of -|I(u) - I(v)| / (0.1 * sigma(u)), averaged over RGB, where
sigma(u) is the (unbiased) standard deviation of I over the 3x3 windows of all dilations
centred at u, centre included once per dilation.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_OFFSETS = tuple((dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1))


def _neighbour_index(h: int, w: int, dilation: int, centre: bool, device: torch.device
                     ) -> Tensor:
    """(8 or 9, h*w) flat indices of the pixels at (y + dy*d, x + dx*d), clamped at the border
    (the reference's replicate padding)."""
    ys = torch.arange(h, device=device)
    xs = torch.arange(w, device=device)
    rows = [((ys + dy * dilation).clamp(0, h - 1)[:, None] * w
             + (xs + dx * dilation).clamp(0, w - 1)[None, :]).flatten()
            for dy, dx in _OFFSETS if centre or dy or dx]
    return torch.stack(rows)


def _gather(x: Tensor, index: Tensor) -> Tensor:
    """(B, K, H, W) values at ``index`` (P, H*W) -> (B, K, P, H, W)."""
    b, k, h, w = x.shape
    return x.flatten(2)[:, :, index].view(b, k, index.shape[0], h, w)


class PAMR(nn.Module):
    """Refine masks (B, C, H, W) with image (B, 3, H, W) in 0-1 units on the same grid."""

    def __init__(self, iterations: int = 10, dilations: Sequence[int] = (1, 2, 4, 8, 12, 24)
                 ) -> None:
        super().__init__()
        self.iterations = iterations
        self.dilations = tuple(dilations)

    def _indices(self, image: Tensor, centre: bool) -> list[Tensor]:
        h, w = image.shape[-2:]
        return [_neighbour_index(h, w, d, centre, image.device) for d in self.dilations]

    def affinity(self, image: Tensor) -> Tensor:
        """Softmax weights (B, 8 * len(dilations), H, W) over the neighbours of every pixel."""
        windows = torch.cat([_gather(image, i) for i in self._indices(image, True)], 2)
        sigma = windows.std(2, keepdim=True)
        neighbours = torch.cat([_gather(image, i) for i in self._indices(image, False)], 2)
        logits = -(neighbours - image.unsqueeze(2)).abs() / (1e-8 + 0.1 * sigma)
        return F.softmax(logits.mean(1), 1)

    @torch.no_grad()
    def forward(self, image: Tensor, mask: Tensor) -> Tensor:
        weights = self.affinity(image).split(8, 1)
        indices = self._indices(image, False)
        for _ in range(self.iterations):
            # One dilation at a time keeps the (B, C, 8, H, W) neighbour stack small.
            mask = sum(torch.einsum("bkphw,bphw->bkhw", _gather(mask, index), weight)
                       for index, weight in zip(indices, weights))
        return mask
