"""``plda prepare folder``: a folder of photos and a tags file -> a dataset in VOC layout.

The ordinary situation of weak supervision: photos with tags, masks for none or a few of them.

Input
    ``PHOTOS/``   image files at any depth (.jpg .jpeg .png .bmp .webp .tif .tiff .gif, any
                  letter case; hidden files and folders skipped).
    tags file     CSV: one row per photo, ``file,tags`` with the tags of a photo in one cell
                  separated by ``tag_sep`` (default ``;``), or one column per tag, or one row
                  per (photo, tag); an optional header row (``file``, ``filename``, ``image``,
                  ``path``, ``name`` or ``id`` first). JSON: ``{file: [tags]}`` (or a
                  ``tag_sep``-separated string) or ``[{"file": ..., "tags": [...]}, ...]``.
                  A photo is named by its path under ``PHOTOS``, its file name, or its stem.
    ``--masks``   optional label PNGs named by the photo's stem (or its path under ``PHOTOS``
                  without extension): value ``k`` is line ``k`` of ``classes.txt`` (1-based),
                  0 background, 255 ignore; palette, grayscale or VOC-coloured RGB.

Output (``OUT``)
    ``JPEGImages/<id>.<ext>``, ``SegmentationClass/<id>.png`` (the masks given),
    ``classes.txt`` (``--classes`` or the tags' names, sorted), ``image_labels.json``,
    ``ImageSets/Segmentation/{train,val,trainval}.txt`` and ``import.json`` (what was imported
    from where: settings, counts, and every id's source file).

Ids are the photos' paths under ``PHOTOS`` without extension, folders joined by ``__`` and
characters other than letters, digits, ``_``, ``-`` and ``.`` replaced by ``_``. Photos whose
EXIF orientation is not upright are stored turned upright (as viewers show them and as masks
drawn on them are), so that images, masks and predictions line up. The train/val split is
reproducible: an image is in val when its hash with ``seed`` ranks among the lowest
``val_fraction`` of all, so adding photos later moves no image between the splits except
to keep the fraction.
"""

from __future__ import annotations

import csv
import difflib
import hashlib
import io
import json
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from plda.errors import DataError

PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif")
# Stored as they are (the layout reads them); anything else is converted to PNG.
KEPT_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
MASK_SUFFIXES = (".png", ".bmp", ".tif", ".tiff")
HEADER_WORDS = ("file", "filename", "file_name", "image", "image_id", "path", "name", "id",
                "photo")
IMPORT_FILE = "import.json"
LINKS = ("copy", "hardlink", "symlink")


@dataclass
class Photo:
    source: Path             # the file under PHOTOS
    rel: str                 # its path under PHOTOS (posix)
    image_id: str
    tags: list[str] = field(default_factory=list)
    mask: Path | None = None
    tagged: bool = False


def make_id(rel: str) -> str:
    """The dataset id of a photo at ``rel`` (posix path under PHOTOS, with extension)."""
    stem = rel.rsplit(".", 1)[0] if "." in rel.rsplit("/", 1)[-1] else rel
    text = re.sub(r"[^A-Za-z0-9_.\-]", "_", stem.replace("/", "__"))
    text = re.sub(r"\.{2,}", "_", text)
    if not text or not text[0].isalnum():
        text = "img" + ("_" if text else "") + text
    return text


def find_photos(photos: Path) -> list[Photo]:
    """Every image file under ``photos`` (sorted by path), with its id; ids made unique."""
    if not photos.is_dir():
        raise DataError(f"photo folder {photos} not found: expected a folder of images")
    found: list[Photo] = []
    for root, dirs, files in os.walk(photos):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if name.startswith(".") or Path(name).suffix.lower() not in PHOTO_SUFFIXES:
                continue
            path = Path(root) / name
            rel = path.relative_to(photos).as_posix()
            found.append(Photo(path, rel, make_id(rel)))
    if not found:
        raise DataError(f"no images in {photos}: expected files ending in "
                        f"{', '.join(PHOTO_SUFFIXES)} (any letter case)")
    found.sort(key=lambda p: p.rel)
    seen: dict[str, int] = {}
    for photo in found:
        base, n = photo.image_id, seen.get(photo.image_id.lower(), 0)
        if n:  # IMG_1.jpg and IMG_1.png, or ids equal but for letter case
            photo.image_id = f"{base}_{n + 1}"
        seen[base.lower()] = n + 1
    return found


class _Index:
    """Finds a photo by its path under PHOTOS, its file name or its stem."""

    def __init__(self, photos: list[Photo]):
        self.by_rel = {p.rel: p for p in photos}
        self.by_rel_lower = {p.rel.lower(): p for p in photos}
        self.by_name: dict[str, list[Photo]] = {}
        self.by_stem: dict[str, list[Photo]] = {}
        for p in photos:
            self.by_name.setdefault(p.source.name, []).append(p)
            self.by_stem.setdefault(p.source.stem, []).append(p)
            rel_stem = p.rel.rsplit(".", 1)[0]
            if rel_stem != p.source.stem:
                self.by_stem.setdefault(rel_stem, []).append(p)

    def find(self, ref: str, where: str) -> Photo:
        ref = ref.strip().replace("\\", "/")
        while ref.startswith("./"):
            ref = ref[2:]
        hit = self.by_rel.get(ref) or self.by_rel_lower.get(ref.lower())
        if hit is not None:
            return hit
        for table, key in ((self.by_name, ref.rsplit("/", 1)[-1]), (self.by_stem, ref),
                           (self.by_stem, ref.rsplit("/", 1)[-1].rsplit(".", 1)[0])):
            hits = table.get(key, [])
            if len(hits) == 1:
                return hits[0]
            if len(hits) > 1:
                raise DataError(f"{where}: {ref!r} matches {len(hits)} photos ("
                                + ", ".join(h.rel for h in hits[:4])
                                + "); name it by its path under the photo folder")
        close = difflib.get_close_matches(ref, list(self.by_rel), n=3)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise DataError(f"{where}: no photo {ref!r} in the photo folder{hint}")


def _split_tags(text: str, sep: str) -> list[str]:
    return [t.strip() for t in text.split(sep) if t.strip()]


def read_tags(path: Path, *, delimiter: str = ",", tag_sep: str = ";"
              ) -> list[tuple[str, list[str], str]]:
    """``(file reference, tags, where)`` entries of a CSV or JSON tags file (module docstring);
    ``where`` names the file and line for messages."""
    from plda.utils.io import read_text_file

    if not path.is_file():
        raise DataError(f"tags file {path} not found: expected a CSV (file,tags) or JSON file")
    text = read_text_file(path, "tags file")
    if path.suffix.lower() == ".json":
        return _read_tags_json(path, text, tag_sep)
    if len(delimiter) != 1:
        raise DataError(f"CSV delimiter {delimiter!r}: expected one character")
    entries = []
    rows = list(csv.reader(io.StringIO(text), delimiter=delimiter))
    for lineno, row in enumerate(rows, start=1):
        cells = [c.strip() for c in row]
        if not any(cells) or cells[0].startswith("#"):
            continue
        if lineno == 1 and cells[0].lower() in HEADER_WORDS:
            continue  # a header row
        if not cells[0]:
            raise DataError(f"{path}:{lineno}: the first column (the photo) is empty")
        tags = [t for cell in cells[1:] for t in _split_tags(cell, tag_sep)]
        entries.append((cells[0], tags, f"{path}:{lineno}"))
    if not entries:
        raise DataError(f"{path}: no rows; expected one row per photo: file{delimiter}tags")
    return entries


def _read_tags_json(path: Path, text: str, tag_sep: str) -> list[tuple[str, list[str], str]]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: invalid JSON ({exc})") from exc

    def tags_of(value: Any, where: str) -> list[str]:
        if isinstance(value, str):
            return _split_tags(value, tag_sep)
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return [v.strip() for v in value if v.strip()]
        raise DataError(f"{where}: tags must be a list of names or a {tag_sep!r}-separated "
                        f"string, got {value!r}")

    entries = []
    if isinstance(data, dict):
        for ref, value in data.items():
            entries.append((ref, tags_of(value, f"{path}: {ref!r}"), f"{path}: {ref!r}"))
    elif isinstance(data, list):
        for k, item in enumerate(data):
            where = f"{path}: item {k}"
            if not isinstance(item, dict):
                raise DataError(f"{where}: expected an object {{\"file\": ..., \"tags\": [...]}}")
            ref = next((item[key] for key in ("file", "image", "path", "name", "id")
                        if isinstance(item.get(key), str)), None)
            if ref is None:
                raise DataError(f"{where}: no \"file\" field naming the photo")
            value = next((item[key] for key in ("tags", "labels", "classes") if key in item), [])
            entries.append((ref, tags_of(value, where), where))
    else:
        raise DataError(f"{path}: expected a JSON object {{file: [tags]}} or a list of "
                        "{\"file\", \"tags\"} objects")
    if not entries:
        raise DataError(f"{path}: no photos listed")
    return entries


def _check_class_names(names: Sequence[str], where: str) -> None:
    lower: dict[str, str] = {}
    for name in names:
        if name.lower() == "background":
            raise DataError(f"{where}: 'background' is not a class (label 0 is background "
                            "in every dataset); remove it from the tags")
        if name.lower() in lower and lower[name.lower()] != name:
            raise DataError(f"{where}: tags {lower[name.lower()]!r} and {name!r} differ only "
                            "in letter case; use one spelling")
        lower[name.lower()] = name


def _val_rank(seed: int, image_id: str) -> str:
    return hashlib.sha256(f"{seed}:{image_id}".encode()).hexdigest()


def split_ids(ids: Sequence[str], val_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """``(train, val)``: the ``round(val_fraction * n)`` ids (at least one when the fraction is
    positive and there are two or more images) with the lowest hash rank are val."""
    if not 0.0 <= val_fraction < 1.0:
        raise DataError(f"--val-fraction {val_fraction}: expected a number in [0, 1)")
    ids = list(ids)
    n_val = round(val_fraction * len(ids))
    if val_fraction > 0 and len(ids) >= 2:
        n_val = min(max(n_val, 1), len(ids) - 1)
    val = set(sorted(ids, key=lambda i: _val_rank(seed, i))[:n_val])
    return [i for i in ids if i not in val], [i for i in ids if i in val]


def _upright(path: Path):
    """The image at ``path`` and whether EXIF turned it (``ImageOps.exif_transpose``)."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            orientation = img.getexif().get(0x0112, 1)
            if orientation in (None, 1):
                return img.size, None
            img.load()
            return None, ImageOps.exif_transpose(img)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError,
            Image.DecompressionBombError) as exc:
        raise DataError(f"cannot read image {path} ({exc})") from exc


def _place(source: Path, target: Path, link: str) -> None:
    """Put ``source`` at ``target`` (atomically for a copy) as ``link`` says."""
    from plda.utils.io import atomic_write

    if target.is_symlink() or target.exists():
        target.unlink()
    if link == "symlink":
        target.symlink_to(source.resolve())
        return
    if link == "hardlink":
        try:
            os.link(source, target)
            return
        except OSError:
            pass  # another file system: copy instead
    with atomic_write(target) as fh, open(source, "rb") as src:
        shutil.copyfileobj(src, fh)


def _store_image(photo: Photo, images: Path, link: str) -> tuple[Path, tuple[int, int], bool]:
    """Store ``photo`` under ``images``; return its path there, ``(height, width)`` and
    whether it was turned upright."""
    from plda.utils.io import atomic_save_image

    size, turned = _upright(photo.source)
    suffix = photo.source.suffix.lower()
    if turned is None and suffix in KEPT_SUFFIXES:
        target = images / f"{photo.image_id}{suffix}"
        _place(photo.source, target, link)
        return target, (size[1], size[0]), False
    image = turned if turned is not None else _open_rgb(photo.source)
    if turned is not None and suffix in (".jpg", ".jpeg"):
        target = images / f"{photo.image_id}.jpg"
        atomic_save_image(target, image.convert("RGB"), format="JPEG", quality=95)
    else:
        target = images / f"{photo.image_id}.png"
        if image.mode not in ("RGB", "RGBA", "L", "P"):
            image = image.convert("RGB")
        atomic_save_image(target, image, format="PNG")
    return target, (image.size[1], image.size[0]), turned is not None


def _open_rgb(path: Path):
    from plda.data.layout import load_rgb

    return load_rgb(path)


def _find_masks(masks: Path, index: _Index, photos: list[Photo]) -> list[str]:
    """Attach each mask file to its photo; return the mask files that match no photo."""
    if not masks.is_dir():
        raise DataError(f"mask folder {masks} not found: expected a folder of label PNGs "
                        "named like the photos")
    unmatched = []
    by_id = {p.image_id: p for p in photos}
    for root, dirs, files in os.walk(masks):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            path = Path(root) / name
            if name.startswith(".") or path.suffix.lower() not in MASK_SUFFIXES:
                continue
            rel = path.relative_to(masks).as_posix()
            stem = rel.rsplit(".", 1)[0]
            photo = by_id.get(make_id(rel))
            if photo is None:
                try:
                    photo = index.find(stem, f"mask {path}")
                except DataError:
                    unmatched.append(rel)
                    continue
            if photo.mask is not None:
                raise DataError(f"masks {photo.mask} and {path} are both for photo {photo.rel}")
            photo.mask = path
    return unmatched


def _check_mask(photo: Photo, size: tuple[int, int], classes: list[str]) -> np.ndarray:
    from plda.data.labels import load_label_png

    mask = load_label_png(photo.mask)
    if mask.shape != size:
        raise DataError(f"mask {photo.mask} is {mask.shape[0]}x{mask.shape[1]} (HxW) but photo "
                        f"{photo.source} is {size[0]}x{size[1]} (as viewers show it)")
    values = np.flatnonzero(np.bincount(mask.ravel(), minlength=256))
    bad = [int(v) for v in values if v > len(classes) and v != 255]
    if bad:
        raise DataError(f"mask {photo.mask}: label values {bad} out of range; expected 0 "
                        f"(background), 1..{len(classes)} (line k of classes.txt: "
                        + ", ".join(f"{k + 1} {c}" for k, c in enumerate(classes[:6]))
                        + (", ..." if len(classes) > 6 else "") + ") or 255 (ignore)")
    return mask


def prepare_folder(photos: str | os.PathLike, tags: str | os.PathLike, out: str | os.PathLike,
                   *, masks: str | os.PathLike | None = None,
                   classes: str | os.PathLike | None = None, val_fraction: float = 0.1,
                   val_from_masks: bool = False, seed: int = 0, delimiter: str = ",",
                   tag_sep: str = ";", link: str = "copy", name: str | None = None,
                   log=print) -> dict[str, Any]:
    """Import ``photos`` tagged by ``tags`` (and ``masks``) into a VOC-layout dataset at ``out``
    (module docstring). Returns the summary also written to ``out/import.json``.

    ``val_from_masks``: val is exactly the photos that have a mask (the usual case when masks
    were drawn for evaluation), instead of a ``val_fraction`` drawn with ``seed``. Photos in the
    folder without a tags entry are left out and counted; tags naming a missing photo, an
    unknown class (with ``classes``), a mask that does not fit its photo or the class list are
    errors naming the file and line. Re-importing into the same ``out`` replaces the earlier
    import; a non-empty ``out`` that holds anything else is refused.
    """
    from plda.data.layout import (CLASSES_FILE, read_classes_file, write_id_list,
                                  write_labels_json)
    from plda.utils.io import atomic_write_json, atomic_write_text
    from plda.utils.progress import progress
    from plda.data.labels import save_label_png

    if link not in LINKS:
        raise DataError(f"link {link!r}: expected one of {', '.join(LINKS)}")
    photos, tags, out = Path(photos).expanduser(), Path(tags).expanduser(), Path(out).expanduser()
    if out.exists() and (not out.is_dir() or (any(out.iterdir())
                                              and not (out / IMPORT_FILE).is_file())):
        raise DataError(f"--out {out} exists and holds other files; give a new or empty folder "
                        f"(a folder written by 'plda prepare folder' is re-imported in place)")
    if out.resolve() == photos.resolve() or photos.resolve() in out.resolve().parents:
        raise DataError(f"--out {out} lies inside the photo folder {photos}; choose another")
    start = time.perf_counter()
    found = find_photos(photos)
    index = _Index(found)
    for ref, names, where in read_tags(tags, delimiter=delimiter, tag_sep=tag_sep):
        photo = index.find(ref, where)
        _check_class_names(names, where)
        photo.tags = list(dict.fromkeys([*photo.tags, *names]))
        photo.tagged = True
    tagged = [p for p in found if p.tagged]
    untagged = [p for p in found if not p.tagged]
    if not tagged:
        raise DataError(f"{tags}: none of its rows names a photo of {photos}")
    if classes is not None:
        class_list = read_classes_file(classes)
        _check_class_names(class_list, str(classes))
        known = set(class_list)
        for photo in tagged:
            unknown = [t for t in photo.tags if t not in known]
            if unknown:
                close = difflib.get_close_matches(unknown[0], class_list, n=1)
                raise DataError(f"{tags}: photo {photo.rel} has tag {unknown[0]!r}, not in "
                                f"{classes}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    else:
        class_list = sorted({t for p in tagged for t in p.tags}, key=str.lower)
        _check_class_names(class_list, str(tags))
        if not class_list:
            raise DataError(f"{tags}: no tags at all; expected at least one class name")
    unmatched_masks = _find_masks(Path(masks).expanduser(), index, found) if masks else []
    masked_untagged = [p for p in untagged if p.mask is not None]
    if masked_untagged:
        raise DataError(f"photo {masked_untagged[0].rel} has a mask but no row in {tags}: add "
                        f"its tags ({len(masked_untagged)} such photos)")

    out.mkdir(parents=True, exist_ok=True)
    images, mask_out = out / "JPEGImages", out / "SegmentationClass"
    images.mkdir(exist_ok=True)
    ids = [p.image_id for p in tagged]
    keep_images, keep_masks, turned, mask_mismatch = set(), set(), [], []
    index_of = {c: k + 1 for k, c in enumerate(class_list)}
    for photo in progress(tagged, desc="import photos", unit="img"):
        target, size, was_turned = _store_image(photo, images, link)
        keep_images.add(target.name)
        if was_turned:
            turned.append(photo.rel)
        if photo.mask is not None:
            mask = _check_mask(photo, size, class_list)
            present = {int(v) for v in np.unique(mask)} - {0, 255}
            tagged_values = {index_of[t] for t in photo.tags}
            if present - tagged_values:
                mask_mismatch.append(photo.rel)
            save_label_png(mask_out / f"{photo.image_id}.png", mask)
            keep_masks.add(f"{photo.image_id}.png")
    # Files of an earlier import that this one does not have would be read as its data.
    for folder, keep in ((images, keep_images), (mask_out, keep_masks)):
        if folder.is_dir():
            for f in folder.iterdir():
                if f.name not in keep and not f.name.startswith("."):
                    f.unlink()
    if mask_out.is_dir() and not keep_masks:
        mask_out.rmdir()

    masked = [p.image_id for p in tagged if p.mask is not None]
    if val_from_masks:
        if not masked:
            raise DataError("--val-from-masks: no photo has a mask (give --masks DIR)")
        val_set = set(masked)
        train, val = [i for i in ids if i not in val_set], [i for i in ids if i in val_set]
        if not train:
            raise DataError("--val-from-masks: every photo has a mask, none is left to train on")
    else:
        train, val = split_ids(ids, val_fraction, seed)
    atomic_write_text(out / CLASSES_FILE, "".join(f"{c}\n" for c in class_list))
    write_labels_json(out / "image_labels.json", {p.image_id: p.tags for p in tagged})
    lists = out / "ImageSets" / "Segmentation"
    write_id_list(lists / "train.txt", train)
    write_id_list(lists / "val.txt", val)
    write_id_list(lists / "trainval.txt", ids)
    masked_set = set(masked)
    summary = {
        "name": name or photos.resolve().name,
        "photos": str(photos.resolve()), "tags": str(tags.resolve()),
        "masks": str(Path(masks).expanduser().resolve()) if masks else None,
        "classes": class_list,
        "split": {"val_from_masks": val_from_masks, "val_fraction": val_fraction, "seed": seed},
        "counts": {"images": len(ids), "train": len(train), "val": len(val),
                   "untagged_left_out": len(untagged),
                   "without_tags": sum(1 for p in tagged if not p.tags),
                   "masks": {"train": sum(i in masked_set for i in train),
                             "val": sum(i in masked_set for i in val)},
                   "turned_upright": len(turned)},
        "per_class": {c: sum(c in p.tags for p in tagged) for c in class_list},
        "untagged": [p.rel for p in untagged],
        "unmatched_masks": unmatched_masks,
        "masks_with_untagged_classes": mask_mismatch,
        "sources": {p.image_id: p.rel for p in tagged},
        "seconds": round(time.perf_counter() - start, 3),
    }
    atomic_write_json(out / IMPORT_FILE, summary)
    if log is not None:
        c = summary["counts"]
        log(f"imported {c['images']} photos of {len(class_list)} classes into {out}: "
            f"train {c['train']} ({c['masks']['train']} with masks), val {c['val']} "
            f"({c['masks']['val']} with masks)")
        log("classes: " + ", ".join(f"{k} {n} ({summary['per_class'][n]} photos)"
                                    for k, n in enumerate(class_list, start=1)))
        if untagged:
            log(f"warning: {len(untagged)} photos have no row in {tags} and were left out: "
                + ", ".join(p.rel for p in untagged[:5]) + (", ..." if len(untagged) > 5 else ""))
        if unmatched_masks:
            log(f"warning: {len(unmatched_masks)} mask files match no photo and were ignored: "
                + ", ".join(unmatched_masks[:5]) + (", ..." if len(unmatched_masks) > 5 else ""))
        if mask_mismatch:
            log(f"warning: {len(mask_mismatch)} masks hold a class their photo's tags lack "
                f"(first: {mask_mismatch[0]}); check the tags")
        if turned:
            log(f"{len(turned)} photos were stored turned upright (EXIF orientation)")
        if summary["counts"]["without_tags"]:
            log(f"{summary['counts']['without_tags']} photos have an empty tag list: they are "
                "used as background-only examples")
    return summary


__all__ = ["IMPORT_FILE", "find_photos", "make_id", "prepare_folder", "read_tags", "split_ids"]
