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
IGNORE_COLOUR = (224, 224, 192)
_VOC_NAMES = ("background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
              "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person",
              "pottedplant", "sheep", "sofa", "train", "tvmonitor")


def palette_for(class_names) -> np.ndarray:
    """The ``(256, 3) uint8`` palette for a dataset's classes (background first).

    VOC's 21 classes keep VOC's colours, so masks look like the benchmark's. Any other list
    gets colours chosen to be told apart at its size: background black, ignore (255) VOC's
    cream, classes 1..C from matplotlib's ``tab10`` (C <= 10) or ``tab20`` (C <= 20), else evenly
    spaced hues at alternating brightness.
    """
    names = list(class_names) if class_names is not None else None
    if names is None or tuple(names) == _VOC_NAMES:
        return voc_palette(256)
    pal = voc_palette(256)  # values beyond the classes keep some colour
    n = len(names) - 1
    if n <= 20:
        from matplotlib import colormaps

        cmap = colormaps["tab10" if n <= 10 else "tab20"]
        colours = [cmap(k)[:3] for k in range(n)]
    else:
        import colorsys

        colours = [colorsys.hsv_to_rgb(k / n, 0.75, 0.95 if k % 2 == 0 else 0.7)
                   for k in range(n)]
    pal[0] = (0, 0, 0)
    for k, rgb in enumerate(colours, start=1):
        if k < 255:
            pal[k] = [round(255 * c) for c in rgb]
    pal[255] = IGNORE_COLOUR
    return pal


def colorize(label: np.ndarray, palette: np.ndarray | None = None) -> np.ndarray:
    """Map a label array ``(H, W)`` of class indices to ``(H, W, 3) uint8`` colours (VOC's,
    or ``palette``, e.g. :func:`palette_for`)."""
    pal = voc_palette(256) if palette is None else np.asarray(palette, dtype=np.uint8)
    return pal[np.asarray(label, dtype=np.uint8)]


def label_to_image(label: np.ndarray, palette: np.ndarray | None = None):
    """A ``P``-mode PIL image holding ``label`` (values 0..255) with the VOC palette (or
    ``palette``: the values stay class indices, only the colours differ)."""
    from PIL import Image

    arr = np.asarray(label)
    if arr.ndim != 2:
        raise ValueError(f"label map must be 2-D (H, W), got shape {arr.shape}")
    if arr.size and (arr.min() < 0 or arr.max() > 255):
        raise ValueError(f"label values must lie in 0..255, got {arr.min()}..{arr.max()}")
    img = Image.fromarray(arr.astype(np.uint8), mode="P")
    img.putpalette(_PALETTE_FLAT if palette is None
                   else np.asarray(palette, dtype=np.uint8).reshape(-1).tolist())
    return img


def save_label_png(path: str | os.PathLike, label: np.ndarray,
                   palette: np.ndarray | None = None) -> None:
    """Write ``label`` as a palette PNG (VOC's colours, or ``palette``), atomically."""
    atomic_save_image(path, label_to_image(label, palette), format="PNG")


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
