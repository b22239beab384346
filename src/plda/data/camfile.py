"""The per-image CAM file: one compressed ``.npz`` per image, shared by every pipeline stage.

Only the classes present in the image are stored (``K`` planes, often 1 or 2 out of 20), as
float16 in 0..1: about a tenth of a dense ``(C, H, W)`` float32 array on disk. Arrays:

- ``cams``            ``(K, H, W) float16``, each plane normalised to 0..1;
- ``keys``            ``(K,) int16``, the foreground class index (1..C) of each plane, ascending;
- ``num_classes``     the number of foreground classes ``C`` (20 on VOC; background excluded);
- ``image_size``      ``(H, W)``;
- ``format_version``  :data:`FORMAT_VERSION`.

``K = 0`` (an image without foreground labels) is a valid file: its seed is all background.
Files are read with ``allow_pickle=False``, so a CAM file can never execute code.
"""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from plda.errors import DataError
from plda.utils.io import atomic_save_npz

FORMAT_VERSION = 1
_ARRAYS = ("cams", "keys", "num_classes", "image_size", "format_version")
# float16 rounding and bilinear overshoot may leave values a hair outside 0..1.
_RANGE_SLACK = 1e-3
_F16_MAX_BITS = int(np.float16(1 + _RANGE_SLACK).view(np.uint16))


@dataclass(frozen=True)
class CamFile:
    """The content of one CAM file: ``cams (K, H, W)`` (float32, or the stored float16 when
    loaded with ``dtype=np.float16``), ``keys (K,)`` ascending, ``num_classes`` = C."""

    cams: np.ndarray
    keys: np.ndarray
    num_classes: int
    image_size: tuple[int, int]


def _values_problem(cams: np.ndarray) -> str:
    if cams.size == 0:
        return ""
    if cams.dtype == np.float16 and cams.view(np.uint16).max() <= _F16_MAX_BITS:
        # Non-negative float16 values order like their bit patterns: one integer pass.
        return ""
    lo, hi = float(cams.min()), float(cams.max())
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return "cams contain NaN or infinite values"
    if lo < -_RANGE_SLACK or hi > 1 + _RANGE_SLACK:
        return f"cams values span {lo:.4g}..{hi:.4g}, expected 0..1"
    return ""


def _check(cams: np.ndarray, keys: np.ndarray, num_classes: int, image_size: tuple[int, int]) -> str:
    """Return a description of what is wrong, or ``""``."""
    if num_classes < 1:
        return f"num_classes must be >= 1, got {num_classes}"
    if len(image_size) != 2 or min(image_size) < 1:
        return f"image_size must be (H, W) with H, W >= 1, got {tuple(image_size)}"
    if keys.ndim != 1:
        return f"keys must be 1-D, got shape {keys.shape}"
    if cams.shape != (len(keys), *image_size):
        return (f"cams has shape {cams.shape}, expected (K, H, W) = "
                f"({len(keys)}, {image_size[0]}, {image_size[1]})")
    if keys.size and (keys.min() < 1 or keys.max() > num_classes):
        return f"keys {keys.tolist()} outside the foreground classes 1..{num_classes}"
    if len(np.unique(keys)) != len(keys):
        return f"keys {keys.tolist()} contain duplicates"
    return _values_problem(cams)


def save_cams(path: str | os.PathLike, cams: np.ndarray, keys: np.ndarray, num_classes: int,
              image_size: tuple[int, int]) -> None:
    """Write one image's CAMs atomically (see the module docstring for the layout).

    ``cams`` is ``(K, H, W)`` in 0..1 for the ``K`` foreground classes ``keys`` (1..C).
    Planes are stored in ascending key order, so that ties between classes resolve to the lower
    class index, as ``np.argmax`` over the reference's dense 21-channel array does.
    """
    cams = np.asarray(cams, dtype=np.float32)
    keys = np.asarray(keys).astype(np.int64).reshape(-1)
    image_size = tuple(int(s) for s in image_size)
    problem = _check(cams, keys, int(num_classes), image_size)
    if problem:
        raise ValueError(f"cannot save CAM file {path}: {problem}")
    order = np.argsort(keys, kind="stable")
    atomic_save_npz(
        path,
        # "+ 0" turns -0.0 into +0.0, keeping every stored value's sign bit clear.
        cams=(np.clip(cams[order], 0.0, 1.0) + np.float32(0)).astype(np.float16),
        keys=keys[order].astype(np.int16),
        num_classes=np.int64(num_classes),
        image_size=np.asarray(image_size, dtype=np.int64),
        format_version=np.int64(FORMAT_VERSION),
    )


def load_cams(path: str | os.PathLike, dtype: type = np.float32) -> CamFile:
    """Read and validate a CAM file; any defect is a ``DataError`` naming the file.

    ``dtype=np.float16`` returns the stored values without conversion (faster when only
    comparisons follow, as in the threshold sweep).
    """
    if np.dtype(dtype) not in (np.float16, np.float32):
        raise ValueError(f"dtype must be float16 or float32, got {dtype}")
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [name for name in _ARRAYS if name not in npz.files]
            if missing:
                raise DataError(f"{path}: not a plda CAM file, missing arrays {missing} "
                                f"(found {sorted(npz.files)})")
            arrays = {name: npz[name] for name in _ARRAYS}
    except FileNotFoundError as exc:
        raise DataError(f"CAM file not found: {path}") from exc
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        if isinstance(exc, DataError):
            raise
        raise DataError(f"{path}: cannot read CAM file ({exc})") from exc
    version = int(arrays["format_version"])
    if version > FORMAT_VERSION:
        raise DataError(f"{path}: CAM format version {version} is newer than the supported "
                        f"version {FORMAT_VERSION}; upgrade plda-wsss")
    if not np.issubdtype(arrays["keys"].dtype, np.integer):
        raise DataError(f"{path}: keys must be integers, got {arrays['keys'].dtype}")
    cams = arrays["cams"]
    if cams.dtype != np.float16:
        raise DataError(f"{path}: cams must be stored as float16, got {cams.dtype}")
    keys = arrays["keys"].astype(np.int64)
    num_classes = int(arrays["num_classes"])
    image_size = tuple(int(s) for s in np.asarray(arrays["image_size"]).reshape(-1))
    problem = _check(cams, keys, num_classes, image_size)
    if problem:
        raise DataError(f"{path}: invalid CAM file: {problem}")
    if np.any(np.diff(keys) < 0):
        order = np.argsort(keys, kind="stable")
        cams, keys = cams[order], keys[order]
    return CamFile(cams=cams.astype(dtype, copy=False), keys=keys, num_classes=num_classes, image_size=image_size)
