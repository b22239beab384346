"""Confusion matrices and segmentation scores (IoU, precision, recall, FP/FN ratios).

Conventions (rows = ground truth, columns = prediction, both class indices 0..n-1):

- Pixels whose ground truth is ``ignore_index`` (255 on VOC) are left out entirely.
- A *prediction* outside 0..n-1 (e.g. 255, "undecided", in a pseudo mask) at a valid pixel is a
  miss for the ground-truth class: it counts in that class's ground-truth total but in no
  class's prediction total, exactly as SEAM's ``evaluation.py`` counts it. Such pixels are kept
  in an optional extra column ``n`` (``count_unassigned=True``); :func:`scores` accepts either
  shape.

Per class c, with TP = pixels of c predicted c, T = ground-truth pixels of c, P = pixels
predicted c, and union = T + P - TP:

- IoU = TP / union; precision = TP / P; recall = TP / T;
- FP ratio = (P - TP) / union and FN ratio = (T - TP) / union: SEAM's ``FP_ALL``/``FN_ALL``, the
  shares of the union that are false positives and false negatives (IoU + FP + FN = 1).
  (SEAM also computes T/TP and P/TP, the reciprocals of recall and precision.)

A class with an empty union (absent from both ground truth and prediction) has every score
``None`` and is left out of the mean IoU; SEAM instead scores it 0 and averages all 21 classes,
which on a subset without e.g. aeroplanes understates mIoU. A class that is present but never
predicted has precision ``None`` (0/0) and IoU 0.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np



def _confusion_uint8(pred: np.ndarray, gt: np.ndarray, n: int, ignore_index: int) -> np.ndarray:
    # One bincount over the full 256x256 joint histogram of two uint8 maps: no masking copies,
    # and the ignore row and out-of-range values fall out of slicing afterwards.
    joint = np.bincount((gt.astype(np.uint16) << 8 | pred).ravel(), minlength=65536)
    joint = joint.reshape(256, 256)
    if 0 <= ignore_index < 256:
        joint[ignore_index] = 0
    bad_rows = np.flatnonzero(joint[n:].any(axis=1))
    if bad_rows.size:
        raise ValueError(f"ground-truth values {(bad_rows + n).tolist()} outside the classes "
                         f"0..{n - 1} and not the ignore index {ignore_index}")
    conf = np.empty((n, n + 1), dtype=np.int64)
    conf[:, :n] = joint[:n, :n]
    conf[:, n] = joint[:n, n:].sum(axis=1)
    return conf


def confusion_matrix(pred: np.ndarray, gt: np.ndarray, num_classes: int, ignore_index: int = 255,
                     count_unassigned: bool = False) -> np.ndarray:
    """The ``(n, n)`` int64 confusion matrix of one label map pair (rows = ground truth).

    ``gt`` values must be 0..n-1 or ``ignore_index`` (else ``ValueError``). With
    ``count_unassigned`` the result is ``(n, n + 1)``; column ``n`` counts valid pixels whose
    prediction lies outside 0..n-1 (see the module docstring).
    """
    pred, gt, n = np.asarray(pred), np.asarray(gt), int(num_classes)
    if pred.shape != gt.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from ground truth {gt.shape}")
    if not 1 <= n <= 256:
        raise ValueError(f"num_classes must be 1..256, got {n}")
    if pred.dtype == np.uint8 and gt.dtype == np.uint8:
        conf = _confusion_uint8(pred, gt, n, ignore_index)
    else:
        valid = gt != ignore_index
        g, p = gt[valid].astype(np.int64), pred[valid].astype(np.int64)
        if g.size and (g.min() < 0 or g.max() >= n):
            bad = np.unique(g[(g < 0) | (g >= n)])
            raise ValueError(f"ground-truth values {bad.tolist()} outside the classes 0..{n - 1} "
                             f"and not the ignore index {ignore_index}")
        p = np.where((p >= 0) & (p < n), p, n)
        conf = np.bincount(g * (n + 1) + p, minlength=n * (n + 1)).reshape(n, n + 1)
    return conf if count_unassigned else conf[:, :n].copy()


def confusion_matrix_torch(pred, gt, num_classes: int, ignore_index: int = 255,
                           count_unassigned: bool = False):
    """:func:`confusion_matrix` for torch tensors, on their device (CPU or GPU).

    Ground-truth values outside 0..n-1 are treated like ``ignore_index`` rather than raising,
    so that no host synchronisation is needed. Sum over ranks with :func:`all_reduce_confusion`.
    """
    import torch

    n = int(num_classes)
    if pred.shape != gt.shape:
        raise ValueError(f"prediction shape {tuple(pred.shape)} differs from ground truth "
                         f"{tuple(gt.shape)}")
    gt, pred = gt.reshape(-1).long(), pred.reshape(-1).long()
    valid = (gt != ignore_index) & (gt >= 0) & (gt < n)
    pred = torch.where((pred >= 0) & (pred < n), pred, torch.full_like(pred, n))
    conf = torch.bincount(gt[valid] * (n + 1) + pred[valid], minlength=n * (n + 1))
    conf = conf.reshape(n, n + 1)
    return conf if count_unassigned else conf[:, :n].contiguous()


def all_reduce_confusion(mat):
    """Sum a confusion tensor over all ``torch.distributed`` ranks (in place); a no-op when no
    process group is initialised. Returns ``mat``."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(mat, op=dist.ReduceOp.SUM)
    return mat


def _percent(num: np.ndarray, den: np.ndarray) -> list[float | None]:
    return [float(100.0 * a / b) if b > 0 else None for a, b in zip(num.tolist(), den.tolist())]


def scores(conf: Any, class_names: Sequence[str]) -> dict[str, Any]:
    """Scores from a confusion matrix, as JSON-ready percentages.

    ``conf`` is ``(n, n)`` or ``(n, n + 1)`` (numpy or torch); ``class_names`` names every class,
    background first. Returns ``miou``, ``classes_in_miou``, ``pixel_accuracy``, ``pixels`` and
    per-class dicts ``iou``, ``precision``, ``recall``, ``fp_ratio``, ``fn_ratio``
    (``None`` where undefined, see the module docstring).
    """
    if hasattr(conf, "detach"):
        conf = conf.detach().cpu().numpy()
    conf = np.asarray(conf, dtype=np.int64)
    n = conf.shape[0]
    if conf.ndim != 2 or conf.shape[1] not in (n, n + 1):
        raise ValueError(f"confusion matrix must be (n, n) or (n, n + 1), got {conf.shape}")
    if len(class_names) != n:
        raise ValueError(f"{len(class_names)} class names for a {n}-class confusion matrix")
    tp = np.diag(conf[:, :n])
    gt_total = conf.sum(axis=1)
    pred_total = conf[:, :n].sum(axis=0)
    union = gt_total + pred_total - tp
    iou = _percent(tp, union)
    per_class = {
        "iou": iou,
        "precision": _percent(tp, pred_total),
        "recall": _percent(tp, gt_total),
        "fp_ratio": _percent(pred_total - tp, union),
        "fn_ratio": _percent(gt_total - tp, union),
    }
    present = [v for v in iou if v is not None]
    pixels = int(gt_total.sum())
    out: dict[str, Any] = {
        "miou": float(np.mean(present)) if present else None,
        "classes_in_miou": len(present),
        "pixel_accuracy": float(100.0 * tp.sum() / pixels) if pixels else None,
        "pixels": pixels,
    }
    for key, values in per_class.items():
        out[key] = dict(zip(class_names, values))
    return out
