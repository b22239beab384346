"""The PASCAL VOC colour palette and label-PNG reading/writing.

Label maps are stored as palette ("P" mode) PNGs whose pixel values are class indices
(0 = background, 1..C = classes, 255 = ignore), exactly like VOC's ``SegmentationClass``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from plda.errors import DataError
from plda.utils.io import atomic_save_image


def voc_palette(n: int = 256) -> np.ndarray:
    """The standard VOC colour map: ``(n, 3) uint8``; index 255 is (224, 224, 192)."""
    pal = np.zeros((n, 3), dtype=np.uint8)
    for i in range(n):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal[i] = (r, g, b)
    return pal


_PALETTE_FLAT = voc_palette(256).reshape(-1).tolist()


def colorize(label: np.ndarray) -> np.ndarray:
    """Map a label array ``(H, W)`` of class indices to ``(H, W, 3) uint8`` VOC colours."""
    return voc_palette(256)[np.asarray(label, dtype=np.uint8)]


def label_to_image(label: np.ndarray):
    """A ``P``-mode PIL image holding ``label`` (values 0..255) with the VOC palette."""
    from PIL import Image

    arr = np.asarray(label)
    if arr.ndim != 2:
        raise ValueError(f"label map must be 2-D (H, W), got shape {arr.shape}")
    if arr.size and (arr.min() < 0 or arr.max() > 255):
        raise ValueError(f"label values must lie in 0..255, got {arr.min()}..{arr.max()}")
    img = Image.fromarray(arr.astype(np.uint8), mode="P")
    img.putpalette(_PALETTE_FLAT)
    return img


def save_label_png(path: str | os.PathLike, label: np.ndarray) -> None:
    """Write ``label`` as a VOC palette PNG, atomically."""
    atomic_save_image(path, label_to_image(label), format="PNG")


def load_label_png(path: str | os.PathLike) -> np.ndarray:
    """Read a label PNG as ``(H, W) uint8`` class indices.

    Palette and grayscale ("L") PNGs hold indices directly. An RGB PNG is decoded by looking
    each colour up in the VOC palette; an unknown colour is an error naming the file.
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    try:
        with Image.open(path) as img:
            img.load()
            mode = img.mode
            if mode in ("P", "L"):
                return np.array(img, dtype=np.uint8)
            if mode in ("I", "I;16"):
                arr = np.array(img)
                if arr.max(initial=0) > 255:
                    raise DataError(f"{path}: label values above 255 in a 16-bit PNG")
                return arr.astype(np.uint8)
            if mode in ("RGB", "RGBA"):
                rgb = np.array(img.convert("RGB"), dtype=np.uint8)
            else:
                raise DataError(f"{path}: unsupported label PNG mode {mode!r}; expected P, L or RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, Image.DecompressionBombError) as exc:
        raise DataError(f"{path}: cannot read label PNG ({exc})") from exc
    pal = voc_palette(256).astype(np.int32)
    code = (rgb[..., 0].astype(np.int32) << 16) | (rgb[..., 1].astype(np.int32) << 8) | rgb[..., 2]
    pal_code = (pal[:, 0] << 16) | (pal[:, 1] << 8) | pal[:, 2]
    lut = {int(c): i for i, c in enumerate(pal_code)}
    uniq, inv = np.unique(code, return_inverse=True)
    out = np.empty(len(uniq), dtype=np.uint8)
    for k, c in enumerate(uniq):
        if int(c) not in lut:
            r, g, b = (int(c) >> 16) & 255, (int(c) >> 8) & 255, int(c) & 255
            raise DataError(f"{path}: colour ({r}, {g}, {b}) is not in the VOC palette")
        out[k] = lut[int(c)]
    return out[inv].reshape(code.shape)
