"""Choosing the seeds' background threshold without ground-truth masks.

Seeds are ``argmax([t, CAM_1 .. CAM_K])``: a pixel is foreground when the highest CAM of its
image's classes lies strictly above ``t``. With masks, ``t`` is the best of a sweep. Without
them, a rule reads only the CAMs: every rule here looks at the distribution of ``m``, each
pixel's highest CAM value (0 where the image has no class), pooled over the images of a split.

Rules (``cam.label_free``):

- ``otsu``: Otsu's threshold of that distribution, the ``t`` that best separates it into two
  groups (largest between-group variance);
- ``soft_miou``: treat ``m`` as the chance that the pixel is foreground and take the ``t`` with
  the highest expected mIoU of foreground and background: foreground IoU
  ``Σ_{m>t} m / (Σ m + Σ_{m>t} (1 − m))``, background IoU likewise with ``1 − m``;
- ``fixed:V``: the constant ``V`` (the published codes' 0.15 for IRN's CAMs, 0.26 for SEAM's).

Which rule lands closest to the mask-tuned threshold was measured on the VOC sample and the
synthetic set (``benchmarks/threshold_rules.py``; the result and the default are in
docs/history.md).
"""

from __future__ import annotations

import math
import os
from typing import Sequence

import numpy as np

from plda.errors import ConfigError, DataError

BINS = 1000  # histogram resolution of m over [0, 1]: thresholds land on multiples of 0.001
RULES = ("otsu", "soft_miou")
FIXED_PREFIX = "fixed:"


def check_rule(rule: str) -> str:
    """``rule`` if it names a rule (``otsu``, ``soft_miou`` or ``fixed:V`` with V in [0, 1])."""
    if rule in RULES:
        return rule
    if isinstance(rule, str) and rule.startswith(FIXED_PREFIX):
        try:
            value = float(rule[len(FIXED_PREFIX):])
        except ValueError:
            value = math.nan
        if 0.0 <= value <= 1.0:
            return rule
    raise ConfigError(f"label-free threshold rule {rule!r}: expected one of "
                      f"{', '.join(RULES)} or 'fixed:V' with V in [0, 1]")


def _histogram_chunk(ids: Sequence[str], cam_dir: str, bins: int) -> tuple[np.ndarray, list]:
    from plda.data.camfile import load_cams
    from plda.utils.io import safe_join

    hist = np.zeros(bins, dtype=np.int64)
    for image_id in ids:
        path = safe_join(cam_dir, f"{image_id}.npz")
        if not path.is_file():
            raise DataError(f"CAM file {path} not found (run CAM inference for {image_id!r})")
        camfile = load_cams(path)
        if len(camfile.keys) == 0:
            hist[0] += int(np.prod(camfile.image_size))
            continue
        m = np.asarray(camfile.cams, dtype=np.float32).max(axis=0)
        idx = np.clip((m * bins).astype(np.int64), 0, bins - 1)
        hist += np.bincount(idx.ravel(), minlength=bins)
    return hist, []


def cam_histogram(cam_dir: str | os.PathLike, ids: Sequence[str], *, bins: int = BINS,
                  num_workers: int | None = None) -> np.ndarray:
    """Counts of the per-pixel highest CAM value ``m`` in ``bins`` equal bins over [0, 1],
    pooled over the CAM files ``cam_dir/<id>.npz`` (one pass, in worker processes)."""
    from plda.utils.parallel import map_sum

    hist, _ = map_sum(_histogram_chunk, list(ids), (str(cam_dir), int(bins)), num_workers,
                      "threshold histogram")
    return hist


def _centres(bins: int) -> np.ndarray:
    return (np.arange(bins, dtype=np.float64) + 0.5) / bins


def otsu_threshold(hist: np.ndarray) -> float:
    """Otsu's threshold of a histogram over [0, 1]: the bin edge with the largest
    between-class variance (the lowest such edge on ties)."""
    hist = np.asarray(hist, dtype=np.float64)
    bins, total = len(hist), hist.sum()
    if total <= 0:
        raise DataError("no pixels to choose a background threshold from")
    p = hist / total
    x = _centres(bins)
    w0 = np.cumsum(p)                      # weight at or below edge k+1
    mu0 = np.cumsum(p * x)
    mu = mu0[-1]
    w1 = 1.0 - w0
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (mu * w0 - mu0) ** 2 / (w0 * w1)
    between[~np.isfinite(between)] = -1.0
    k = int(np.argmax(between[:-1]))       # an edge strictly inside [0, 1]
    return (k + 1) / bins


def soft_miou_threshold(hist: np.ndarray) -> float:
    """The edge ``t`` that maximises the expected mIoU of foreground and background when each
    pixel is foreground with probability ``m`` (module docstring)."""
    hist = np.asarray(hist, dtype=np.float64)
    bins = len(hist)
    if hist.sum() <= 0:
        raise DataError("no pixels to choose a background threshold from")
    x = _centres(bins)
    fg_mass, bg_mass = hist * x, hist * (1.0 - x)
    # Edge k (t = k / bins): bins >= k are foreground.
    fg_above = np.concatenate([np.cumsum(fg_mass[::-1])[::-1], [0.0]])
    bg_above = np.concatenate([np.cumsum(bg_mass[::-1])[::-1], [0.0]])
    fg_total, bg_total = fg_mass.sum(), bg_mass.sum()
    fg_below, bg_below = fg_total - fg_above, bg_total - bg_above
    with np.errstate(divide="ignore", invalid="ignore"):
        iou_fg = fg_above / (fg_total + bg_above)
        iou_bg = bg_below / (bg_total + fg_below)
    score = np.nan_to_num(iou_fg) + np.nan_to_num(iou_bg)
    k = int(np.argmax(score[1:bins])) + 1  # t strictly inside (0, 1)
    return k / bins


def rule_threshold(hist: np.ndarray, rule: str) -> float:
    """The background threshold ``rule`` gives for the histogram ``hist``, rounded to 0.001."""
    rule = check_rule(rule)
    if rule.startswith(FIXED_PREFIX):
        value = float(rule[len(FIXED_PREFIX):])
    elif rule == "otsu":
        value = otsu_threshold(hist)
    else:
        value = soft_miou_threshold(hist)
    return round(value, 3)


def all_rule_thresholds(hist: np.ndarray, rules: Sequence[str]) -> dict[str, float]:
    """``{rule: threshold}`` for every rule in ``rules``, from one histogram."""
    return {rule: rule_threshold(hist, rule) for rule in rules}


__all__ = ["BINS", "RULES", "all_rule_thresholds", "cam_histogram", "check_rule",
           "otsu_threshold", "rule_threshold", "soft_miou_threshold"]
