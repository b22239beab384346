"""Seed label maps from CAM files: background threshold, or SEAM/psa's "la"/"ha" dense CRF.

Threshold seeds are ``argmax([threshold, CAMs])`` (SEAM ``infer_SEAM.py``, ``out_cam_pred``).
CRF seeds follow ``_crf_with_alpha`` of SEAM / psa ``infer_cls.py``: the background plane is
``(1 − max_k CAM_k)^α``, stacked over the present-class CAMs *without* renormalising, fed to the
dense CRF as probabilities (unary ``−log``); the label is the argmax of the CRF marginals.
α = 4 ("la", low alpha) keeps a high background score, so its foreground is the confident one;
α = 24 ("ha", high alpha) shrinks the background score, so its background is the confident one
(psa's AffinityNet labels take foreground from "la" and background from "ha").
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from plda.data.camfile import CamFile
from plda.errors import ConfigError, DataError
from plda.utils.io import check_id, safe_join

CRF_ALPHAS: dict[str, float] = {"la": 4.0, "ha": 24.0}


def foreground(cams: np.ndarray, keys: np.ndarray, image_size: tuple[int, int]
                ) -> tuple[np.ndarray, np.ndarray]:
    """The per-pixel maximum over the CAM planes and its class (uint8; 0 without planes).

    Strict ``>`` keeps the earlier (lower-class) plane on ties, like ``np.argmax``. Works on any
    ordered dtype, including the bit patterns of non-negative float16 values.
    """
    if len(keys) == 0:
        return np.zeros(image_size, cams.dtype), np.zeros(image_size, np.uint8)
    fg_max = cams[0].copy()
    fg_label = np.full(image_size, keys[0], np.uint8)
    for plane, key in zip(cams[1:], keys[1:]):
        np.copyto(fg_label, np.uint8(key), where=plane > fg_max)
        np.maximum(fg_max, plane, out=fg_max)
    return fg_max, fg_label


def seeds_from_cams(camfile: CamFile, threshold: float) -> np.ndarray:
    """The seed label map ``(H, W) uint8``: the CAM argmax where it is strictly above
    ``threshold``, background (0) elsewhere (ties go to background, as in SEAM)."""
    fg_max, fg_label = foreground(camfile.cams, camfile.keys, camfile.image_size)
    return np.where(fg_max > np.float32(threshold), fg_label, 0).astype(np.uint8)


def crf_background(cams: np.ndarray, alpha: float) -> np.ndarray:
    """SEAM's CRF background score ``(1 − max_k CAM_k)^α`` as a ``(1, H, W)`` plane
    (all ones when there is no foreground plane)."""
    if cams.shape[0] == 0:
        return np.ones((1, *cams.shape[1:]), dtype=np.float32)
    return np.power(1.0 - cams.max(axis=0, keepdims=True), alpha).astype(np.float32)


def crf_seed(image: np.ndarray, cam_file: Any, alpha: float, **crf_kwargs) -> np.ndarray:
    """The "la"/"ha" seed ``(H, W) uint8`` of one image (``cam_file``: a ``CamFile``)."""
    from plda.inference.crf import crf_labels

    cams = np.asarray(cam_file.cams, dtype=np.float32)
    probs = np.concatenate([crf_background(cams, alpha), cams])
    keys = np.concatenate([[0], np.asarray(cam_file.keys, dtype=np.int64)])
    return crf_labels(image, probs, keys, **crf_kwargs)


def load_image_for_cams(image_path: str | os.PathLike, cam_file: Any, cam_path: Any
                        ) -> np.ndarray:
    """The ``(H, W, 3) uint8`` image of a CAM file, or a ``DataError`` when the sizes differ."""
    from plda.data.layout import load_rgb

    image = np.asarray(load_rgb(image_path), dtype=np.uint8)
    if image.shape[:2] != tuple(cam_file.image_size):
        raise DataError(f"{cam_path}: CAM size {tuple(cam_file.image_size)} differs from image "
                        f"{image_path} size {image.shape[:2]}")
    return image


def _seed_task(task: tuple) -> None:
    """Worker: read one CAM file (and image), write its seed PNG."""
    from plda.data.camfile import load_cams
    from plda.data.labels import save_label_png

    cam_path, out_path, threshold, alpha, image_path = task
    cam_file = load_cams(cam_path)
    if alpha is None:
        label = seeds_from_cams(cam_file, threshold)
    else:
        label = crf_seed(load_image_for_cams(image_path, cam_file, cam_path), cam_file, alpha)
    save_label_png(out_path, np.asarray(label, dtype=np.uint8))


def write_seeds(cam_dir: str | os.PathLike, out_dir: str | os.PathLike, ids: Sequence[str],
                threshold: float | None, *, crf: str | None = None, layout: Any = None,
                workers: int | None = None, skip_existing: bool = True) -> dict[str, Any]:
    """Write ``out_dir/<id>.png`` seed label maps (VOC palette PNGs) from ``cam_dir/<id>.npz``.

    Args:
        ids: the images (e.g. ``layout.ids(split)``, or this rank's share of them).
        threshold: background score of threshold seeds (SEAM's default 0.26); not used with
            ``crf``, whose background plane is ``(1 − max CAM)^α``.
        crf: ``None`` (threshold seeds), ``"la"`` (α = 4) or ``"ha"`` (α = 24); needs ``layout``
            (a ``DatasetLayout`` or root folder) for the images, and pydensecrf.
        workers: processes (default: all CPUs for the CRF, 1 without it).
        skip_existing: keep seeds already written (files are written atomically).
    Returns:
        ``{"written", "skipped", "seconds", "seconds_per_image"}``.
    """
    from plda.inference.cams import clean_temporaries
    from plda.utils.parallel import map_in_workers

    if crf is not None and crf not in CRF_ALPHAS:
        raise ConfigError(f"crf={crf!r}: expected None, 'la' or 'ha'")
    if crf is None and threshold is None:
        raise ConfigError("threshold seeds need a background threshold (e.g. 0.26), got None")
    if crf is not None:
        if layout is None:
            raise ConfigError(f"crf={crf!r} needs the dataset layout to read the images")
        from plda.data.datasets import as_layout
        from plda.inference.crf import require_pydensecrf

        layout = as_layout(layout)
        require_pydensecrf()  # fail before starting workers when pydensecrf is missing
    ids = [check_id(i, "id list") for i in ids]
    cam_dir, out_dir = Path(cam_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    clean_temporaries(out_dir, [f"{i}.png" for i in ids])
    alpha = None if crf is None else CRF_ALPHAS[crf]
    tasks, skipped = [], 0
    for image_id in ids:
        out_path = safe_join(out_dir, f"{image_id}.png")
        if skip_existing and out_path.is_file():
            skipped += 1
            continue
        cam_path = safe_join(cam_dir, f"{image_id}.npz")
        if not cam_path.is_file():
            raise DataError(f"CAM file {cam_path} not found (run CAM inference for {image_id!r})")
        image_path = str(layout.image_path(image_id)) if crf is not None else None
        tasks.append((str(cam_path), str(out_path), threshold, alpha, image_path))
    if workers is None:
        workers = (os.cpu_count() or 1) if crf is not None else 1
    start = time.perf_counter()
    map_in_workers(_seed_task, tasks, workers, desc=f"seeds {crf or 'threshold'}")
    seconds = time.perf_counter() - start
    return {"written": len(tasks), "skipped": skipped, "seconds": seconds,
            "seconds_per_image": seconds / len(tasks) if tasks else 0.0}
