"""Pictures for inspection: CAM heat maps and label maps over the image, side-by-side panels."""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from plda.utils.io import atomic_save_image
from plda.data.labels import colorize

_BACKGROUND = (255, 255, 255)
_TEXT = (0, 0, 0)


def _check_image(image: np.ndarray, name: str = "image") -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"{name} must be (H, W, 3) uint8, got {image.shape} {image.dtype}")
    return image


def _blend(image: np.ndarray, colour: np.ndarray, alpha: float, where: np.ndarray | None = None
           ) -> np.ndarray:
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in 0..1, got {alpha}")
    mixed = (1.0 - alpha) * image.astype(np.float32) + alpha * colour.astype(np.float32)
    out = np.clip(np.rint(mixed), 0, 255).astype(np.uint8)
    return out if where is None else np.where(where[..., None], out, image)


def cam_overlay(image: np.ndarray, cam: np.ndarray, alpha: float = 0.5, cmap: str = "jet"
                ) -> np.ndarray:
    """``image`` blended with the colour-mapped ``cam`` (``(H, W)``, values 0..1, clipped):
    ``(1 - alpha) * image + alpha * cmap(cam)``, as ``(H, W, 3) uint8``."""
    from matplotlib import colormaps

    image = _check_image(image)
    cam = np.asarray(cam, dtype=np.float32)
    if cam.shape != image.shape[:2]:
        raise ValueError(f"cam shape {cam.shape} differs from image size {image.shape[:2]}")
    heat = colormaps[cmap](np.clip(cam, 0.0, 1.0))[..., :3] * 255.0
    return _blend(image, heat, alpha)


def label_overlay(image: np.ndarray, label: np.ndarray, alpha: float = 0.5,
                  palette: np.ndarray | None = None) -> np.ndarray:
    """``image`` with every non-background pixel of ``label`` blended with its colour (VOC's,
    or ``palette``); background (0) pixels keep the image so that the scene stays readable."""
    image = _check_image(image)
    label = np.asarray(label)
    if label.shape != image.shape[:2]:
        raise ValueError(f"label shape {label.shape} differs from image size {image.shape[:2]}")
    return _blend(image, colorize(label, palette), alpha, where=label != 0)


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has only the fixed-size bitmap font
        return ImageFont.load_default()


def with_legend(image: np.ndarray, entries: Sequence[tuple[str, tuple[int, int, int]]],
                font_size: int | None = None) -> np.ndarray:
    """``image`` with a strip below it naming ``entries`` (``(name, (r, g, b))``, e.g. the
    classes present in a mask) next to a chip of their colour; wrapped onto as many lines as
    the image's width needs. No entries: the image unchanged."""
    from PIL import Image, ImageDraw

    image = _check_image(image)
    if not entries:
        return image
    h, w = image.shape[:2]
    size = font_size or max(10, min(24, w // 40))
    font = _font(size)
    pad, chip = max(3, size // 3), size
    canvas_probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    items, lines, x = [], 0, pad
    for name, colour in entries:
        text_w = canvas_probe.textlength(str(name), font=font)
        item_w = chip + pad + int(text_w) + 2 * pad
        if x + item_w > w and x > pad:
            lines, x = lines + 1, pad
        items.append((x, lines, str(name), tuple(int(c) for c in colour)))
        x += item_w
    line_h = size + 2 * pad
    strip = Image.new("RGB", (w, line_h * (lines + 1)), _BACKGROUND)
    draw = ImageDraw.Draw(strip)
    for x, line, name, colour in items:
        y = line * line_h + pad
        draw.rectangle([x, y, x + chip - 1, y + chip - 1], fill=colour, outline=(90, 90, 90))
        draw.text((x + chip + pad, y - 1), name, fill=_TEXT, font=font)
    return np.concatenate([image, np.asarray(strip, dtype=np.uint8)], axis=0)


def side_by_side(panels: Sequence[tuple[str, np.ndarray]], gap: int = 4, font_size: int = 12):
    """Panels ``(title, (H, W, 3) uint8)`` in a row, each with its title above, on white;
    panels of different heights are top-aligned. Returns a ``PIL.Image`` (RGB)."""
    from PIL import Image, ImageDraw

    if not panels:
        raise ValueError("side_by_side needs at least one panel")
    arrays = [_check_image(a, f"panel {t!r}") for t, a in panels]
    font = _font(font_size)
    title_h = font_size + 6
    width = sum(a.shape[1] for a in arrays) + gap * (len(arrays) + 1)
    height = max(a.shape[0] for a in arrays) + title_h + gap
    canvas = Image.new("RGB", (width, height), _BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    x = gap
    for (title, _), array in zip(panels, arrays):
        draw.text((x, 2), str(title), fill=_TEXT, font=font)
        canvas.paste(Image.fromarray(array), (x, title_h))
        x += array.shape[1] + gap
    return canvas


def save_panel(path: str | os.PathLike, panels: Sequence[tuple[str, np.ndarray]], **kwargs) -> None:
    """:func:`side_by_side` written atomically to ``path`` (format from the suffix)."""
    atomic_save_image(path, side_by_side(panels, **kwargs))
