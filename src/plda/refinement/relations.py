"""IRN's inter-pixel relation labels from CAMs (``cam_to_ir_label`` of jiwoon-ahn/irn).

Confident foreground: the CAM beats a background score of ``fg_threshold`` (0.30); confident
background: no CAM reaches ``bg_threshold`` (0.05); each map is cleaned by a label dense CRF
(:func:`plda.inference.crf.crf_from_labels`); everything in between is ignored (255).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

IGNORE = 255


def _confident(cams: np.ndarray, keys: np.ndarray, background: float, image: np.ndarray | None
               ) -> np.ndarray:
    scores = np.concatenate([np.full((1, *cams.shape[1:]), background, cams.dtype), cams])
    index = scores.argmax(0)
    if image is not None:
        from plda.inference.crf import crf_from_labels

        index = crf_from_labels(image, index, len(keys))
    return keys[index]


def relation_labels(cams: np.ndarray, classes: Sequence[int], image: np.ndarray | None, *,
                    fg_threshold: float = 0.30, bg_threshold: float = 0.05) -> np.ndarray:
    """``(H, W) uint8`` map: 0 confident background, class id confident foreground, 255 unsure.

    Args:
        cams: ``(C, H, W)`` normalised CAMs (max 1 per map) of the image's classes.
        classes: the label value of each CAM plane (e.g. VOC class ids 1..20).
        image: ``(H, W, 3) uint8`` for the CRF, or ``None`` to skip the CRF (thresholds only).
    """
    cams = np.asarray(cams, dtype=np.float32)
    if cams.ndim != 3 or cams.shape[0] != len(classes):
        raise ValueError(f"cams must be (C, H, W) with one plane per class of {list(classes)}, "
                         f"got {cams.shape}")
    if not 0 <= bg_threshold < fg_threshold:
        raise ValueError(f"expected 0 <= bg_threshold < fg_threshold, got {bg_threshold}, "
                         f"{fg_threshold}")
    keys = np.asarray([0, *classes], dtype=np.int64)
    fg = _confident(cams, keys, fg_threshold, image)
    bg = _confident(cams, keys, bg_threshold, image)
    out = fg.copy()
    out[fg == 0] = IGNORE
    out[(fg == 0) & (bg == 0)] = 0
    return out.astype(np.uint8)
