"""The report's gallery: the best and worst images of a split, each as a row of thumbnails
(image, ground truth, CAM heat map, seed, pseudo mask, segmentation).

Ranking uses the most refined output the run has (segmentation > pseudo mask > seed): that is
the one a reader wants to see failing. Thumbnails are small JPEG/PNG ``data:`` URIs so that the
page stays self-contained and a few hundred kilobytes.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from plda.errors import ConfigError, DataError
from plda.report.rundata import RunData, label_stages

THUMB_SIDE = 160


@dataclass
class Cell:
    title: str
    uri: str | None          # None: this image has no such output
    caption: str = ""
    missing: str = ""        # why there is no picture (shown in its place)


@dataclass
class GalleryRow:
    image_id: str
    score: float | None      # per-image mIoU of the ranking output (None: unranked)
    cells: list[Cell]
    classes: list[int] = field(default_factory=list)   # label values present, for the legend


@dataclass
class Gallery:
    split: str
    source: str | None       # title of the ranking output, None when unranked
    best: list[GalleryRow]
    worst: list[GalleryRow]
    unranked: list[GalleryRow]
    columns: list[str]
    ranked_images: int = 0


def choose_split(run: RunData, requested: str | None) -> str | None:
    """``requested`` (checked), else ``val`` when it has label maps, else the first split that
    has; ``None`` when no split has any."""
    with_maps = [s for s in run.splits()
                 if any(run.label_dir(folder, s) is not None for _, folder, _ in label_stages())]
    with_any = with_maps + [s for s in run.splits() if s not in with_maps
                            and run.cam_dir(s) is not None]
    if requested is not None:
        if requested not in with_any:
            raise ConfigError(f"gallery split {requested!r} has no seeds, pseudo masks, "
                              f"segmentation or CAMs in {run.root}; splits with outputs: "
                              f"{', '.join(with_any) or 'none'}")
        return requested
    if "val" in with_maps:
        return "val"
    return with_maps[0] if with_maps else (with_any[0] if with_any else None)


def _data_uri(image, fmt: str) -> str:
    buf = io.BytesIO()
    if fmt == "JPEG":
        image.save(buf, format="JPEG", quality=85, optimize=True)
        mime = "image/jpeg"
    else:
        image.save(buf, format="PNG", optimize=True)
        mime = "image/png"
    return f"data:{mime};base64,{base64.b64encode(buf.getvalue()).decode('ascii')}"


def thumb_size(height: int, width: int, side: int = THUMB_SIDE) -> tuple[int, int]:
    """``(width, height)`` for PIL, the longer side ``side`` at most (never upscaled)."""
    scale = min(1.0, side / max(height, width))
    return max(1, round(width * scale)), max(1, round(height * scale))


def label_thumb(label: np.ndarray, size: tuple[int, int], palette=None) -> str:
    from PIL import Image

    from plda.data.labels import colorize

    # Nearest keeps label colours exact: no blended colour that means no class.
    return _data_uri(Image.fromarray(colorize(label, palette)).resize(size, Image.NEAREST),
                     "PNG")


def cam_thumb(cam_path: Path, image, size: tuple[int, int]) -> str:
    """The maximum over the present classes' CAMs over the image (over black without it)."""
    from PIL import Image

    from plda.data.camfile import load_cams
    from plda.vis.overlay import cam_overlay

    cam_file = load_cams(cam_path)
    cams = np.asarray(cam_file.cams, dtype=np.float32)
    fg = cams.max(axis=0) if len(cams) else np.zeros(cam_file.image_size, np.float32)
    fg = np.asarray(Image.fromarray(fg, mode="F").resize(size, Image.BILINEAR))
    if image is None:
        base, alpha = np.zeros((size[1], size[0], 3), np.uint8), 1.0
    else:
        base, alpha = np.asarray(image.resize(size, Image.BILINEAR), dtype=np.uint8), 0.5
    return _data_uri(Image.fromarray(cam_overlay(base, fg, alpha=alpha)), "JPEG")


def image_miou(pred: np.ndarray, gt: np.ndarray, class_names: list[str]) -> float | None:
    """The image's mIoU over the classes in its ground truth or prediction (the split metric's
    convention), undecided (255) predictions counting as misses."""
    from plda.evaluation.metrics import confusion_matrix, scores

    conf = confusion_matrix(pred, gt, len(class_names), count_unassigned=True)
    return scores(conf, class_names)["miou"]


def _load_label(path: Path) -> np.ndarray:
    from plda.data.labels import load_label_png

    return load_label_png(path)


def _pair_miou(pred_path: Path, gt: np.ndarray, gt_path: Path, class_names: list[str]
               ) -> float | None:
    pred = _load_label(pred_path)
    if pred.shape != gt.shape:
        raise DataError(f"{pred_path} is {pred.shape[0]}x{pred.shape[1]} but ground truth "
                        f"{gt_path} is {gt.shape[0]}x{gt.shape[1]}")
    try:
        return image_miou(pred, gt, class_names)
    except ValueError as exc:
        raise DataError(f"{gt_path}: {exc}") from exc


def rank_images(run: RunData, split: str, ids: list[str], folder: str,
                class_names: list[str]) -> list[tuple[str, float]]:
    """``(id, mIoU)`` of every image with both an output in ``folder`` and ground truth,
    best first (ties by id, so the order is stable)."""
    from plda.utils.progress import progress

    pred_dir = run.root / folder / split
    ranked = []
    for image_id in progress(ids, desc=f"report: ranking {split}", unit="img"):
        gt_path = run.layout.mask_path(image_id)
        pred_path = pred_dir / f"{image_id}.png"
        if gt_path is None or not pred_path.is_file():
            continue
        miou = _pair_miou(pred_path, _load_label(gt_path), gt_path, class_names)
        if miou is not None:
            ranked.append((image_id, miou))
    ranked.sort(key=lambda t: (-t[1], t[0]))
    return ranked


def _row(run: RunData, split: str, image_id: str, score: float | None,
         outputs: list[tuple[str, str]], class_names: list[str] | None,
         show_cams: bool) -> GalleryRow:
    image = None
    if run.layout is not None:
        try:
            image = run.layout.load_image(image_id)
        except DataError:
            image = None
    gt = gt_path = None
    if run.layout is not None and run.layout.mask_path(image_id) is not None:
        gt_path = run.layout.mask_path(image_id)
        gt = _load_label(gt_path)
    maps: dict[str, np.ndarray | None] = {}
    for folder, _ in outputs:
        path = run.root / folder / split / f"{image_id}.png"
        maps[folder] = _load_label(path) if path.is_file() else None
    shape = (image.size[1], image.size[0]) if image is not None else next(
        (m.shape for m in [gt, *maps.values()] if m is not None), None)
    cam_path = run.root / "cams" / split / f"{image_id}.npz"
    if shape is None and cam_path.is_file():
        from plda.data.camfile import load_cams

        shape = tuple(load_cams(cam_path).image_size)
    if shape is None:
        raise DataError(f"image {image_id!r} of split {split!r} has neither an image, a mask "
                        f"nor a CAM file in {run.root}")
    size = thumb_size(*shape)
    present: set[int] = set()
    palette = run.palette
    cells = [Cell("image", _data_uri(image.resize(size), "JPEG") if image is not None else None,
                  image_id)]
    if run.layout is not None and run.layout.has_masks:
        caption = ""
        if gt is not None:
            values = [int(v) for v in np.unique(gt) if 0 < v < 255]
            present.update(values)
            if class_names:
                caption = ", ".join(class_names[v] for v in values if v < len(class_names))
        cells.append(Cell("ground truth", label_thumb(gt, size, palette) if gt is not None
                          else None, caption, missing="no mask for this image"))
    if show_cams:
        cells.append(Cell("CAM", cam_thumb(cam_path, image, size) if cam_path.is_file()
                          else None, "max over classes", missing="no CAM file"))
    for folder, title in outputs:
        label = maps[folder]
        caption = ""
        if label is not None:
            present.update(int(v) for v in np.unique(label) if 0 < v < 255)
            if gt is not None and class_names and label.shape == gt.shape:
                miou = _pair_miou(run.root / folder / split / f"{image_id}.png", gt, gt_path,
                                  class_names)
                caption = "mIoU —" if miou is None else f"mIoU {miou:.1f}"
        cells.append(Cell(title, label_thumb(label, size, palette) if label is not None else None,
                          caption, missing=f"no {title} for this image"))
    return GalleryRow(image_id, score, cells, sorted(present))


def build_gallery(run: RunData, split: str | None, size: int) -> Gallery | None:
    """The best and worst ``size`` images of ``split`` (fewer when the split is small; the
    two groups never share an image), or its first ``size`` images when it cannot be ranked."""
    if split is None or size <= 0:
        return None
    outputs = [(folder, title) for _, folder, title in label_stages()
               if run.label_dir(folder, split) is not None]
    show_cams = run.cam_dir(split) is not None
    class_names = run.class_names
    ids = run.ids(split)
    columns = ["image"] + (["ground truth"] if run.layout is not None and run.layout.has_masks
                           else []) + (["CAM"] if show_cams else []) + [t for _, t in outputs]
    gallery = Gallery(split=split, source=None, best=[], worst=[], unranked=[], columns=columns)
    can_rank = (outputs and class_names is not None and run.layout is not None
                and run.layout.has_masks)
    if can_rank:
        folder, title = outputs[-1]
        ranked = rank_images(run, split, ids, folder, class_names)
        if ranked:
            gallery.source = title
            gallery.ranked_images = len(ranked)
            n_best = min(size, (len(ranked) + 1) // 2)
            n_worst = min(size, len(ranked) - n_best)
            best = ranked[:n_best]
            worst = list(reversed(ranked[len(ranked) - n_worst:])) if n_worst else []
            gallery.best = [_row(run, split, i, s, outputs, class_names, show_cams)
                            for i, s in best]
            gallery.worst = [_row(run, split, i, s, outputs, class_names, show_cams)
                             for i, s in worst]
            return gallery
    gallery.unranked = [_row(run, split, i, None, outputs, class_names, show_cams)
                        for i in ids[:size]]
    return gallery
