"""DatasetLayout (VOC layout, label sources, validation) and the torch Datasets over it."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from plda.data.datasets import (ClassificationDataset, ImageDataset, SegmentationDataset,
                                list_collate)
from plda.data.layout import VOC_CLASSES, DatasetLayout
from plda.data.transforms import SegTransform, Stage1Transform
from plda.errors import DataError
from plda.data.labels import save_label_png

H, W = 24, 32


def _mask(fg: dict[int, tuple[int, int, int, int]]) -> np.ndarray:
    m = np.zeros((H, W), np.uint8)
    for value, (y0, y1, x0, x1) in fg.items():
        m[y0:y1, x0:x1] = value
    return m


def make_voc(root: Path, masks: dict[str, np.ndarray], split: str = "train") -> Path:
    """A tiny VOC-layout dataset: JPEG images, SegmentationClassAug masks and one list."""
    rng = np.random.default_rng(0)
    for image_id, mask in masks.items():
        (root / "JPEGImages").mkdir(parents=True, exist_ok=True)
        img = rng.integers(0, 256, (*mask.shape, 3), dtype=np.uint8)
        Image.fromarray(img).save(root / "JPEGImages" / f"{image_id}.jpg")
        save_label_png(root / "SegmentationClassAug" / f"{image_id}.png", mask)
    lists = root / "ImageSets" / "Segmentation"
    lists.mkdir(parents=True, exist_ok=True)
    (lists / f"{split}.txt").write_text("".join(f"{i}\n" for i in masks))
    return root


def write_xml(path: Path, names: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    objs = "".join(f"<object><name>{n}</name><difficult>0</difficult></object>" for n in names)
    path.write_text(f"<annotation><filename>x.jpg</filename>{objs}</annotation>")


@pytest.fixture
def voc(tmp_path: Path) -> Path:
    # cat = 8, dog = 12, person = 15 in VOC's 1-based labels
    return make_voc(tmp_path, {
        "2008_000001": _mask({8: (2, 10, 3, 12), 255: (10, 11, 3, 12)}),
        "2008_000002": _mask({12: (0, 5, 0, 5), 15: (10, 20, 10, 30)}),
    })


def multi_hot(*names: str, classes=VOC_CLASSES) -> np.ndarray:
    v = np.zeros(len(classes), np.float32)
    for n in names:
        v[list(classes).index(n)] = 1
    return v


def test_default_voc_classes(voc):
    layout = DatasetLayout(voc)
    assert layout.num_classes == 20 and layout.classes[0] == "aeroplane"
    assert layout.classes[-1] == "tvmonitor" and layout.class_names[0] == "background"
    assert layout.class_names[8] == "cat" and len(layout.class_names) == 21
    assert layout.ids("train") == ["2008_000001", "2008_000002"]
    assert layout.image_path("2008_000001").name == "2008_000001.jpg"
    assert layout.mask_path("2008_000002").parent.name == "SegmentationClassAug"
    assert layout.has_masks


def test_classes_txt(tmp_path):
    root = make_voc(tmp_path, {"x1": _mask({2: (0, 4, 0, 4), 255: (5, 6, 0, 9)})})
    (root / "classes.txt").write_text("apple\nbanana\n")
    layout = DatasetLayout(root, label_source="masks")
    assert layout.classes == ["apple", "banana"] and layout.num_classes == 2
    assert layout.class_names == ["background", "apple", "banana"]
    with pytest.warns(UserWarning, match="derived from the masks"):
        np.testing.assert_array_equal(layout.labels("x1"), [0, 1])
    save_label_png(root / "SegmentationClassAug" / "x1.png", _mask({3: (0, 4, 0, 4)}))
    with pytest.raises(DataError, match=r"x1\.png.*\[3\].*0\.\.2"):
        DatasetLayout(root).load_mask("x1")


@pytest.mark.parametrize("text, match", [
    ("apple\n\nbanana\n", r"classes\.txt:2: blank line"),
    ("apple\nbanana\napple\n", r"classes\.txt:3: duplicate class 'apple' \(first on line 1\)"),
])
def test_bad_classes_txt(voc, text, match):
    (voc / "classes.txt").write_text(text)
    with pytest.raises(DataError, match=match):
        DatasetLayout(voc)


def test_label_source_preference(voc):
    # json says dog, xml says cat+person, masks say cat: each source must win in turn.
    (voc / "image_labels.json").write_text(json.dumps({"2008_000001": ["dog"],
                                                        "2008_000002": []}))
    write_xml(voc / "Annotations" / "2008_000001.xml", ["cat", "person", "cat"])
    layout = DatasetLayout(voc)
    assert layout.label_source == "json"
    np.testing.assert_array_equal(layout.labels("2008_000001"), multi_hot("dog"))
    np.testing.assert_array_equal(layout.labels("2008_000002"), multi_hot())
    assert layout.labels("2008_000001").dtype == np.float32

    (voc / "image_labels.json").unlink()
    layout = DatasetLayout(voc)
    assert layout.label_source == "xml"
    np.testing.assert_array_equal(layout.labels("2008_000001"), multi_hot("cat", "person"))

    for p in (voc / "Annotations").iterdir():
        p.unlink()
    (voc / "Annotations").rmdir()
    layout = DatasetLayout(voc)
    assert layout.label_source == "masks"
    with pytest.warns(UserWarning, match="derived from the masks") as record:
        np.testing.assert_array_equal(layout.labels("2008_000001"), multi_hot("cat"))
        np.testing.assert_array_equal(layout.labels("2008_000002"), multi_hot("dog", "person"))
    assert len(record) == 1  # warned once per layout


def test_json_errors(voc):
    (voc / "image_labels.json").write_text(json.dumps({"2008_000001": ["cat", "kitten"]}))
    with pytest.raises(DataError, match=r"'2008_000001'.*unknown class 'kitten'.*aeroplane, "):
        DatasetLayout(voc).labels("2008_000001")
    (voc / "image_labels.json").write_text(json.dumps({"2008_000001": ["cat"]}))
    with pytest.raises(DataError, match=r"image_labels\.json: no labels for image '2008_000002'"):
        DatasetLayout(voc).labels("2008_000002")


def test_xml_errors(voc):
    write_xml(voc / "Annotations" / "2008_000001.xml", ["cat", "unicorn"])
    with pytest.raises(DataError, match=r"2008_000001\.xml: unknown class 'unicorn'"):
        DatasetLayout(voc).labels("2008_000001")
    (voc / "Annotations" / "2008_000002.xml").write_text(
        '<!DOCTYPE a [<!ENTITY e "cat">]><annotation><object><name>&e;</name></object></annotation>')
    with pytest.raises(DataError, match=r"2008_000002\.xml: DTD/entity"):
        DatasetLayout(voc).labels("2008_000002")


def test_id_lists(voc):
    layout = DatasetLayout(voc)
    with pytest.raises(DataError, match=r"val\.txt not found"):
        layout.ids("val")
    lists = voc / "ImageSets" / "Segmentation"
    (lists / "dup.txt").write_text("2008_000001\n\n2008_000002\n2008_000001\n")
    with pytest.raises(DataError, match=r"dup\.txt:4: duplicate id '2008_000001' \(first on line 1\)"):
        layout.ids("dup")
    (lists / "evil.txt").write_text("2008_000001\n../../etc/passwd\n")
    with pytest.raises(DataError, match=r"'\.\./\.\./etc/passwd' in .*evil\.txt:2"):
        layout.ids("evil")
    for bad in ("../../etc/passwd", "/etc/passwd", ""):
        with pytest.raises(DataError, match="invalid image id"):
            layout.image_path(bad)
    with pytest.raises(DataError, match="invalid image id"):
        layout.ids("../train")


def test_image_extensions_and_missing(voc):
    layout = DatasetLayout(voc)
    Image.new("RGB", (W, H), (9, 8, 7)).save(voc / "JPEGImages" / "p1.png")
    assert layout.image_path("p1").suffix == ".png"
    assert np.asarray(layout.load_image("p1"))[0, 0].tolist() == [9, 8, 7]
    assert layout.mask_path("p1") is None
    with pytest.raises(DataError, match=r"image 'nope' not found"):
        layout.image_path("nope")
    with pytest.raises(DataError, match=r"no mask for image 'p1'"):
        layout.load_mask("p1")


def test_mask_validation(voc):
    layout = DatasetLayout(voc)
    mask = layout.load_mask("2008_000001")
    assert mask.dtype == np.uint8 and mask.shape == (H, W)
    assert set(np.unique(mask).tolist()) == {0, 8, 255}
    path = voc / "SegmentationClassAug" / "2008_000001.png"
    save_label_png(path, _mask({21: (0, 2, 0, 2), 40: (3, 4, 0, 2), 255: (5, 6, 0, 2)}))
    with pytest.raises(DataError, match=r"2008_000001\.png: label values \[21, 40\] out of range"):
        layout.load_mask("2008_000001")
    save_label_png(path, np.zeros((H, W + 1), np.uint8))
    with pytest.raises(DataError, match=r"2008_000001\.png: mask size 24x33 .* size 24x32"):
        layout.load_mask("2008_000001")


def test_truncated_and_corrupt_images(voc):
    path = voc / "JPEGImages" / "2008_000001.jpg"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"cannot read image .*2008_000001\.jpg"):
        DatasetLayout(voc).load_image("2008_000001")
    path.write_bytes(b"not an image at all")
    with pytest.raises(DataError, match=r"cannot read image .*2008_000001\.jpg"):
        DatasetLayout(voc).load_image("2008_000001")


def test_no_label_source(tmp_path):
    (tmp_path / "JPEGImages").mkdir()
    with pytest.raises(DataError, match=r"no image-level labels.*plda prepare voc"):
        DatasetLayout(tmp_path).labels("a")
    with pytest.raises(DataError, match="not a folder"):
        DatasetLayout(tmp_path / "missing")


# ---- datasets ---------------------------------------------------------------------------

def test_classification_dataset(voc):
    (voc / "image_labels.json").write_text(json.dumps({"2008_000001": ["cat"],
                                                        "2008_000002": ["dog", "person"]}))
    ds = ClassificationDataset(voc, "train", Stage1Transform(resize_long=(40, 60), crop=16), seed=3)
    a = ds[1]
    assert a["image"].shape == (3, 16, 16) and a["image"].dtype == torch.float32
    assert a["id"] == "2008_000002" and torch.equal(a["label"], torch.from_numpy(multi_hot("dog", "person")))
    assert torch.equal(ds[1]["image"], a["image"])  # same seed, epoch, index: same sample
    ds.set_epoch(1)
    assert not torch.equal(ds[1]["image"], a["image"])
    other_seed = ClassificationDataset(voc, "train", Stage1Transform(resize_long=(40, 60), crop=16), seed=4)
    assert not torch.equal(other_seed[1]["image"], a["image"])
    batch = torch.utils.data.default_collate([ds[0], ds[1]])
    assert batch["image"].shape == (2, 3, 16, 16) and batch["id"] == ["2008_000001", "2008_000002"]


def test_augmentation_independent_of_workers(voc):
    (voc / "image_labels.json").write_text(json.dumps({"2008_000001": ["cat"],
                                                        "2008_000002": ["dog"]}))
    ds = ClassificationDataset(voc, "train", Stage1Transform(resize_long=(40, 60), crop=16))
    ds.set_epoch(2)

    def run(workers):
        loader = torch.utils.data.DataLoader(ds, batch_size=1, num_workers=workers)
        return torch.cat([b["image"] for b in loader])

    assert torch.equal(run(0), run(2))


def test_missing_label_fails_before_training(voc):
    (voc / "image_labels.json").write_text(json.dumps({"2008_000001": ["cat"]}))
    with pytest.raises(DataError, match="no labels for image '2008_000002'"):
        ClassificationDataset(voc, "train")


def test_segmentation_dataset_and_pseudo_masks(voc, tmp_path):
    ds = SegmentationDataset(voc, "train")
    s = ds[0]
    assert s["image"].shape == (3, H, W) and s["mask"].dtype == torch.int64
    assert torch.equal(s["mask"], torch.from_numpy(DatasetLayout(voc).load_mask("2008_000001").astype(np.int64)))
    pseudo = tmp_path / "pseudo"
    for i in ds.ids:
        save_label_png(pseudo / f"{i}.png", _mask({15: (0, 3, 0, 3)}))
    ps = SegmentationDataset(voc, ["2008_000002"], SegTransform(crop=40, scale=None), mask_dir=pseudo)
    m = ps[0]["mask"]
    assert m.shape == (40, 40) and (m == 15).sum() == 9 and (m == 255).sum() == 40 * 40 - H * W
    with pytest.raises(DataError, match="mask folder .* not found"):
        SegmentationDataset(voc, "train", mask_dir=tmp_path / "absent")


def test_image_dataset(voc):
    (voc / "image_labels.json").write_text(json.dumps({"2008_000001": ["cat"],
                                                        "2008_000002": ["dog"]}))
    ds = ImageDataset(voc, "train", with_labels=True)
    batch = list_collate([ds[0], ds[1]])
    assert batch["id"] == ["2008_000001", "2008_000002"] and batch["size"][0] == (H, W)
    assert batch["image"][0].dtype == np.uint8 and batch["image"][0].shape == (H, W, 3)
    assert torch.equal(batch["label"][0], torch.from_numpy(multi_hot("cat")))


# ---- the real sample --------------------------------------------------------------------

@pytest.mark.realdata
@pytest.mark.slow
def test_real_sample_labels(voc_subset):
    table = json.loads((voc_subset / "image_labels.json").read_text())
    layout = DatasetLayout(voc_subset)
    ids = layout.ids("train") + layout.ids("val")
    assert len(ids) == 1545 and layout.label_source == "json"
    from_masks = DatasetLayout(voc_subset, label_source="masks")
    differ = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for i in ids:
            tags = layout.labels(i)
            np.testing.assert_array_equal(tags, multi_hot(*table[i]))
            seg = from_masks.labels(i)
            assert np.all(seg <= tags), i  # mask classes are a subset of the tags
            differ += int(not np.array_equal(seg, tags))
    assert differ == 71
