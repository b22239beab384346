"""How much of each object's *discriminative part* and of the *rest of its body* a label map
covers, against a dataset's part masks (the synthetic dataset's ``SegmentationParts/``).

This is the premise of PLDA made measurable: a classifier's CAM lights up the class-specific part
of an object; a method that closes the gap should extend its seeds over the body too. For an
object of class ``c``, a part pixel is covered when the prediction says ``c`` there; a body pixel
(object of class ``c`` in the full mask, not part) likewise. Pixels are pooled over images
(micro averages), per class and over all classes.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from plda.errors import DataError
from plda.utils.io import safe_join
from plda.utils.progress import progress
from plda.data.labels import load_label_png

PARTS_DIR = "SegmentationParts"


def _label(folder: str | os.PathLike, image_id: str, what: str) -> np.ndarray:
    path = safe_join(folder, image_id + ".png")
    if not path.is_file():
        raise DataError(f"{what} not found: {path}")
    return load_label_png(path)


def coverage_counts(pred: np.ndarray, gt: np.ndarray, parts: np.ndarray, num_classes: int
                    ) -> np.ndarray:
    """``(num_classes, 4)`` int64 counts per class (row 0, background, stays zero):
    part pixels, part pixels predicted as the class, body pixels, body pixels predicted as it."""
    if not (pred.shape == gt.shape == parts.shape):
        raise DataError(f"shapes differ: prediction {pred.shape}, mask {gt.shape}, "
                        f"parts {parts.shape}")
    out = np.zeros((num_classes, 4), np.int64)
    for c in np.unique(gt):
        c = int(c)
        if c == 0 or c >= num_classes:  # background, or the ignore label
            continue
        obj = gt == c
        part = obj & (parts == c)
        body = obj & ~part
        hit = pred == c
        out[c] = (part.sum(), (part & hit).sum(), body.sum(), (body & hit).sum())
    return out


def _share(hit: int, total: int) -> float | None:
    return 100.0 * hit / total if total else None


def part_body_coverage(pred_dir: str | os.PathLike, gt_dir: str | os.PathLike,
                       parts_dir: str | os.PathLike, ids: Sequence[str],
                       class_names: Sequence[str]) -> dict:
    """``{"part": %, "body": %, "per_class": {name: {"part": %, "body": %}}, "images": n}``:
    the share of part and of body pixels each class's prediction covers (``None`` where a class
    has no such pixels). ``class_names`` includes the background first."""
    if not Path(parts_dir).is_dir():
        raise DataError(f"part masks folder not found: {parts_dir} (only datasets with "
                        f"{PARTS_DIR}/, such as the built-in synthetic one, have part masks)")
    n = len(class_names)
    counts = np.zeros((n, 4), np.int64)
    for image_id in progress(list(ids), desc="part/body coverage", unit="img"):
        gt = _label(gt_dir, image_id, "ground-truth mask")
        counts += coverage_counts(_label(pred_dir, image_id, "prediction"), gt,
                                  _label(parts_dir, image_id, "part mask"), n)
    total = counts[1:].sum(0)
    return {
        "part": _share(total[1], total[0]), "body": _share(total[3], total[2]),
        "per_class": {class_names[c]: {"part": _share(counts[c, 1], counts[c, 0]),
                                       "body": _share(counts[c, 3], counts[c, 2])}
                      for c in range(1, n)},
        "images": len(ids),
    }
