"""Image-level labels and the ``train_aug`` list for a PASCAL VOC 2012 folder.

``image_labels.json`` is built from the VOC XML annotations (every ``object/name``, difficult
objects included, as the reference ``make_cls_labels.py``). ``train_aug.txt`` is the standard
WSSS training set: every mask in ``SegmentationClassAug`` (VOC 2012 + SBD) minus the VOC 2012
``val`` ids — 10,582 images on the full data.
"""

from __future__ import annotations

import os
from pathlib import Path

from plda.data.layout import (LABELS_FILE, load_classes, parse_voc_xml, read_id_list,
                              write_id_list, write_labels_json)
from plda.errors import DataError
from plda.utils.io import check_id
from plda.utils.progress import progress


def _stems(folder: Path, pattern: str) -> list[str]:
    return sorted(check_id(p.stem, str(p)) for p in folder.glob(pattern))


def prepare_voc(root: str | os.PathLike, out: str | os.PathLike | None = None,
                write_train_aug: bool = True) -> dict:
    """Write ``image_labels.json`` (default ``ROOT/image_labels.json``) and, with
    ``write_train_aug``, ``ROOT/ImageSets/Segmentation/train_aug.txt``; return a summary.

    Labels cover every XML file in ``Annotations``; every id in the split lists must have one.
    """
    root = Path(root)
    ann_dir = root / "Annotations"
    if not ann_dir.is_dir():
        raise DataError(f"{ann_dir} not found: image-level labels are read from the VOC XML "
                        "annotations (VOCdevkit/VOC2012/Annotations)")
    classes = load_classes(root)
    xml_ids = _stems(ann_dir, "*.xml")
    if not xml_ids:
        raise DataError(f"{ann_dir} holds no .xml annotation files")
    list_dir = root / "ImageSets" / "Segmentation"
    lists = {p: read_id_list(p) for p in sorted(list_dir.glob("*.txt")) if p.name != "train_aug.txt"}

    train_aug: list[str] | None = None
    if write_train_aug:
        aug_dir = root / "SegmentationClassAug"
        if not aug_dir.is_dir():
            raise DataError(f"{aug_dir} not found: train_aug is every SegmentationClassAug mask "
                            "minus val.txt (add the SBD-augmented masks or pass --no-train-aug)")
        val_path = list_dir / "val.txt"
        if val_path not in lists:
            raise DataError(f"{val_path} not found: needed to exclude val images from train_aug")
        val = set(lists[val_path])
        train_aug = [i for i in _stems(aug_dir, "*.png") if i not in val]
        lists[list_dir / "train_aug.txt"] = train_aug

    known = set(xml_ids)
    for path, ids in lists.items():
        missing = [i for i in ids if i not in known]
        if missing:
            raise DataError(f"{path}: {len(missing)} ids have no annotation in {ann_dir} "
                            f"(first: {', '.join(missing[:5])})")

    table = {i: parse_voc_xml(ann_dir / f"{i}.xml", classes)
             for i in progress(xml_ids, desc="annotations", unit="img")}
    labels_file = Path(out) if out is not None else root / LABELS_FILE
    write_labels_json(labels_file, table)
    summary = {
        "labels_file": str(labels_file),
        "num_images": len(table),
        "class_counts": {c: sum(c in names for names in table.values()) for c in classes},
    }
    if train_aug is not None:
        write_id_list(list_dir / "train_aug.txt", train_aug)
        summary.update(train_aug_file=str(list_dir / "train_aug.txt"), num_train_aug=len(train_aug))
    return summary
