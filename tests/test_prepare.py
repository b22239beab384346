"""`plda prepare voc|coco` on tiny trees written by the tests."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from plda.cli.main import main
from plda.data.layout import DatasetLayout
from plda.data.prepare_coco import prepare_coco
from plda.data.prepare_voc import prepare_voc
from plda.errors import DataError, PldaError
from plda.data.labels import load_label_png, save_label_png

# pycocotools 2.0 with numpy 2 warns inside annToMask; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


@pytest.fixture
def cli(monkeypatch):
    """``plda`` with only this sub-command registered (the others are tested elsewhere)."""
    monkeypatch.setattr("plda.cli.main.COMMAND_MODULES", ("plda.cli.prepare",))
    return main

# ---- VOC --------------------------------------------------------------------------------

XML_OBJECTS = {
    "2007_000010": ["person", "dog"],
    "2007_000020": ["cat"],
    "2008_000030": ["tvmonitor", "aeroplane", "tvmonitor"],
    "2008_000040": ["sheep"],
    "2011_000050": ["bus", "person"],
}


def make_voc_tree(root: Path, aug=("2007_000010", "2007_000020", "2008_000030", "2011_000050"),
                  val=("2007_000020",), train=("2007_000010",)) -> Path:
    ann = root / "Annotations"
    ann.mkdir(parents=True)
    for image_id, names in XML_OBJECTS.items():
        objs = "".join(f"<object><name>{n}</name><part><name>hand</name></part></object>"
                       for n in names)
        (ann / f"{image_id}.xml").write_text(
            f"<annotation><folder>VOC2012</folder><filename>{image_id}.jpg</filename>{objs}</annotation>")
    for image_id in aug:
        save_label_png(root / "SegmentationClassAug" / f"{image_id}.png", np.zeros((2, 2), np.uint8))
    lists = root / "ImageSets" / "Segmentation"
    lists.mkdir(parents=True)
    (lists / "val.txt").write_text("".join(f"{i}\n" for i in val))
    (lists / "train.txt").write_text("".join(f"{i}\n" for i in train))
    return root


def test_prepare_voc(tmp_path):
    root = make_voc_tree(tmp_path)
    summary = prepare_voc(root)
    table = json.loads((root / "image_labels.json").read_text())
    assert list(table) == sorted(XML_OBJECTS)  # sorted ids
    assert table == {
        "2007_000010": ["dog", "person"],  # class-list order, parts ignored
        "2007_000020": ["cat"],
        "2008_000030": ["aeroplane", "tvmonitor"],
        "2008_000040": ["sheep"],
        "2011_000050": ["bus", "person"],
    }
    train_aug = (root / "ImageSets" / "Segmentation" / "train_aug.txt").read_text().split()
    assert train_aug == ["2007_000010", "2008_000030", "2011_000050"]
    assert summary["num_images"] == 5 and summary["num_train_aug"] == 3
    assert summary["class_counts"]["person"] == 2 and summary["class_counts"]["cow"] == 0
    layout = DatasetLayout(root)
    assert layout.label_source == "json" and layout.ids("train_aug") == train_aug
    assert layout.labels("2011_000050")[[5, 14]].tolist() == [1, 1]
    assert not list(root.rglob(".tmp-*"))


def test_prepare_voc_without_train_aug_and_custom_out(tmp_path):
    root = make_voc_tree(tmp_path)
    summary = prepare_voc(root, out=tmp_path / "labels" / "tags.json", write_train_aug=False)
    assert "train_aug_file" not in summary
    assert not (root / "ImageSets" / "Segmentation" / "train_aug.txt").exists()
    assert json.loads((tmp_path / "labels" / "tags.json").read_text())["2007_000020"] == ["cat"]


def test_prepare_voc_errors(tmp_path):
    with pytest.raises(DataError, match=r"Annotations not found"):
        prepare_voc(tmp_path)
    root = make_voc_tree(tmp_path / "a")
    (root / "ImageSets" / "Segmentation" / "val.txt").unlink()
    with pytest.raises(DataError, match=r"val\.txt not found"):
        prepare_voc(root)
    root = make_voc_tree(tmp_path / "b")
    for p in (root / "SegmentationClassAug").iterdir():
        p.unlink()
    (root / "SegmentationClassAug").rmdir()
    with pytest.raises(DataError, match=r"SegmentationClassAug not found.*--no-train-aug"):
        prepare_voc(root)
    root = make_voc_tree(tmp_path / "c", train=("2007_000010", "2012_999999"))
    with pytest.raises(DataError, match=r"train\.txt: 1 ids have no annotation.*2012_999999"):
        prepare_voc(root)
    root = make_voc_tree(tmp_path / "d", aug=("2007_000010", "2009_000123"))
    with pytest.raises(DataError, match=r"train_aug\.txt: 1 ids have no annotation.*2009_000123"):
        prepare_voc(root)


def test_prepare_voc_cli(tmp_path, capsys, cli):
    root = make_voc_tree(tmp_path)
    assert cli(["prepare", "voc", str(root), "--no-train-aug"]) == 0
    assert "labels of 5 images" in capsys.readouterr().out
    assert not (root / "ImageSets" / "Segmentation" / "train_aug.txt").exists()
    assert cli(["prepare", "voc", str(root), "--train-aug"]) == 0
    assert "train_aug.txt: 3 ids" in capsys.readouterr().out
    assert cli(["prepare", "voc", str(tmp_path / "nowhere")]) == 2
    assert "plda prepare: error:" in capsys.readouterr().err


# ---- COCO -------------------------------------------------------------------------------

H, W = 20, 30


def rect_polygon(x0, y0, x1, y1) -> list[float]:
    """A rectangle polygon; pycocotools fills columns x0..x1-1 and rows y0..y1-1."""
    return [x0, y0, x1, y0, x1, y1, x0, y1]


def uncompressed_rle(mask: np.ndarray) -> dict:
    flat = mask.ravel(order="F").astype(np.uint8)  # COCO RLE runs are column-major
    edges = np.flatnonzero(np.diff(np.concatenate([[0], flat, [1 - flat[-1]]])))
    counts = np.diff(np.concatenate([[0], edges])).tolist()
    return {"counts": counts, "size": list(mask.shape)}


def make_coco(tmp_path: Path) -> tuple[Path, Path]:
    images = tmp_path / "train2014"
    images.mkdir()
    files = {9: "COCO_train2014_000000000009.jpg", 25: "COCO_train2014_000000000025.jpg",
             30: "COCO_train2014_000000000030.jpg"}
    for k, name in files.items():
        Image.fromarray(np.full((H, W, 3), k, np.uint8)).save(images / name)
    crowd = np.zeros((H, W), np.uint8)
    crowd[12:18, 10:16] = 1
    coco = {
        "images": [{"id": k, "file_name": n, "height": H, "width": W} for k, n in files.items()],
        # Non-contiguous ids, listed out of order: labels follow the sorted ids.
        "categories": [{"id": 18, "name": "dog"}, {"id": 1, "name": "person"},
                       {"id": 44, "name": "bottle"}],
        "annotations": [
            {"id": 1, "image_id": 9, "category_id": 1, "iscrowd": 0, "area": 120,
             "segmentation": [rect_polygon(2, 3, 12, 15)], "bbox": [2, 3, 10, 12]},
            {"id": 2, "image_id": 9, "category_id": 18, "iscrowd": 0, "area": 60,
             "segmentation": [rect_polygon(8, 5, 20, 10)], "bbox": [8, 5, 12, 5]},
            {"id": 3, "image_id": 9, "category_id": 44, "iscrowd": 1, "area": 36,
             "segmentation": uncompressed_rle(crowd), "bbox": [10, 12, 6, 6]},
            {"id": 4, "image_id": 25, "category_id": 18, "iscrowd": 0, "area": 8,
             "segmentation": [rect_polygon(0, 0, 2, 2), rect_polygon(28, 18, 30, 20)],
             "bbox": [0, 0, 30, 20]},
        ],
    }
    ann = tmp_path / "instances_train2014.json"
    ann.write_text(json.dumps(coco))
    return images, ann


def expected_mask_9() -> np.ndarray:
    m = np.zeros((H, W), np.uint8)
    m[12:18, 10:16] = 255  # crowd bottle: ignore
    m[3:15, 2:12] = 1  # person (larger) over the crowd region
    m[5:10, 8:20] = 2  # dog (smaller) on top of the person
    return m


def test_prepare_coco(tmp_path):
    images, ann = make_coco(tmp_path)
    out = tmp_path / "coco"
    summary = prepare_coco(images, ann, out, split="train")
    assert summary["num_images"] == 2 and summary["skipped_empty"] == 1
    assert (out / "classes.txt").read_text() == "person\ndog\nbottle\n"
    ids = ["COCO_train2014_000000000009", "COCO_train2014_000000000025"]
    assert (out / "ImageSets" / "Segmentation" / "train.txt").read_text().split() == ids
    assert json.loads((out / "image_labels.json").read_text()) == {
        ids[0]: ["person", "dog", "bottle"], ids[1]: ["dog"]}
    np.testing.assert_array_equal(load_label_png(out / "SegmentationClass" / f"{ids[0]}.png"),
                                  expected_mask_9())
    m25 = np.zeros((H, W), np.uint8)
    m25[0:2, 0:2] = m25[18:20, 28:30] = 2
    np.testing.assert_array_equal(load_label_png(out / "SegmentationClass" / f"{ids[1]}.png"), m25)
    assert (out / "JPEGImages" / f"{ids[0]}.jpg").read_bytes() == (images / f"{ids[0]}.jpg").read_bytes()
    layout = DatasetLayout(out)  # the result reads back through the layout, checks included
    assert layout.classes == ["person", "dog", "bottle"]
    assert layout.labels(ids[0]).tolist() == [1, 1, 1]
    np.testing.assert_array_equal(layout.load_mask(ids[0]), expected_mask_9())


def test_prepare_coco_options(tmp_path):
    images, ann = make_coco(tmp_path)
    out = tmp_path / "coco"
    prepare_coco(images, ann, out, split="val", limit=1, link="symlink")
    link = out / "JPEGImages" / "COCO_train2014_000000000009.jpg"
    assert link.is_symlink() and link.resolve() == (images / link.name).resolve()
    assert (out / "ImageSets" / "Segmentation" / "val.txt").read_text().split() == [link.stem]
    summary = prepare_coco(images, ann, out, split="all", keep_empty=True, link="hardlink")
    assert summary["num_images"] == 3
    table = json.loads((out / "image_labels.json").read_text())
    assert table["COCO_train2014_000000000030"] == [] and len(table) == 3
    assert DatasetLayout(out).labels("COCO_train2014_000000000030").sum() == 0
    empty = load_label_png(out / "SegmentationClass" / "COCO_train2014_000000000030.png")
    assert empty.shape == (H, W) and not empty.any()


def test_prepare_coco_errors(tmp_path, monkeypatch):
    images, ann = make_coco(tmp_path)
    (tmp_path / "coco").mkdir()
    (tmp_path / "coco" / "classes.txt").write_text("person\ncat\nbottle\n")
    with pytest.raises(DataError, match="other classes"):
        prepare_coco(images, ann, tmp_path / "coco")
    with pytest.raises(DataError, match="annotation file .* not found"):
        prepare_coco(images, tmp_path / "missing.json", tmp_path / "o")
    (images / "COCO_train2014_000000000025.jpg").unlink()
    with pytest.raises(DataError, match=r"COCO_train2014_000000000025\.jpg .* not found"):
        prepare_coco(images, ann, tmp_path / "o")
    monkeypatch.setitem(sys.modules, "pycocotools.coco", None)
    with pytest.raises(PldaError, match=r"plda-wsss\[coco\]"):
        prepare_coco(images, ann, tmp_path / "o")


def test_prepare_coco_cli(tmp_path, capsys, cli):
    images, ann = make_coco(tmp_path)
    out = tmp_path / "coco"
    assert cli(["prepare", "coco", "--images", str(images), "--annotations", str(ann),
                 "--out", str(out), "--split", "train", "--limit", "5"]) == 0
    assert "wrote 2 images of 3 classes" in capsys.readouterr().out
    np.testing.assert_array_equal(
        load_label_png(out / "SegmentationClass" / "COCO_train2014_000000000009.png"),
        expected_mask_9())
    assert cli(["prepare", "coco", "--images", str(images), "--annotations", str(ann),
                 "--out", str(out), "--limit", "0"]) == 2
    assert "limit must be a positive" in capsys.readouterr().err
