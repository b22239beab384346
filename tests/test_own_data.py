"""One's own photos: import a folder of tagged photos (masks for none, some or all), run the
whole pipeline on it, predict and export; and the failures this path used to hit."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from plda.cli.main import main
from plda.data.layout import DatasetLayout
from plda.data.prepare_folder import prepare_folder, split_ids
from plda.errors import DataError
from plda.data.labels import load_label_png, save_label_png

pytestmark = pytest.mark.usefixtures("one_thread")

# The pipeline on a handful of 64-px photos: every stage runs, in seconds.
TINY = ["data.resize_long=[56,72]", "data.crop=64", "model.pretrained=null",
        "model.output_stride=16", "train.epochs=1", "train.iterations=null", "train.batch_size=4",
        "train.log_every=1",
        "train.checkpoint_every=2", "train.num_workers=0", "cam.scales=[1.0]",
        "cam.sweep=[0.1,0.5,0.1]", "refine.method=pamr", "refine.splits=null",
        "seg.model.pretrained=null", "seg.model.output_stride=16", "seg.crop=64",
        "seg.train.iterations=4", "seg.train.batch_size=4", "seg.train.num_workers=0",
        "seg.train.log_every=1", "seg.train.checkpoint_every=2", "seg.scales=[1.0]"]
SUFFIXES = [(".JPG", "JPEG"), (".png", "PNG"), (".jpeg", "JPEG"), (".PNG", "PNG"),
            (".Jpg", "JPEG"), (".bmp", "BMP")]


def make_photos(root: Path, n_train: int = 10, n_val: int = 6, size: int = 64):
    """A photo folder as a user has it: the synthetic set's images renamed ``IMG_4xxx`` with
    mixed-case extensions (some in a sub-folder), a tags CSV, and the true masks kept aside.
    Returns ``(photos, tags_csv, masks_by_stem, classes)``."""
    from plda.data.synth import generate_synthetic

    synth = root / "synth"
    generate_synthetic(synth, n_train=n_train, n_val=n_val, size=size, num_classes=3)
    layout = DatasetLayout(synth)
    photos, masks = root / "photos", {}
    rows = ["file;tags"]
    ids = layout.ids("train") + layout.ids("val")
    for k, image_id in enumerate(ids):
        suffix, fmt = SUFFIXES[k % len(SUFFIXES)]
        rel = f"{'holiday/' if k % 4 == 3 else ''}IMG_{4009 + k}{suffix}"
        target = photos / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        layout.load_image(image_id).save(target, format=fmt, **(
            {"quality": 95} if fmt == "JPEG" else {}))
        tags = [layout.classes[c] for c in np.flatnonzero(layout.labels(image_id))]
        rows.append(f"{rel};{'|'.join(tags)}")
        masks[Path(rel).stem] = load_label_png(layout.mask_path(image_id))
    tags_csv = root / "tags.csv"
    tags_csv.write_text("\n".join(rows) + "\n")
    return photos, tags_csv, masks, list(layout.classes)


def write_masks(folder: Path, masks: dict, stems) -> None:
    for stem in stems:
        save_label_png(folder / f"{stem}.png", masks[stem])


# ---- the importer ------------------------------------------------------------------------

def test_import_folder_of_mixed_case_photos(tmp_path):
    photos, tags, masks, classes = make_photos(tmp_path, n_train=6, n_val=2)
    write_masks(tmp_path / "masks", masks, ["IMG_4009", "IMG_4012"])  # 4012: in holiday/
    out = tmp_path / "data"
    summary = prepare_folder(photos, tags, out, masks=tmp_path / "masks", delimiter=";",
                             tag_sep="|", val_fraction=0.25, log=None)
    layout = DatasetLayout(out)
    # Classes from the tags, sorted; label k is line k of classes.txt.
    assert layout.classes == sorted(classes, key=str.lower)
    assert (out / "classes.txt").read_text().splitlines() == layout.classes
    train, val = layout.ids("train"), layout.ids("val")
    assert len(train) == 6 and len(val) == 2 and not set(train) & set(val)
    assert "holiday__IMG_4012" in train + val  # the sub-folder is part of the id
    for image_id in train + val:
        layout.image_path(image_id)  # every photo is found, whatever its extension's case
        src = photos / summary["sources"][image_id]
        assert np.array_equal(np.asarray(layout.load_image(image_id)),
                              np.asarray(Image.open(src).convert("RGB")))
    # Tags land as multi-hot labels in the class list's order.
    stem_of = {v: k for k, v in summary["sources"].items()}
    first = stem_of["IMG_4009.JPG"]
    line = next(r for r in tags.read_text().splitlines() if r.startswith("IMG_4009.JPG"))
    expected = sorted(line.split(";")[1].split("|"))
    assert [layout.classes[i] for i in np.flatnonzero(layout.labels(first))] == expected
    # The masks given, stored as label PNGs for their photos only.
    assert layout.masked_ids(train + val) == sorted(["IMG_4009", "holiday__IMG_4012"],
                                                   key=(train + val).index)
    masked = layout.load_mask("IMG_4009")
    assert np.array_equal(masked, masks["IMG_4009"])
    assert summary["counts"]["masks"]["train"] + summary["counts"]["masks"]["val"] == 2
    # Re-importing the same folder gives the same split (the draw is seeded, not random).
    again = prepare_folder(photos, tags, out, masks=None, delimiter=";", tag_sep="|",
                           val_fraction=0.25, log=None)
    assert DatasetLayout(out).ids("val") == val
    assert not (out / "SegmentationClass").exists()  # the earlier import's masks are gone
    assert again["counts"]["masks"] == {"train": 0, "val": 0}


def test_import_json_tags_classes_file_and_val_from_masks(tmp_path):
    photos, tags_csv, masks, classes = make_photos(tmp_path, n_train=6, n_val=2)
    table = {}
    for row in tags_csv.read_text().splitlines()[1:]:
        rel, tags = row.split(";")
        table[Path(rel).name] = tags.split("|")  # by file name, sub-folder left out
    (tmp_path / "tags.json").write_text(json.dumps(table))
    (tmp_path / "classes.txt").write_text("".join(f"{c}\n" for c in reversed(classes)))
    write_masks(tmp_path / "masks", masks, ["IMG_4010", "IMG_4011", "IMG_4013"])
    summary = prepare_folder(photos, tmp_path / "tags.json", tmp_path / "data",
                             masks=tmp_path / "masks", classes=tmp_path / "classes.txt",
                             val_from_masks=True, log=None)
    layout = DatasetLayout(tmp_path / "data")
    assert layout.classes == list(reversed(classes))  # the order given, not sorted
    assert layout.ids("val") == ["IMG_4010", "IMG_4011", "IMG_4013"]
    assert len(layout.masked_ids("train")) == 0 and summary["counts"]["val"] == 3
    # The masks' values were written against the synthetic class order; the class file given
    # reverses it, so the importer must keep values as they are (value k = line k of the file).
    assert np.array_equal(layout.load_mask("IMG_4010"), masks["IMG_4010"])


def test_split_is_reproducible_and_stable_when_photos_are_added():
    ids = [f"img{i:03d}" for i in range(200)]
    train, val = split_ids(ids, 0.1, seed=3)
    assert len(val) == 20 and split_ids(ids, 0.1, seed=3) == (train, val)
    assert split_ids(ids, 0.1, seed=4)[1] != val
    _, val_more = split_ids(ids + [f"new{i}" for i in range(20)], 0.1, seed=3)
    assert len(set(val) & set(val_more)) >= 18  # adding photos moves few val images
    assert split_ids(["a", "b"], 0.1, seed=0)[1] != []  # at least one val image


@pytest.mark.parametrize("case, message", [
    ("missing_photo", "tags.csv:4: no photo 'IMG_9999.jpg' in the photo folder"),
    ("unknown_class", "has tag 'cat', not in"),
    ("mask_size", "is 10x10 (HxW) but photo"),
    ("mask_value", "label values [7] out of range; expected 0 (background), 1..2"),
    ("out_not_empty", "exists and holds other files"),
    ("background_tag", "'background' is not a class"),
    ("case_clash", "differ only in letter case"),
])
def test_import_errors_name_the_file(tmp_path, case, message):
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("IMG_1.JPG", "IMG_2.png"):
        Image.new("RGB", (16, 12), (9, 9, 9)).save(photos / name)
    rows = {"IMG_1.JPG": "dog", "IMG_2.png": "horse"}
    kwargs = {}
    if case == "missing_photo":
        rows["IMG_9999.jpg"] = "dog"
    elif case == "unknown_class":
        (tmp_path / "classes.txt").write_text("dog\nhorse\n")
        rows["IMG_2.png"] = "horse;cat"
        kwargs["classes"] = tmp_path / "classes.txt"
    elif case in ("mask_size", "mask_value"):
        mask = np.zeros((10, 10) if case == "mask_size" else (12, 16), np.uint8)
        mask[2, 2] = 7 if case == "mask_value" else 1
        (tmp_path / "masks").mkdir()
        Image.fromarray(mask, mode="L").save(tmp_path / "masks" / "IMG_1.png")
        kwargs["masks"] = tmp_path / "masks"
    elif case == "out_not_empty":
        (tmp_path / "data").mkdir()
        (tmp_path / "data" / "notes.txt").write_text("mine")
    elif case == "background_tag":
        rows["IMG_1.JPG"] = "dog;background"
    elif case == "case_clash":
        rows["IMG_2.png"] = "Dog"
    tags = tmp_path / "tags.csv"
    tags.write_text("file,tags\n" + "".join(f"{k},{v}\n" for k, v in rows.items()))
    with pytest.raises(DataError, match=re.escape(message)):
        prepare_folder(photos, tags, tmp_path / "data", log=None, **kwargs)


def test_layout_reads_upper_case_extensions(tmp_path):
    """A hand-made VOC-layout folder with camera file names (``IMG_4009.JPG``) trains: the
    layout used to accept only lower-case .jpg/.jpeg/.png."""
    from plda.data.datasets import ClassificationDataset

    root = tmp_path / "data"
    (root / "JPEGImages").mkdir(parents=True)
    (root / "ImageSets/Segmentation").mkdir(parents=True)
    for name in ("IMG_4009.JPG", "IMG_4010.Png", "IMG_4011.webp"):
        Image.new("RGB", (20, 16), (200, 10, 10)).save(root / "JPEGImages" / name)
    (root / "ImageSets/Segmentation/train.txt").write_text("IMG_4009\nIMG_4010\nIMG_4011\n")
    (root / "classes.txt").write_text("cat\n")
    (root / "image_labels.json").write_text(
        json.dumps({"IMG_4009": ["cat"], "IMG_4010": [], "IMG_4011": ["cat"]}))
    layout = DatasetLayout(root)
    assert layout.image_path("IMG_4009").name == "IMG_4009.JPG"
    assert layout.image_path("IMG_4010").name == "IMG_4010.Png"
    with pytest.warns(UserWarning, match="empty label list"):
        dataset = ClassificationDataset(layout, "train")
    assert [tuple(dataset[i]["image"].shape) for i in range(3)] == [(3, 16, 20)] * 3
    with pytest.raises(DataError, match=r"IMG_4012.*any letter case"):
        layout.image_path("IMG_4012")


# ---- the whole pipeline, masks on none or some images -------------------------------------

@pytest.fixture(scope="module")
def no_mask_run(tmp_path_factory):
    """Photos + tags only, imported and run through every stage (the CLI, as a user would)."""
    root = tmp_path_factory.mktemp("own")
    photos, tags, masks, classes = make_photos(root)
    assert main(["prepare", "folder", str(photos), "--tags", str(tags), "--out",
                 str(root / "data"), "--delimiter", ";", "--tag-sep", "|",
                 "--val-fraction", "0.35"]) == 0
    run = root / "run"
    assert main(["run", "own_cam_effnetlite0", f"data.root={root / 'data'}",
                 f"run_dir={run}", *TINY]) == 0
    return root, run, photos, masks


@pytest.mark.slow
def test_run_without_any_mask_makes_every_output(no_mask_run):
    root, run, photos, _ = no_mask_run
    metrics = json.loads((run / "metrics.json").read_text())
    layout = DatasetLayout(root / "data")
    for split in ("train", "val"):
        assert len(list((run / "seeds" / split).glob("*.png"))) == len(layout.ids(split))
        assert metrics["seeds"][split]["miou"] is None
        assert "no masks" in metrics["seeds"][split]["reason"]
        assert metrics["pseudo"][split]["miou"] is None
    assert len(list((run / "pseudo" / "train").glob("*.png"))) == len(layout.ids("train"))
    assert (run / "deeplab" / "segmentation.safetensors").is_file()
    assert metrics["seg"]["val"]["miou"] is None and metrics["seg"]["val"]["images_total"] == 6
    # The threshold came from the label-free rule, and the run says so.
    tuning = metrics["seeds"]["tuning"]
    assert tuning["how"] == "label-free" and tuning["rule"] == "otsu"
    assert 0.0 < metrics["seeds"]["bg_threshold"] < 1.0
    assert metrics["data"]["masks"] == {"train": {"images": 10, "masked": 0},
                                        "val": {"images": 6, "masked": 0}}
    html = (run / "report.html").read_text()
    assert "cam on photos" in html  # titled by the user's data, not the preset's
    assert "not scored: the dataset has no masks" in html
    assert "chosen without labels: rule otsu" in html

    # plda predict on the photo folder: masks with the dataset's classes and a legend.
    out = root / "pred"
    assert main(["predict", str(run), str(photos / "holiday"), str(photos / "IMG_4009.JPG"),
                 "--out", str(out), "--areas", str(root / "areas.json")]) == 0
    given = {"IMG_4009.JPG", *(p.name for p in (photos / "holiday").iterdir())}
    assert len(given) == 5
    assert sorted(p.name for p in out.glob("*.png")) == sorted(f"{Path(n).stem}.png"
                                                               for n in given)
    assert (out / "classes.txt").read_text().splitlines() == layout.classes
    areas = json.loads((root / "areas.json").read_text())
    assert set(areas["images"]) == given
    for name, entry in areas["images"].items():
        mask = load_label_png(out / f"{Path(name).stem}.png")
        assert entry["size"] == list(mask.shape)
        assert sum(c["pixels"] for c in entry["classes"].values()) == mask.size


@pytest.mark.slow
def test_onnx_export_gives_the_labels_of_plda_predict(no_mask_run):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from plda.segmentation.export import onnx_labels

    root, run, photos, _ = no_mask_run
    onnx_file = root / "model.onnx"
    folders = [str(photos), str(photos / "holiday")]  # predict reads folders non-recursively
    assert main(["export", str(run), "--onnx", str(onnx_file), "--check", *folders]) == 0
    pred = root / "pred_onnx"
    assert main(["predict", str(run), *folders, "--out", str(pred), "--no-overlay"]) == 0
    files = sorted(p for p in photos.rglob("*") if p.is_file())
    agree = total = 0
    for path in files:
        rgb = np.asarray(Image.open(path).convert("RGB"))
        labels = onnx_labels(onnx_file, rgb)
        expected = load_label_png(pred / f"{path.stem}.png")
        agree += int((labels == expected).sum())
        total += labels.size
    assert agree / total > 0.999, f"{agree} of {total} pixels agree"
    meta = __import__("onnx").load(str(onnx_file)).metadata_props
    assert json.loads({p.key: p.value for p in meta}["class_names"])[1:] == \
        DatasetLayout(root / "data").classes


@pytest.mark.slow
def test_masks_for_part_of_val_only_are_scored_held_out(tmp_path):
    """Masks for 4 of the 6 val photos, none for train: the threshold is tuned on 2 of them,
    val is scored on the other 2, and every stage scores only those; nothing fails."""
    photos, tags, masks, _ = make_photos(tmp_path)
    data = tmp_path / "data"
    prepare_folder(photos, tags, data, delimiter=";", tag_sep="|", val_fraction=0.35,
                   log=None)
    layout = DatasetLayout(data)
    val = layout.ids("val")
    sources = json.loads((data / "import.json").read_text())["sources"]
    mask_dir = data / "SegmentationClass"
    for image_id in val[:4]:
        save_label_png(mask_dir / f"{image_id}.png", masks[Path(sources[image_id]).stem])
    run = tmp_path / "run"
    assert main(["run", "own_cam_effnetlite0", f"data.root={data}", f"run_dir={run}",
                 *TINY]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    tuning = metrics["seeds"]["tuning"]
    assert tuning["how"] == "held-out sweep" and tuning["split"] == "val"
    assert len(tuning["tuned_ids"]) == 2 and len(tuning["scored_ids"]) == 2
    assert not set(tuning["tuned_ids"]) & set(tuning["scored_ids"])
    assert set(tuning["tuned_ids"]) | set(tuning["scored_ids"]) == set(val[:4])
    for section in ("seeds", "pseudo", "seg"):
        entry = metrics[section]["val"]
        assert entry["images"] == 2 and entry["images_total"] == 6, section
        assert 0.0 <= entry["miou"] <= 100.0
    assert metrics["seeds"]["train"]["miou"] is None  # train has no masks: a reason instead
    # The val score is that of the two held-out images, recomputed here from the files.
    from plda.evaluation.evaluate import evaluate_labels

    ev = evaluate_labels(run / "seg" / "val", mask_dir, tuning["scored_ids"],
                         layout.class_names)
    assert ev["miou"] == pytest.approx(metrics["seg"]["val"]["miou"])
    html = (run / "report.html").read_text()
    assert "2 of 6 images (those with masks)" in html
    assert "that split is scored on its other 2 masked images" in html
    assert f"tuned the threshold (2)</th><td>{', '.join(tuning['tuned_ids'])}" in html
    assert f"scored (2)</th><td>{', '.join(tuning['scored_ids'])}" in html


@pytest.mark.slow
def test_refine_scores_only_masked_images_after_its_work(tmp_path):
    """'plda refine pamr' on train pseudo masks with masks for val only used to fail after
    making every mask; now it writes them all and says why train has no score."""
    from plda.config import load_run_config
    from plda.pipeline.run import run_pipeline

    photos, tags, masks, _ = make_photos(tmp_path)
    data = tmp_path / "data"
    prepare_folder(photos, tags, data, delimiter=";", tag_sep="|", val_fraction=0.35,
                   log=None)
    sources = json.loads((data / "import.json").read_text())["sources"]
    for image_id in DatasetLayout(data).ids("val"):
        save_label_png(data / "SegmentationClass" / f"{image_id}.png",
                       masks[Path(sources[image_id]).stem])
    cfg = load_run_config("own_cam_effnetlite0", [f"data.root={data}",
                                                  f"run_dir={tmp_path / 'run'}", *TINY,
                                                  "refine.splits=[train]"])
    metrics = run_pipeline(cfg, until="refine", log=lambda _: None)
    assert len(list((tmp_path / "run/pseudo/train").glob("*.png"))) == 10
    assert metrics["pseudo"]["train"]["miou"] is None
    assert "none of its 10 images has a mask" in metrics["pseudo"]["train"]["reason"]
    # Train has no masks, so the threshold was tuned on half of val's 6 and val's seeds are
    # scored on the other 3.
    assert metrics["seeds"]["tuning"]["how"] == "held-out sweep"
    assert metrics["seeds"]["val"]["images"] == 3


def test_scoring_without_a_mask_folder_is_a_clear_error(tmp_path):
    """The 'None' path: scoring against no mask folder used to look for '<cwd>/None/<id>.png'."""
    from plda.evaluation.evaluate import evaluate_cams, evaluate_labels

    with pytest.raises(DataError, match="no ground-truth mask folder to score against"):
        evaluate_cams(tmp_path, None, ["a"], ["background", "cat"], [0.3])
    with pytest.raises(DataError, match="no ground-truth mask folder to score against"):
        evaluate_labels(tmp_path, None, ["a"], ["background", "cat"])


def test_eval_reads_the_datasets_class_list(tmp_path, capsys):
    root = tmp_path / "data"
    gt = root / "SegmentationClass"
    gt.mkdir(parents=True)
    (root / "classes.txt").write_text("cat\ndog\n")
    mask = np.zeros((8, 8), np.uint8)
    mask[:4] = 2
    save_label_png(gt / "a.png", mask)
    save_label_png(tmp_path / "a.png", mask)
    assert main(["eval", "--pred", str(tmp_path), "--gt", str(gt)]) == 0
    out = capsys.readouterr().out
    assert f"classes: 2 + background, from {root / 'classes.txt'}" in out
    assert "dog" in out and "aeroplane" not in out


# ---- the label-free threshold ------------------------------------------------------------

def _histogram(values: np.ndarray) -> np.ndarray:
    from plda.inference.thresholds import BINS

    return np.bincount(np.clip((values * BINS).astype(int), 0, BINS - 1), minlength=BINS)


def test_label_free_rules_split_a_two_mode_distribution():
    from plda.inference.thresholds import check_rule, rule_threshold

    rng = np.random.default_rng(0)
    background = rng.uniform(0.0, 0.2, 80_000)
    objects = rng.uniform(0.6, 1.0, 20_000)
    hist = _histogram(np.concatenate([background, objects]))
    for rule in ("otsu", "soft_miou"):
        assert 0.2 <= rule_threshold(hist, rule) <= 0.6, rule
    assert rule_threshold(hist, "fixed:0.26") == 0.26
    # Otsu's split moves with the modes; the expected-IoU rule prefers the larger class's side.
    shifted = _histogram(np.concatenate([background + 0.2, np.minimum(objects + 0.2, 1)]))
    assert rule_threshold(shifted, "otsu") > rule_threshold(hist, "otsu")
    for bad in ("median", "fixed:1.5", "fixed:x"):
        with pytest.raises(Exception, match="label-free threshold rule"):
            check_rule(bad)


def test_label_free_threshold_reads_the_cam_files(tmp_path):
    """The histogram pools every image's per-pixel highest CAM (0 where an image has no class)."""
    from plda.data.camfile import save_cams
    from plda.inference.thresholds import cam_histogram

    cams = np.zeros((2, 4, 5), np.float32)
    cams[0, :2] = 0.875  # exact in the files' float16
    cams[1, 3] = 0.4375
    save_cams(tmp_path / "a.npz", cams, [1, 2], 2, (4, 5))
    save_cams(tmp_path / "b.npz", np.zeros((0, 3, 3), np.float32), [], 2, (3, 3))
    hist = cam_histogram(tmp_path, ["a", "b"], num_workers=0)
    assert hist.sum() == 20 + 9
    assert hist[0] == 5 + 9 and hist[875] == 10 and hist[437] == 5


# ---- what a user reads -------------------------------------------------------------------

def test_palette_for_the_datasets_classes():
    from plda.data.labels import palette_for, voc_palette

    voc = ["background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
           "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
           "sheep", "sofa", "train", "tvmonitor"]
    assert np.array_equal(palette_for(voc), voc_palette(256))
    for n in (4, 15, 40):
        pal = palette_for(["background", *(f"c{k}" for k in range(n))])
        colours = {tuple(c) for c in pal[1:n + 1]}
        assert len(colours) == n and tuple(pal[0]) == (0, 0, 0)  # distinct, background black
        assert (0, 0, 0) not in colours


def test_overlay_legend_names_the_classes_present():
    from plda.cli.predict import legend_entries
    from plda.vis.overlay import with_legend
    from plda.data.labels import palette_for

    names = ["background", "cat", "dog", "horse"]
    pal = palette_for(names)
    labels = np.zeros((40, 200), np.uint8)
    labels[5:20, 5:50] = 3
    labels[0, 0] = 255
    entries = legend_entries(labels, names, pal)
    assert entries == [("horse", tuple(int(c) for c in pal[3]))]
    image = np.full((40, 200, 3), 128, np.uint8)
    out = with_legend(image, entries)
    assert out.shape[0] > 40 and np.array_equal(out[:40], image)
    strip = out[40:].reshape(-1, 3)
    assert (strip == np.asarray(pal[3])).all(axis=1).sum() >= 25  # the chip is drawn
    assert with_legend(image, []) is image


@pytest.mark.slow
def test_timings_are_those_of_the_run_that_made_the_outputs(tmp_path):
    """A re-run records each stage's time as it ends, and drops the time of a stage whose old
    outputs it removed: the report used to show the previous run's timings."""
    from plda.config import load_run_config
    from plda.pipeline.run import run_pipeline, read_stage_records
    from plda.report import write_report
    from plda.report.page import _fmt_seconds

    tiny = ["data.synth.n_train=8", "data.synth.n_val=4", "data.synth.size=64",
            "data.synth.num_classes=3", *TINY]
    run = tmp_path / "run"
    cfg = load_run_config("synth_cam", [*tiny, f"run_dir={run}"])
    first = run_pipeline(cfg, until="seeds", log=lambda _: None)["pipeline"]
    changed = load_run_config("synth_cam", [*tiny, f"run_dir={run}", "cam.flip=false"])
    second = run_pipeline(changed, start="cam", until="seeds", log=lambda _: None)["pipeline"]
    records = read_stage_records(run)
    assert second["train"] == first["train"]  # not re-run: its time stays
    for stage in ("cam", "seeds"):
        assert second[stage] == records[stage]["seconds"]
    assert list(second) == ["data", "train", "cam", "seeds"]  # in stage order
    html = write_report(run).read_text()
    assert f"pipeline: cam</th><td>{_fmt_seconds(second['cam'])}" in html


@pytest.mark.slow
def test_a_split_with_one_mask_missing_is_scored_on_the_rest(tmp_path):
    """One training image without its mask: the seeds stage used to stop with 'ground-truth
    mask not found' after its work; now the sweep and the scores use the other images."""
    from plda.config import load_run_config
    from plda.pipeline.run import run_pipeline

    tiny = ["data.synth.n_train=8", "data.synth.n_val=4", "data.synth.size=64",
            "data.synth.num_classes=3", *TINY]
    run = tmp_path / "run"
    cfg = load_run_config("synth_cam", [*tiny, f"run_dir={run}"])
    run_pipeline(cfg, until="cam", log=lambda _: None)
    layout = DatasetLayout(run / "data")
    gone = layout.ids("train")[0]
    layout.mask_path(gone).unlink()
    metrics = run_pipeline(cfg, start="seeds", until="seeds", log=lambda _: None)
    seeds = metrics["seeds"]
    assert seeds["train"]["images"] == 7 and seeds["train"]["images_total"] == 8
    assert seeds["val"]["images"] == 4 and seeds["sweep"]["images"] == 7
    assert seeds["tuning"] == {"how": "sweep", "split": "train", "images": 7,
                               "images_in_split": 8}
    assert len(list((run / "seeds" / "train").glob("*.png"))) == 8  # every seed is written
