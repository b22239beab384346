"""Convert COCO 2014 instance annotations into the VOC layout used everywhere else.

Output under ``OUT``: ``JPEGImages/<id>.jpg`` (copied, hard-linked or symlinked), semantic masks
``SegmentationClass/<id>.png``, ``classes.txt`` (80 names), ``image_labels.json`` and
``ImageSets/Segmentation/<split>.txt``. Ids are file stems (``COCO_train2014_000000000009``).

Rules (documented choices, not COCO's):
- labels 1..80 follow the category ids in increasing order (COCO ids are not contiguous);
- crowd regions are painted 255 (ignore) first; then non-crowd instances from the largest to
  the smallest, so a smaller object lying on a larger one stays visible and an explicitly
  annotated instance wins over a crowd region;
- the image-level labels are the categories of all annotations, crowd ones included.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
from pathlib import Path

import numpy as np

from plda.data.layout import (CLASSES_FILE, IGNORE_INDEX, LABELS_FILE, read_classes_file,
                              write_id_list, write_labels_json)
from plda.errors import DataError, PldaError
from plda.utils.io import atomic_write, atomic_write_text, check_id, safe_join
from plda.utils.progress import progress
from plda.data.labels import save_label_png

LINK_MODES = ("copy", "hardlink", "symlink")


def coco_label_map(coco, image_info: dict, anns: list[dict], label_of: dict[int, int]) -> np.ndarray:
    """The semantic label map ``(H, W) uint8`` of one image (rules in the module docstring)."""
    mask = np.zeros((image_info["height"], image_info["width"]), dtype=np.uint8)
    for ann in anns:
        if ann.get("iscrowd", 0):
            mask[coco.annToMask(ann) > 0] = IGNORE_INDEX
    things = [(coco.annToMask(a) > 0, a) for a in anns if not a.get("iscrowd", 0)]
    things.sort(key=lambda t: (-int(t[0].sum()), t[1]["id"]))
    for region, ann in things:
        mask[region] = label_of[ann["category_id"]]
    return mask


def place_file(src: Path, dst: Path, mode: str = "copy") -> None:
    """Put ``src`` at ``dst`` by copying, hard-linking or symlinking, atomically."""
    if mode == "copy":
        with atomic_write(dst, "wb") as fh, open(src, "rb") as inp:
            shutil.copyfileobj(inp, fh)
        return
    if mode not in LINK_MODES:
        raise DataError(f"link mode {mode!r}: expected one of {', '.join(LINK_MODES)}")
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".tmp-{dst.name}.{os.getpid()}")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    try:
        if mode == "hardlink":
            os.link(src, tmp)
        else:
            os.symlink(src.resolve(), tmp)
        os.replace(tmp, dst)
    except OSError as exc:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise DataError(f"cannot {mode} {src} to {dst} ({exc})") from exc


def _load_coco(annotations: Path):
    try:
        from pycocotools.coco import COCO
    except ImportError as exc:
        raise PldaError("`plda prepare coco` needs pycocotools: pip install 'plda-wsss[coco]'") from exc
    if not annotations.is_file():
        raise DataError(f"annotation file {annotations} not found")
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # COCO() prints timing lines
            return COCO(str(annotations))
    except (ValueError, KeyError, TypeError, AssertionError) as exc:
        raise DataError(f"{annotations}: not a COCO instances file ({exc!r})") from exc


def prepare_coco(images: str | os.PathLike, annotations: str | os.PathLike,
                 out: str | os.PathLike, split: str = "train", limit: int | None = None,
                 keep_empty: bool = False, link: str = "copy") -> dict:
    """Convert one COCO split (``images`` folder + instances json) into VOC layout at ``out``.

    ``limit`` keeps the first N images in image-id order; images with no annotation are
    skipped unless ``keep_empty``. Running it for a second split into the same ``out`` adds
    to ``image_labels.json``; an existing ``classes.txt`` must list the same categories.
    """
    images, out = Path(images), Path(out)
    check_id(split, "split name")
    if link not in LINK_MODES:
        raise DataError(f"link mode {link!r}: expected one of {', '.join(LINK_MODES)}")
    if limit is not None and limit < 1:
        raise DataError(f"limit must be a positive number of images, got {limit}")
    if not images.is_dir():
        raise DataError(f"image folder {images} not found")
    coco = _load_coco(Path(annotations))

    cats = sorted(coco.loadCats(coco.getCatIds()), key=lambda c: c["id"])
    classes = [c["name"] for c in cats]
    label_of = {c["id"]: i + 1 for i, c in enumerate(cats)}
    classes_file = out / CLASSES_FILE
    if classes_file.is_file() and read_classes_file(classes_file) != classes:
        raise DataError(f"{classes_file} lists other classes than the categories of {annotations}")

    chosen, skipped = [], 0
    for image_id in sorted(coco.getImgIds()):
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[image_id]))
        if anns or keep_empty:
            chosen.append((coco.loadImgs([image_id])[0], anns))
        else:
            skipped += 1
        if limit is not None and len(chosen) >= limit:
            break

    labels: dict[str, list[str]] = {}
    for info, anns in progress(chosen, desc=f"coco {split}", unit="img"):
        src = safe_join(images, info["file_name"])
        if not src.is_file():
            raise DataError(f"image {src} (id {info['id']} in {annotations}) not found")
        stem = check_id(src.stem, f"{annotations} image {info['id']}")
        place_file(src, out / "JPEGImages" / f"{stem}{src.suffix.lower()}", link)
        save_label_png(out / "SegmentationClass" / f"{stem}.png",
                       coco_label_map(coco, info, anns, label_of))
        present = {a["category_id"] for a in anns}
        labels[stem] = [c["name"] for c in cats if c["id"] in present]

    if not classes_file.is_file():
        atomic_write_text(classes_file, "".join(f"{c}\n" for c in classes))
    labels_file = out / LABELS_FILE
    table = {}
    if labels_file.is_file():
        try:
            table = json.loads(labels_file.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise DataError(f"cannot read existing {labels_file} ({exc})") from exc
    table.update(labels)
    write_labels_json(labels_file, table)
    list_file = out / "ImageSets" / "Segmentation" / f"{split}.txt"
    write_id_list(list_file, sorted(labels))
    return {"out": str(out), "split": split, "num_images": len(labels),
            "num_classes": len(classes), "list_file": str(list_file), "skipped_empty": skipped}
