"""Pixel-pair affinities on a coarse grid: the pair set, labels from a seed map, affinities from a
boundary map, and the random walk that propagates CAMs along them (IRN / AffinityNet).

Pairs are IRN's: every pixel ``p`` with ``p + d`` for the displacements ``d`` of
:func:`displacements` (half of the disc of radius ``r``, so each unordered pair occurs once).
Per-pair tensors are ``(..., D, h, w)``: entry ``[k, y, x]`` is the pair ``(y, x)`` ->
``(y + dy_k, x + dx_k)``; pairs that leave the grid are invalid (``valid_pairs``).
"""

from __future__ import annotations

import warnings
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

Displacement = tuple[int, int]


def displacements(radius: int) -> list[Displacement]:
    """IRN's search directions: ``(0, dx)`` for ``0 < dx < r``, then ``(dy, dx)`` for
    ``0 < dy < r``, ``|dx| < r`` with ``dy² + dx² < r²``."""
    if radius < 2:
        raise ValueError(f"radius must be >= 2, got {radius}")
    out = [(0, dx) for dx in range(1, radius)]
    out += [(dy, dx) for dy in range(1, radius) for dx in range(-radius + 1, radius)
            if dy * dy + dx * dx < radius * radius]
    return out


def _shift(x: Tensor, dy: int, dx: int, fill: float = 0.0) -> Tensor:
    """``out[..., y, x] = x[..., y + dy, x + dx]`` where that is inside, else ``fill``."""
    h, w = x.shape[-2:]
    out = torch.full_like(x, fill)
    ys, yd = (slice(dy, h), slice(0, h - dy)) if dy >= 0 else (slice(0, h + dy), slice(-dy, h))
    xs, xd = (slice(dx, w), slice(0, w - dx)) if dx >= 0 else (slice(0, w + dx), slice(-dx, w))
    out[..., yd, xd] = x[..., ys, xs]
    return out


def valid_pairs(size: tuple[int, int], disps: Sequence[Displacement],
                device: torch.device | None = None) -> Tensor:
    """``(D, h, w)`` bool: the pair's far end is inside the grid."""
    h, w = size
    ones = torch.ones(1, h, w, dtype=torch.bool, device=device)
    return torch.cat([_shift(ones, dy, dx, False) for dy, dx in disps])


def pair_labels(label: Tensor, disps: Sequence[Displacement], ignore_index: int = 255
                ) -> dict[str, Tensor]:
    """Affinity labels of a seed map ``(..., h, w)`` (0 background, classes, ``ignore_index``):
    ``bg_pos`` (both ends background), ``fg_pos`` (both the same class), ``neg`` (different
    labels); pairs touching an ignored pixel or leaving the grid are in none of them."""
    label = label.long()
    src = label.unsqueeze(-3)                                      # (..., 1, h, w)
    dst = torch.stack([_shift(label, dy, dx, ignore_index) for dy, dx in disps], -3)
    valid = (src != ignore_index) & (dst != ignore_index)
    same = src == dst
    return {"bg_pos": valid & same & (src == 0), "fg_pos": valid & same & (src != 0),
            "neg": valid & ~same}


def _segment(d: Displacement) -> list[Displacement]:
    """IRN's path of a pair: the grid points of the bounding box of (0, 0) and ``d`` that lie
    less than one pixel from the straight line through them (both ends included)."""
    dy, dx = d
    length_sq = dy * dy + dx * dx
    return [(y, x) for y in range(min(0, dy), max(0, dy) + 1)
            for x in range(min(0, dx), max(0, dx) + 1)
            if (dy * x - dx * y) ** 2 / length_sq < 1]


def boundary_to_affinity(boundary: Tensor, disps: Sequence[Displacement]) -> Tensor:
    """IRN's inter-pixel affinity: ``1 - max`` of the boundary map ``(..., h, w)`` (values in
    [0, 1]) over the path between the two pixels of each pair (:func:`_segment`) ->
    ``(..., D, h, w)``. Outside the grid the boundary counts as 1, so pairs leaving it get 0.

    The map is padded with 1 once; every offset any path visits is a view into the padded map,
    stacked into one tensor; every pair's path is gathered from it with one index and reduced
    by one max whose backward is a single scatter (:class:`_PathMax`), instead of one
    ``maximum`` per path point (about 2,000 for radius 10, whose backward dominated IRN's
    training step)."""
    paths = [_segment(d) for d in disps]
    offsets = sorted({o for path in paths for o in path})
    position = {o: i for i, o in enumerate(offsets)}
    reach = max(max(abs(dy), abs(dx)) for dy, dx in offsets)
    h, w = boundary.shape[-2:]
    padded = F.pad(boundary, (reach, reach, reach, reach), value=1.0)
    stack = torch.stack([padded[..., reach + dy:reach + dy + h, reach + dx:reach + dx + w]
                         for dy, dx in offsets], -3)                    # (..., O, h, w)
    longest = max(len(path) for path in paths)
    # Paths shorter than the longest repeat their first point: max is unchanged.
    index = torch.tensor([[position[o] for o in path] + [position[path[0]]] * (longest - len(path))
                          for path in paths], device=boundary.device)    # (D, L)
    return 1.0 - _PathMax.apply(stack, index)


class _PathMax(torch.autograd.Function):
    """``stack (..., O, h, w)``, ``index (D, L)`` -> ``(..., D, h, w)``: the max over ``l`` of
    ``stack[..., index[d, l], y, x]``. Backward sends each gradient to the offset that held the
    maximum with one ``scatter_add`` (autograd's own max/maximum backward builds several
    masks of the whole gathered tensor: most of IRN's training step)."""

    @staticmethod
    def forward(ctx, stack: Tensor, index: Tensor) -> Tensor:
        # A running maximum over the path positions, remembering which offset won (the first
        # on ties): never the whole (..., D, L, h, w) gather.
        ids = index.to(torch.int16)  # offset ids (a few hundred): small masks, fast where
        values = stack.index_select(-3, index[:, 0])                # (..., D, h, w)
        winner = ids[:, :1, None].expand(values.shape).clone()
        for step in range(1, index.shape[1]):
            candidate = stack.index_select(-3, index[:, step])
            winner = torch.where(candidate > values, ids[:, step, None, None], winner)
            values = torch.maximum(values, candidate)
        ctx.save_for_backward(winner)
        ctx.num_offsets = stack.shape[-3]
        return values

    @staticmethod
    def backward(ctx, grad: Tensor):
        (winner,) = ctx.saved_tensors
        shape = (*grad.shape[:-3], ctx.num_offsets, *grad.shape[-2:])
        return grad.new_zeros(shape).scatter_add_(-3, winner.long(), grad), None


def affinity_loss(affinity: Tensor, labels: dict[str, Tensor], eps: float = 1e-5
                  ) -> dict[str, Tensor]:
    """IRN's class-balanced affinity loss (semantic part): ``-log(a)`` on positive pairs,
    background and foreground averaged separately then halved, ``-log(1 - a)`` on negative
    pairs; ``total = (pos + neg) / 2``."""
    pos = -torch.log(affinity + eps)
    neg = -torch.log(1.0 + eps - affinity)

    def mean(loss: Tensor, mask: Tensor) -> Tensor:
        mask = mask.to(loss.dtype)
        return (loss * mask).sum() / (mask.sum() + eps)

    bg, fg = mean(pos, labels["bg_pos"]), mean(pos, labels["fg_pos"])
    negative = mean(neg, labels["neg"])
    positive = bg / 2 + fg / 2
    return {"total": (positive + negative) / 2, "bg_pos": bg, "fg_pos": fg, "neg": negative}


def transition_matrix(affinity: Tensor, disps: Sequence[Displacement], beta: float) -> Tensor:
    """Sparse ``(hw, hw)`` column-stochastic transition matrix of one image's pair affinities
    ``(D, h, w)``: ``A = 1`` on the diagonal and ``a^beta`` on both entries of each valid pair,
    ``T = A / column sums`` (IRN's ``to_transition_matrix`` before its squarings)."""
    d_count, h, w = affinity.shape
    if d_count != len(disps):
        raise ValueError(f"{d_count} affinity planes for {len(disps)} displacements")
    index = torch.arange(h * w, device=affinity.device).view(h, w)
    valid = valid_pairs((h, w), disps, affinity.device)
    rows, cols, vals = [index.flatten()], [index.flatten()], [torch.ones(h * w, device=affinity.device,
                                                                        dtype=affinity.dtype)]
    for k, (dy, dx) in enumerate(disps):
        src = index[valid[k]]
        dst = _shift(index, dy, dx, -1)[valid[k]]
        value = affinity[k][valid[k]].clamp(min=0) ** beta
        rows += [src, dst]
        cols += [dst, src]
        vals += [value, value]
    rows, cols, vals = torch.cat(rows), torch.cat(cols), torch.cat(vals)
    colsum = torch.zeros(h * w, dtype=vals.dtype, device=vals.device).index_add_(0, cols, vals)
    return torch.sparse_coo_tensor(torch.stack([rows, cols]), vals / colsum[cols],
                                   (h * w, h * w), check_invariants=False).coalesce()


def random_walk(cams: Tensor, affinity: Tensor, disps: Sequence[Displacement], *,
                beta: float = 10.0, exp_times: int = 8) -> Tensor:
    """Propagate ``cams`` ``(K, h, w)`` by the random walk ``x <- x T`` applied ``2^exp_times``
    times (IRN squares ``T`` ``exp_times`` times; multiplying by the sparse ``T`` step by step
    is the same product without the dense ``hw x hw`` matrix)."""
    k, h, w = cams.shape
    with warnings.catch_warnings():  # "sparse CSR support is in beta"
        warnings.simplefilter("ignore", UserWarning)
        t_transposed = transition_matrix(affinity, disps, beta).t().to_sparse_csr()
    x = cams.reshape(k, h * w).t().contiguous()                    # (hw, K): x^T
    for _ in range(2 ** exp_times):
        x = t_transposed @ x                                       # (x T)^T = T^T x^T
    return x.t().reshape(k, h, w)


def propagate_cams(cams: Tensor, boundary: Tensor, *, radius: int = 5, beta: float = 10.0,
                   exp_times: int = 8) -> Tensor:
    """IRN's ``propagate_to_edge``: CAMs ``(K, h, w)`` on the boundary grid, damped by
    ``1 - boundary`` ``(h, w)``, walked ``2^exp_times`` steps over the affinities of pairs
    within ``radius``."""
    disps = displacements(radius)
    affinity = boundary_to_affinity(boundary, disps)
    return random_walk(cams * (1 - boundary), affinity, disps, beta=beta, exp_times=exp_times)
