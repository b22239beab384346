"""A dataset on disk in PASCAL VOC layout, with image-level labels.

::

    ROOT/JPEGImages/<id>.jpg              (.jpeg, .png, .bmp or .webp, in any letter case)
    ROOT/SegmentationClassAug/<id>.png    (preferred) or ROOT/SegmentationClass/<id>.png
    ROOT/ImageSets/Segmentation/<split>.txt
    ROOT/classes.txt                      (optional: one foreground class per line; VOC's 20 by default)
    ROOT/image_labels.json                (optional: {id: [class names]})
    ROOT/Annotations/<id>.xml             (optional: VOC XML, object/name)

Image-level labels come from ``image_labels.json`` if present, else from the VOC XML files, else
from the masks (the classes a mask contains; a warning says so, since masks miss classes that the
tags list, e.g. an unsegmented person).
"""

from __future__ import annotations

import json
import os
import warnings
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from plda.errors import DataError
from plda.utils.io import atomic_write_text, check_id, read_text_file

VOC_CLASSES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)
IGNORE_INDEX = 255
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
MASK_FOLDERS = ("SegmentationClassAug", "SegmentationClass")
LABEL_SOURCES = ("json", "xml", "masks")
LABELS_FILE = "image_labels.json"
CLASSES_FILE = "classes.txt"


def read_classes_file(path: str | os.PathLike) -> list[str]:
    """Foreground class names from a ``classes.txt`` (label ``i`` is line ``i``, 1-based)."""
    path = Path(path)
    names: list[str] = []
    seen: dict[str, int] = {}
    for lineno, raw in enumerate(read_text_file(path, "class list").splitlines(), start=1):
        name = raw.strip()
        if not name:
            raise DataError(f"{path}:{lineno}: blank line; expected one class name per line")
        if name in seen:
            raise DataError(f"{path}:{lineno}: duplicate class {name!r} (first on line {seen[name]})")
        seen[name] = lineno
        names.append(name)
    if not names:
        raise DataError(f"{path}: no class names; expected one foreground class per line")
    return names


def load_classes(root: str | os.PathLike) -> list[str]:
    """The foreground classes of the dataset at ``root``: its ``classes.txt``, else VOC's 20."""
    path = Path(root) / CLASSES_FILE
    return read_classes_file(path) if path.is_file() else list(VOC_CLASSES)


def write_labels_json(path: str | os.PathLike, table: dict[str, list[str]]) -> None:
    """Write ``{id: [class names]}`` atomically, sorted by id, one image per line."""
    lines = [f"  {json.dumps(k)}: {json.dumps(table[k])}" for k in sorted(table)]
    atomic_write_text(path, "{\n" + ",\n".join(lines) + ("\n}\n" if lines else "}\n"))


def write_id_list(path: str | os.PathLike, ids) -> None:
    """Write an image list file atomically, one id per line."""
    atomic_write_text(path, "".join(f"{check_id(i)}\n" for i in ids))


def read_id_list(path: str | os.PathLike) -> list[str]:
    """Image ids from a list file: the first word of each line (VOC ``ImageSets/Main`` lists
    carry a second column); blank lines skipped, duplicates refused."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"image list {path} not found")
    ids: list[str] = []
    seen: dict[str, int] = {}
    for lineno, raw in enumerate(read_text_file(path, "image list").splitlines(), start=1):
        words = raw.split()
        if not words:
            continue
        image_id = words[0]
        check_id(image_id, f"{path}:{lineno}")
        if image_id in seen:
            raise DataError(f"{path}:{lineno}: duplicate id {image_id!r} (first on line {seen[image_id]})")
        seen[image_id] = lineno
        ids.append(image_id)
    return ids


def parse_voc_xml(path: str | os.PathLike, classes: list[str] | tuple[str, ...]) -> list[str]:
    """Class names of the objects (``object/name``) in a VOC XML file, in class-list order.

    Every object counts, ``difficult`` ones included, as in the reference label files.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read annotation {path} ({exc})") from exc
    # ElementTree does not fetch external entities, but internal ones can still blow up
    # ("billion laughs"); VOC files never declare any, so refuse them outright.
    if b"<!DOCTYPE" in data or b"<!ENTITY" in data:
        raise DataError(f"{path}: DTD/entity declarations are not allowed in annotation files")
    try:
        root = ET.fromstring(data)
    except ET.ParseError as exc:
        raise DataError(f"{path}: malformed XML ({exc})") from exc
    found = set()
    for obj in root.iter("object"):
        name = (obj.findtext("name") or "").strip()
        if name not in classes:
            raise DataError(f"{path}: unknown class {name!r}; valid classes: {', '.join(classes)}")
        found.add(name)
    return [c for c in classes if c in found]


class DatasetLayout:
    """A dataset folder in VOC layout (see the module docstring).

    ``label_source`` forces where image-level labels come from (``"json"``, ``"xml"`` or
    ``"masks"``); by default the first available in that order.
    """

    def __init__(self, root: str | os.PathLike, label_source: str | None = None):
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataError(f"dataset root {self.root} is not a folder")
        self.classes: list[str] = load_classes(self.root)
        self._class_index = {c: i for i, c in enumerate(self.classes)}
        self.mask_dir: Path | None = next(
            (self.root / d for d in MASK_FOLDERS if (self.root / d).is_dir()), None)
        if label_source is not None and label_source not in LABEL_SOURCES:
            raise DataError(f"label_source {label_source!r}: expected one of {', '.join(LABEL_SOURCES)}")
        self._label_source = label_source
        self._labels: dict[str, np.ndarray] = {}
        self._json: dict[str, list[str]] | None = None
        self._ids: dict[str, list[str]] = {}
        self._warned_masks = False
        self._images_by_stem: dict[str, Path] | None = None

    def __repr__(self) -> str:
        return f"DatasetLayout({str(self.root)!r}, classes={self.num_classes})"

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def class_names(self) -> list[str]:
        """``["background", *classes]``: the name of every label value 0..C."""
        return ["background", *self.classes]

    @property
    def has_masks(self) -> bool:
        return self.mask_dir is not None

    @property
    def label_source(self) -> str:
        """Where image-level labels come from: ``"json"``, ``"xml"`` or ``"masks"``."""
        if self._label_source is None:
            if (self.root / LABELS_FILE).is_file():
                self._label_source = "json"
            elif (self.root / "Annotations").is_dir():
                self._label_source = "xml"
            elif self.has_masks:
                self._label_source = "masks"
            else:
                raise DataError(
                    f"{self.root}: no image-level labels; expected {LABELS_FILE}, Annotations/ "
                    f"or {'/'.join(MASK_FOLDERS)}/ (run `plda prepare voc` to create {LABELS_FILE})")
        return self._label_source

    # ---- ids and paths -------------------------------------------------------------------
    def list_path(self, split: str) -> Path:
        check_id(split, "split name")
        return self.root / "ImageSets" / "Segmentation" / f"{split}.txt"

    def ids(self, split: str) -> list[str]:
        """The ids of ``ImageSets/Segmentation/<split>.txt`` (a new list each call)."""
        if split not in self._ids:
            self._ids[split] = read_id_list(self.list_path(split))
        return list(self._ids[split])

    def image_path(self, image_id: str) -> Path:
        """``JPEGImages/<id>.<ext>`` for any extension of :data:`IMAGE_EXTENSIONS` in any letter
        case (``IMG_4009.JPG`` included); a ``DataError`` when there is none."""
        check_id(image_id)
        folder = self.root / "JPEGImages"
        for ext in IMAGE_EXTENSIONS:
            p = folder / f"{image_id}{ext}"
            if p.is_file():
                return p
        found = self._case_variants().get(image_id)
        if found is not None:
            return found
        raise DataError(f"image {image_id!r} not found: expected "
                        f"{folder / image_id}{{{','.join(IMAGE_EXTENSIONS)}}} (any letter case)")

    def _case_variants(self) -> dict[str, Path]:
        """``{stem: path}`` of the images whose extension is not in lower case (listed once)."""
        if self._images_by_stem is None:
            found: dict[str, Path] = {}
            folder = self.root / "JPEGImages"
            if folder.is_dir():
                for p in sorted(folder.iterdir()):
                    suffix = p.suffix
                    if suffix.lower() in IMAGE_EXTENSIONS and suffix != suffix.lower() \
                            and p.is_file():
                        found.setdefault(p.stem, p)
            self._images_by_stem = found
        return self._images_by_stem

    def mask_path(self, image_id: str) -> Path | None:
        """The ground-truth mask of ``image_id``, or ``None`` when it has none."""
        check_id(image_id)
        if self.mask_dir is None:
            return None
        p = self.mask_dir / f"{image_id}.png"
        return p if p.is_file() else None

    def masked_ids(self, split: str | list[str]) -> list[str]:
        """The ids of ``split`` (a split name or a list of ids) that have a ground-truth mask,
        in list order. Masks are optional: any subset of a split, none included, may have one."""
        ids = self.ids(split) if isinstance(split, str) else list(split)
        if self.mask_dir is None:
            return []
        return [i for i in ids if self.mask_path(i) is not None]

    # ---- loading -------------------------------------------------------------------------
    def load_image(self, image_id: str):
        """The image as an RGB ``PIL.Image``; an unreadable or truncated file is a ``DataError``."""
        return load_rgb(self.image_path(image_id))

    def image_size(self, image_id: str) -> tuple[int, int]:
        """``(height, width)`` read from the file header, without decoding the pixels."""
        from PIL import Image, UnidentifiedImageError

        path = self.image_path(image_id)
        try:
            with Image.open(path) as img:
                w, h = img.size
        except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as exc:
            raise DataError(f"cannot read image {path} ({exc})") from exc
        return h, w

    def load_mask(self, image_id: str, mask_dir: str | os.PathLike | None = None) -> np.ndarray:
        """The label map ``(H, W) uint8`` (0 background, 1..C classes, 255 ignore), checked.

        ``mask_dir`` reads ``<mask_dir>/<id>.png`` instead (pseudo masks); the same checks apply.
        """
        from plda.data.labels import load_label_png

        if mask_dir is None:
            path = self.mask_path(image_id)
            if path is None:
                where = self.mask_dir or " or ".join(str(self.root / d) for d in MASK_FOLDERS)
                raise DataError(f"no mask for image {image_id!r} in {where}")
        else:
            path = Path(mask_dir) / f"{check_id(image_id)}.png"
            if not path.is_file():
                raise DataError(f"mask {path} not found")
        mask = load_label_png(path)
        values = mask_values(mask)
        bad = values[(values > self.num_classes) & (values != IGNORE_INDEX)]
        if bad.size:
            raise DataError(f"{path}: label values {bad.tolist()} out of range; expected "
                            f"0..{self.num_classes} or {IGNORE_INDEX} (ignore)")
        size = self.image_size(image_id)
        if mask.shape != size:
            raise DataError(f"{path}: mask size {mask.shape[0]}x{mask.shape[1]} (HxW) differs from "
                            f"image {self.image_path(image_id)} size {size[0]}x{size[1]}")
        return mask

    # ---- image-level labels --------------------------------------------------------------
    def labels(self, image_id: str) -> np.ndarray:
        """Multi-hot foreground labels ``(C,) float32`` of ``image_id`` (read-only, cached)."""
        cached = self._labels.get(image_id)
        if cached is not None:
            return cached
        check_id(image_id)
        source = self.label_source
        if source == "json":
            table = self._label_table()
            if image_id not in table:
                raise DataError(f"{self.root / LABELS_FILE}: no labels for image {image_id!r}")
            names = table[image_id]
        elif source == "xml":
            names = parse_voc_xml(self.root / "Annotations" / f"{image_id}.xml", self.classes)
        else:
            if not self._warned_masks:
                warnings.warn(f"{self.root}: image-level labels are derived from the masks "
                              f"(no {LABELS_FILE} or Annotations/); classes present but not "
                              "segmented are missed", stacklevel=2)
                self._warned_masks = True
            mask = self.load_mask(image_id)
            names = [self.classes[v - 1] for v in mask_values(mask) if 0 < v <= self.num_classes]
        label = np.zeros(self.num_classes, dtype=np.float32)
        label[[self._class_index[n] for n in names]] = 1.0
        label.setflags(write=False)
        self._labels[image_id] = label
        return label

    def _label_table(self) -> dict[str, list[str]]:
        if self._json is None:
            path = self.root / LABELS_FILE
            try:
                table = json.loads(read_text_file(path, "label table"))
            except ValueError as exc:
                if isinstance(exc, DataError):
                    raise
                raise DataError(f"cannot read {path} ({exc})") from exc
            if not isinstance(table, dict):
                raise DataError(f"{path}: expected a JSON object {{id: [class names]}}")
            for image_id, names in table.items():
                if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                    raise DataError(f"{path}: labels of {image_id!r} must be a list of class names")
                for n in names:
                    if n not in self._class_index:
                        raise DataError(f"{path}: image {image_id!r} has unknown class {n!r}; "
                                        f"valid classes: {', '.join(self.classes)}")
            self._json = table
        return self._json


def mask_values(mask: np.ndarray) -> np.ndarray:
    """The distinct values of a ``uint8`` label map, ascending (bincount: faster than unique)."""
    return np.flatnonzero(np.bincount(mask.ravel(), minlength=256))


def load_rgb(path: str | os.PathLike):
    """Open an image file fully decoded as RGB; corrupt or truncated files raise ``DataError``."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img.load()
            return img.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError,
            Image.DecompressionBombError) as exc:
        raise DataError(f"cannot read image {path} ({exc})") from exc
