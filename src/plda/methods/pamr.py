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


def _neighbours(x: Tensor, dilation: int, centre: bool) -> Tensor:
    """(B, K, 8 or 9, H, W): x's values at (y + dy*d, x + dx*d) for the offsets of ``_OFFSETS``
    (the centre only when ``centre``), clamped at the border as the reference's replicate
    padding. Slices of one padded copy: a gather through flat indices costs 6x more on a
    28 x 28 grid, for the same values."""
    h, w = x.shape[-2:]
    d = dilation
    padded = F.pad(x, (d, d, d, d), mode="replicate")
    return torch.stack([padded[..., d + dy * d:d + dy * d + h, d + dx * d:d + dx * d + w]
                        for dy, dx in _OFFSETS if centre or dy or dx], 2)


class PAMR(nn.Module):
    """Refine masks (B, C, H, W) with image (B, 3, H, W) in 0-1 units on the same grid."""

    def __init__(self, iterations: int = 10, dilations: Sequence[int] = (1, 2, 4, 8, 12, 24)
                 ) -> None:
        super().__init__()
        self.iterations = iterations
        self.dilations = tuple(dilations)

    def affinity(self, image: Tensor) -> Tensor:
        """Softmax weights (B, 8 * len(dilations), H, W) over the neighbours of every pixel."""
        windows = torch.cat([_neighbours(image, d, True) for d in self.dilations], 2)
        sigma = windows.std(2, keepdim=True)
        neighbours = torch.cat([_neighbours(image, d, False) for d in self.dilations], 2)
        logits = -(neighbours - image.unsqueeze(2)).abs() / (1e-8 + 0.1 * sigma)
        return F.softmax(logits.mean(1), 1)

    @torch.no_grad()
    def forward(self, image: Tensor, mask: Tensor) -> Tensor:
        weights = self.affinity(image).split(8, 1)
        for _ in range(self.iterations):
            # One dilation at a time keeps the (B, C, 8, H, W) neighbour stack small.
            mask = sum(torch.einsum("bkphw,bphw->bkhw", _neighbours(mask, d, False), weight)
                       for d, weight in zip(self.dilations, weights))
        return mask
