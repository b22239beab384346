"""Fully connected CRF (Krähenbühl & Koltun) over class scores or over a label map.

The defaults are the ones psa / SEAM use for CAM refinement (``imutils.crf_inference``):
Gaussian kernel sxy 3, compat 3; bilateral kernel sxy 80, srgb 13, compat 10; 10 mean-field
iterations. As there, the input scores need not sum to 1 per pixel: the unary is
``-log(clip(score, 1e-5, 1))`` (pydensecrf's ``unary_from_softmax``).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from plda.errors import PldaError


PROB_CLIP = 1e-5


def require_pydensecrf():
    """The ``pydensecrf.densecrf`` module, or a ``PldaError`` saying how to install it."""
    try:
        import pydensecrf.densecrf as dcrf
    except ImportError as exc:
        raise PldaError("the dense CRF needs pydensecrf, which is not installed; install it with "
                        "`pip install plda-wsss[crf]` (package pydensecrf2)") from exc
    return dcrf


def dense_crf(image: np.ndarray, probs: np.ndarray, *, iterations: int = 10,
              gaussian_sxy: float = 3, gaussian_compat: float = 3, bilateral_sxy: float = 80,
              bilateral_srgb: float = 13, bilateral_compat: float = 10) -> np.ndarray:
    """Refine per-pixel class scores with a dense CRF.

    Args:
        image: ``(H, W, 3) uint8`` RGB image that drives the bilateral kernel.
        probs: ``(K, H, W)`` non-negative scores, one plane per label (K ≥ 1).
    Returns:
        ``(K, H, W) float32`` marginals after ``iterations`` mean-field steps (sum to 1 per pixel).
    """
    image = np.asarray(image)
    probs = np.asarray(probs)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be (H, W, 3) uint8, got {image.shape} {image.dtype}")
    if probs.ndim != 3 or probs.shape[1:] != image.shape[:2]:
        raise ValueError(f"probs must be (K, {image.shape[0]}, {image.shape[1]}), got {probs.shape}")
    num_labels, height, width = probs.shape
    if num_labels == 1:
        return np.ones_like(probs, dtype=np.float32)
    dcrf = require_pydensecrf()
    crf = dcrf.DenseCRF2D(width, height, num_labels)
    unary = -np.log(np.clip(probs.astype(np.float32), PROB_CLIP, 1.0)).reshape(num_labels, -1)
    crf.setUnaryEnergy(np.ascontiguousarray(unary, dtype=np.float32))
    crf.addPairwiseGaussian(sxy=gaussian_sxy, compat=gaussian_compat)
    # pydensecrf refuses read-only buffers (e.g. np.asarray of a PIL image): pass a copy.
    crf.addPairwiseBilateral(sxy=bilateral_sxy, srgb=bilateral_srgb,
                             rgbim=np.array(image, order="C"), compat=bilateral_compat)
    q = crf.inference(int(iterations))
    return np.asarray(q, dtype=np.float32).reshape(num_labels, height, width)


def crf_labels(image: np.ndarray, probs: np.ndarray, keys: Sequence[int] | None = None,
               **crf_kwargs) -> np.ndarray:
    """``argmax`` of :func:`dense_crf` as an ``(H, W) uint8`` label map.

    ``keys[k]`` is the label value of plane ``k`` (default: ``k``), e.g. ``[0, *class_ids]``.
    """
    index = dense_crf(image, probs, **crf_kwargs).argmax(0)
    if keys is None:
        return index.astype(np.uint8)
    keys = np.asarray(keys)
    if keys.shape != (probs.shape[0],):
        raise ValueError(f"keys must have one value per plane ({probs.shape[0]}), got {keys.shape}")
    return keys[index].astype(np.uint8)


def crf_from_labels(image: np.ndarray, labels: np.ndarray, num_labels: int, *,
                    gt_prob: float = 0.7, iterations: int = 10, bilateral_sxy: float = 50,
                    bilateral_srgb: float = 5, **crf_kwargs) -> np.ndarray:
    """IRN's ``crf_inference_label``: a dense CRF whose unary trusts a hard label map with
    probability ``gt_prob`` (the rest spread evenly over the other labels, pydensecrf's
    ``unary_from_labels`` without unsure pixels), bilateral kernel sxy 50, srgb 5; returns the
    ``(H, W)`` argmax label index."""
    labels = np.asarray(labels)
    if labels.shape != np.asarray(image).shape[:2]:
        raise ValueError(f"labels {labels.shape} and image {np.asarray(image).shape} differ in size")
    if num_labels < 1 or labels.min() < 0 or labels.max() >= num_labels:
        raise ValueError(f"labels must lie in [0, {num_labels}), got [{labels.min()}, "
                         f"{labels.max()}]")
    if num_labels == 1:
        return np.zeros(labels.shape, dtype=np.int64)
    other = (1.0 - gt_prob) / (num_labels - 1)
    probs = np.full((num_labels, *labels.shape), other, dtype=np.float32)
    np.put_along_axis(probs, labels[None].astype(np.int64), gt_prob, axis=0)
    q = dense_crf(image, probs, iterations=iterations, bilateral_sxy=bilateral_sxy,
                  bilateral_srgb=bilateral_srgb, **crf_kwargs)
    return q.argmax(0)
