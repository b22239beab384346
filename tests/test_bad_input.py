"""Bad input at every user entry point: one clear error naming the file, key or value.

Two tables: ``CLI_CASES`` drive ``plda <command>`` end to end (exit status 2, the message on
stderr, no traceback) and ``API_CASES`` the Python functions behind the commands. Each case
builds a tiny broken copy of a 4-image, 3-class dataset (20x24 px); the cases that need a
trained model share one run trained for a single step. ``plda eval --skip-bad`` is tested at the
end: the bad pairs are skipped, counted and listed, and the score equals the clean subset's.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from PIL import Image

from plda.cli.main import main
from plda.errors import ConfigError, DataError, WeightsError
from plda.data.labels import save_label_png

CLASSES = ("a", "b", "c")
IDS = ("img0", "img1", "img2", "img3")
SIZE = (20, 24)  # H, W
EVIL = "../../etc/passwd"


def make_dataset(root: Path, size: tuple[int, int] = SIZE, seed: int = 0) -> Path:
    """4 noise images, a square object each (class 1 + i % 3), labels json, train/val lists."""
    rng = np.random.default_rng(seed)
    for sub in ("JPEGImages", "SegmentationClassAug", "ImageSets/Segmentation"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    (root / "classes.txt").write_text("".join(f"{c}\n" for c in CLASSES))
    labels = {}
    for i, image_id in enumerate(IDS):
        Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(
            root / "JPEGImages" / f"{image_id}.jpg", quality=90)
        mask = np.zeros(size, np.uint8)
        mask[2:9, 3:11] = 1 + i % 3
        save_label_png(root / "SegmentationClassAug" / f"{image_id}.png", mask)
        labels[image_id] = [CLASSES[i % 3]]
    (root / "image_labels.json").write_text(json.dumps(labels))
    for split in ("train", "val"):
        (root / "ImageSets/Segmentation" / f"{split}.txt").write_text("\n".join(IDS) + "\n")
    return root


# ---- ways to break a dataset (each names the file it breaks in the expected message) ----------

def truncate_jpeg(ds: Path) -> None:
    path = ds / "JPEGImages/img1.jpg"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def corrupt_png(ds: Path) -> None:
    (ds / "SegmentationClassAug/img1.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00garbage")


def mask_value_37(ds: Path) -> None:
    mask = np.zeros(SIZE, np.uint8)
    mask[0, 0] = 37
    save_label_png(ds / "SegmentationClassAug/img1.png", mask)


def mask_size_mismatch(ds: Path) -> None:
    save_label_png(ds / "SegmentationClassAug/img1.png", np.zeros((10, SIZE[1]), np.uint8))


def no_image(ds: Path) -> None:
    (ds / "JPEGImages/img1.jpg").unlink()


def no_mask(ds: Path) -> None:
    (ds / "SegmentationClassAug/img1.png").unlink()


def no_list(ds: Path) -> None:
    (ds / "ImageSets/Segmentation/train.txt").unlink()


def evil_id(ds: Path) -> None:
    (ds / "ImageSets/Segmentation/train.txt").write_text(f"img0\n{EVIL}\n")


def unknown_class(ds: Path) -> None:
    table = json.loads((ds / "image_labels.json").read_text())
    table["img1"] = ["zebra"]
    (ds / "image_labels.json").write_text(json.dumps(table))


def empty_labels(ds: Path) -> None:
    table = json.loads((ds / "image_labels.json").read_text())
    table["img1"] = []
    (ds / "image_labels.json").write_text(json.dumps(table))


def five_classes(ds: Path) -> None:
    """Another dataset: the same ids, 5 classes (CAMs/weights of the 3-class run do not fit)."""
    (ds / "classes.txt").write_text("a\nb\nc\nd\ne\n")


def two_ids_train(ds: Path) -> None:
    """train.txt = img0, img1 so that one batch of 2 decodes img1."""
    (ds / "ImageSets/Segmentation/train.txt").write_text("img0\nimg1\n")


def both(*fns: Callable[[Path], None]) -> Callable[[Path], None]:
    def apply(ds: Path) -> None:
        for fn in fns:
            fn(ds)
    return apply


# ---- shared trained run -------------------------------------------------------------------------

@dataclass
class Ctx:
    tmp: Path
    ds: Path       # the (broken) dataset of this case
    clean: Path    # an intact copy of the dataset
    run: Path      # this case's run folder (a copy of the trained run where the case needs it)
    files: Path    # the shared files folder (weights of another architecture, ...)

    def fmt(self, text: str) -> str:
        return text.format(ds=self.ds, clean=self.clean, run=self.run, tmp=self.tmp,
                           files=self.files)


def overrides(c: Ctx, data_root: Path | str | None = None) -> list[str]:
    return [f"data.root={data_root or c.ds}", f"run_dir={c.run}", "method.name=cam",
            "model.pretrained=null", "model.output_stride=16", "data.crop=16",
            "data.resize_long=[16,24]", "train.epochs=null", "train.iterations=1",
            "train.batch_size=2", "train.num_workers=0", "train.vis_every=0",
            "train.checkpoint_every=1", "cam.scales=[1.0]", "cam.flip=false",
            "data.eval_splits=[train]", "data.train_split=train"]


@pytest.fixture(scope="module")
def shared(tmp_path_factory) -> Path:
    """``clean/`` dataset, ``run/`` trained one step with CAMs of train, foreign files."""
    base = tmp_path_factory.mktemp("shared")
    make_dataset(base / "clean")
    c = Ctx(base, base / "clean", base / "clean", base / "run", base)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(["train", *overrides(c)]) == 0
        assert main(["cam", *overrides(c)]) == 0
    finally:
        torch.set_num_threads(threads)
    from torchvision.models import resnet18

    from plda.weights.io import save_state_dict_file
    from plda.weights.mxnet import write_params

    save_state_dict_file(base / "resnet18.safetensors", resnet18().state_dict())
    (base / "garbage.pth").write_bytes(b"\x80garbage")
    write_params(base / "foreign.params", {"arg:fc_weight": np.zeros((4, 3), np.float32)})
    good = base / "good.params"
    write_params(good, {"arg:w": np.arange(64, dtype=np.float32)})
    (base / "truncated.params").write_bytes(good.read_bytes()[:-40])
    torch.save({"model": {"w": torch.ones(1)}, "payload": _Marker(base / "PWNED")},
               base / "evil.pth")
    return base


@dataclass
class Case:
    name: str
    argv: Callable[[Ctx], list[str]]
    expect: tuple[str, ...]
    mutate: Callable[[Path], None] | None = None
    run: str = "new"  # "new": an empty run folder; "trained": weights only; "cams": with CAMs
    setup: Callable[[Ctx], None] | None = None  # after the run folder is in place


def _eval(c: Ctx, *extra: str) -> list[str]:
    return ["eval", "--gt", str(c.ds / "SegmentationClassAug"), "--classes",
            str(c.ds / "classes.txt"), "--workers", "0", *extra]


def _pred(c: Ctx) -> list[str]:
    return ["--pred", str(c.clean / "SegmentationClassAug")]


def _cams(c: Ctx) -> list[str]:
    return ["--cams", str(c.run / "cams/train"), "--bg-threshold", "0.3"]


CLI_CASES = [
    # ---- plda train
    Case("train-missing-dataset", lambda c: ["train", *overrides(c, c.tmp / "nope")],
         ("{tmp}/nope", "not a folder")),
    Case("train-missing-list", lambda c: ["train", *overrides(c)],
         ("{ds}/ImageSets/Segmentation/train.txt", "not found"), no_list),
    Case("train-id-without-image", lambda c: ["train", *overrides(c)],
         ("1 of 4 images of {ds} cannot be used", "img1: image 'img1' not found: expected "
          "{ds}/JPEGImages/img1"), no_image),
    Case("train-truncated-jpeg", lambda c: ["train", *overrides(c)],
         ("cannot read image {ds}/JPEGImages/img1.jpg",), both(two_ids_train, truncate_jpeg)),
    Case("train-unknown-class", lambda c: ["train", *overrides(c)],
         ("{ds}/image_labels.json", "'img1'", "unknown class 'zebra'", "valid classes: a, b, c"),
         unknown_class),
    Case("train-escaping-id", lambda c: ["train", *overrides(c)],
         (f"invalid image id '{EVIL}'", "{ds}/ImageSets/Segmentation/train.txt:2"), evil_id),
    Case("train-unknown-config-key", lambda c: ["train", *overrides(c), "train.lrr=0.1"],
         ("unknown config key 'train.lrr'", "did you mean 'lr'")),
    Case("train-wrong-config-type", lambda c: ["train", *overrides(c), "train.batch_size=eight"],
         ("config key 'train.batch_size'", "expected int", "'eight'")),
    Case("train-pretrained-of-another-arch",
         lambda c: ["train", *overrides(c), f"model.pretrained={c.files}/resnet18.safetensors"],
         ("{files}/resnet18.safetensors", "missing", "_conv_stem")),
    Case("train-resume-another-arch",
         lambda c: ["train", *overrides(c), "model.backbone=resnet50", "--resume"],
         ("{run}/checkpoints/step_00000001.pt", "does not fit the model being trained",
          "shape mismatch", "classifier.conv.weight (3, 1280, 1, 1) vs (3, 2048, 1, 1)"),
         run="trained"),
    Case("train-resume-malicious-checkpoint",
         lambda c: ["train", *overrides(c), "--resume"],
         ("{run}/checkpoints/step_00000002.pt", "refused"), run="trained",
         setup=lambda c: shutil.copy(c.files / "evil.pth", c.run / "checkpoints/step_00000002.pt")),
    # ---- plda cam
    Case("cam-truncated-jpeg", lambda c: ["cam", *overrides(c)],
         ("cannot read image {ds}/JPEGImages/img1.jpg",), truncate_jpeg, run="trained"),
    Case("cam-id-without-image", lambda c: ["cam", *overrides(c)],
         ("image 'img1' not found", "{ds}/JPEGImages/img1"), no_image, run="trained"),
    Case("cam-missing-list", lambda c: ["cam", *overrides(c)],
         ("{ds}/ImageSets/Segmentation/train.txt", "not found"), no_list, run="trained"),
    Case("cam-escaping-id", lambda c: ["cam", *overrides(c)],
         (f"invalid image id '{EVIL}'",), evil_id, run="trained"),
    Case("cam-weights-of-another-arch",
         lambda c: ["cam", *overrides(c), "--weights", f"{c.files}/resnet18.safetensors"],
         ("{files}/resnet18.safetensors", "do not fit the configured model", "missing"),
         run="trained"),
    Case("cam-weights-of-another-dataset", lambda c: ["cam", *overrides(c)],
         ("{run}/stage1.safetensors", "5 classes", "classifier.conv.weight (3, 1280, 1, 1) vs "
          "(5, 1280, 1, 1)"), five_classes, run="trained"),
    Case("cam-garbage-weights",
         lambda c: ["cam", *overrides(c), "--weights", f"{c.files}/garbage.pth"],
         ("{files}/garbage.pth", "not a readable torch checkpoint"), run="trained"),
    Case("cam-malicious-weights",
         lambda c: ["cam", *overrides(c), "--weights", f"{c.files}/evil.pth"],
         ("{files}/evil.pth", "arbitrary Python objects and was refused"), run="trained"),
    Case("cam-malicious-checkpoint", lambda c: ["cam", *overrides(c)],
         ("{run}/checkpoints/step_00000002.pt", "refused"), run="trained",
         setup=lambda c: (shutil.copy(c.files / "evil.pth",
                                      c.run / "checkpoints/step_00000002.pt"),
                          (c.run / "stage1.safetensors").unlink())),
    Case("cam-without-training", lambda c: ["cam", *overrides(c)],
         ("no trained stage-1 model in {run}", "plda train")),
    # ---- plda seeds (CAMs of the clean dataset, ground truth of the broken one)
    Case("seeds-corrupt-png", lambda c: ["seeds", *overrides(c), "--workers", "0"],
         ("{ds}/SegmentationClassAug/img1.png", "cannot read"), corrupt_png, run="cams"),
    Case("seeds-mask-value-37", lambda c: ["seeds", *overrides(c), "--workers", "0"],
         ("{ds}/SegmentationClassAug/img1.png", "values [37]", "0..3"), mask_value_37,
         run="cams"),
    Case("seeds-size-mismatch", lambda c: ["seeds", *overrides(c), "--workers", "0"],
         ("{run}/cams/train/img1.npz is 20x24", "{ds}/SegmentationClassAug/img1.png is 10x24"),
         mask_size_mismatch, run="cams"),
    Case("seeds-cams-of-another-dataset", lambda c: ["seeds", *overrides(c), "--workers", "0"],
         ("{run}/cams/train/img0.npz", "holds 3 foreground classes, expected 5"), five_classes,
         run="cams"),
    Case("seeds-without-cams", lambda c: ["seeds", *overrides(c), "--workers", "0"],
         ("CAM file not found: {run}/cams/train/img0.npz",)),
    # ---- plda refine crf
    Case("refine-missing-dataset",
         lambda c: ["refine", "crf", *overrides(c, c.tmp / "nope"), "cam.bg_threshold=0.3"],
         ("{tmp}/nope", "not a folder")),
    Case("refine-without-cams",
         lambda c: ["refine", "crf", *overrides(c), "cam.bg_threshold=0.3"],
         ("{run}/cams/train/img0.npz", "plda cam")),
    Case("refine-without-threshold", lambda c: ["refine", "crf", *overrides(c)],
         ("no background threshold", "cam.bg_threshold", "{run}/metrics.json")),
    Case("refine-mask-value-37",
         lambda c: ["refine", "crf", *overrides(c), "cam.bg_threshold=0.3", "--workers", "0"],
         ("{ds}/SegmentationClassAug/img1.png", "values [37]"), mask_value_37, run="cams"),
    # ---- plda eval
    Case("eval-missing-pred-folder",
         lambda c: _eval(c, "--pred", str(c.tmp / "nope")), ("folder not found: {tmp}/nope",)),
    Case("eval-missing-list", lambda c: _eval(c, *_pred(c), "--list", str(c.tmp / "no.txt")),
         ("image list {tmp}/no.txt not found",)),
    Case("eval-escaping-id",
         lambda c: _eval(c, *_pred(c), "--list", str(c.ds / "ImageSets/Segmentation/train.txt")),
         (f"invalid image id '{EVIL}'", "{ds}/ImageSets/Segmentation/train.txt:2"), evil_id),
    Case("eval-corrupt-png", lambda c: _eval(c, *_pred(c)),
         ("{ds}/SegmentationClassAug/img1.png", "cannot read"), corrupt_png),
    Case("eval-mask-value-37", lambda c: _eval(c, *_pred(c)),
         ("{ds}/SegmentationClassAug/img1.png", "values [37]"), mask_value_37),
    Case("eval-size-mismatch", lambda c: _eval(c, *_pred(c)),
         ("prediction {clean}/SegmentationClassAug/img1.png is 20x24",
          "ground truth {ds}/SegmentationClassAug/img1.png is 10x24"), mask_size_mismatch),
    Case("eval-id-without-mask", lambda c: _eval(c, *_pred(c)),
         ("ground-truth mask not found: {ds}/SegmentationClassAug/img1.png",), no_mask),
    Case("eval-cams-of-another-dataset", lambda c: _eval(c, *_cams(c)),
         ("{run}/cams/train/img0.npz", "holds 3 foreground classes, expected 5"), five_classes,
         run="cams"),
    Case("eval-cams-size-mismatch", lambda c: _eval(c, *_cams(c)),
         ("CAM file {run}/cams/train/img1.npz is 20x24", "{ds}/SegmentationClassAug/img1.png is "
          "10x24"), mask_size_mismatch, run="cams"),
    Case("eval-missing-classes-file",
         lambda c: ["eval", *_pred(c), "--gt", str(c.ds / "SegmentationClassAug"),
                    "--classes", str(c.tmp / "none.txt")],
         ("cannot read class list {tmp}/none.txt",)),
    Case("eval-threshold-for-labels", lambda c: _eval(c, *_pred(c), "--bg-threshold", "0.3"),
         ("--bg-threshold and --sweep apply to --cams only",)),
    # ---- plda prepare voc
    Case("prepare-voc-missing-root", lambda c: ["prepare", "voc", str(c.tmp / "nope")],
         ("{tmp}/nope/Annotations not found",)),
    Case("prepare-voc-unknown-class", lambda c: ["prepare", "voc", str(c.ds), "--no-train-aug"],
         ("{ds}/Annotations/img0.xml", "unknown class 'zebra'"),
         lambda ds: _write_xml(ds, "img0", "zebra")),
    Case("prepare-voc-malformed-xml", lambda c: ["prepare", "voc", str(c.ds), "--no-train-aug"],
         ("{ds}/Annotations/img0.xml", "malformed XML"),
         lambda ds: _write_xml(ds, "img0", "a", broken=True)),
    Case("prepare-voc-entity-bomb", lambda c: ["prepare", "voc", str(c.ds), "--no-train-aug"],
         ("{ds}/Annotations/img0.xml", "entity declarations are not allowed"),
         lambda ds: _write_xml(ds, "img0", "a", doctype=True)),
    # ---- plda config show
    Case("config-unknown-key", lambda c: ["config", "show", "synth_cam", "train.lrr=1"],
         ("unknown config key 'train.lrr'", "did you mean 'lr'", "synth_cam")),
    Case("config-wrong-type", lambda c: ["config", "show", "synth_cam", "train.lr=abc"],
         ("config key 'train.lr'", "expected float", "'abc'")),
    Case("config-unknown-key-in-file", lambda c: ["config", "show", str(c.tmp / "bad.yaml")],
         ("unknown config key 'modle'", "did you mean 'model'", "{tmp}/bad.yaml"),
         lambda ds: (ds.parent / "bad.yaml").write_text("extends: synth_cam\nmodle: {x: 1}\n")),
    Case("config-invalid-yaml", lambda c: ["config", "show", str(c.tmp / "bad.yaml")],
         ("{tmp}/bad.yaml", "invalid YAML"),
         lambda ds: (ds.parent / "bad.yaml").write_text("train: [unclosed\n")),
    Case("config-missing-preset", lambda c: ["config", "show", "no_such_preset"],
         ("config 'no_such_preset' not found", "built-in presets")),
    # ---- plda weights inspect
    Case("weights-missing-file", lambda c: ["weights", "inspect", str(c.tmp / "none.pth")],
         ("cannot read weights file {tmp}/none.pth",)),
    Case("weights-garbage-pth", lambda c: ["weights", "inspect", f"{c.files}/garbage.pth"],
         ("{files}/garbage.pth", "not a readable torch checkpoint")),
    Case("weights-malicious-pickle", lambda c: ["weights", "inspect", f"{c.files}/evil.pth"],
         ("{files}/evil.pth", "arbitrary Python objects and was refused")),
    Case("weights-truncated-params",
         lambda c: ["weights", "inspect", f"{c.files}/truncated.params"],
         ("{files}/truncated.params", "malformed MXNet .params file")),
    Case("weights-unknown-format", lambda c: ["weights", "inspect", str(c.ds / "classes.txt")],
         ("{ds}/classes.txt", "unrecognised weights file")),
    # ---- plda convert-weights
    Case("convert-missing-input",
         lambda c: ["convert-weights", "resnet38", str(c.tmp / "none.params"),
                    str(c.tmp / "out.safetensors")],
         ("cannot read MXNet .params file {tmp}/none.params",)),
    Case("convert-not-mxnet",
         lambda c: ["convert-weights", "resnet38", f"{c.files}/garbage.pth",
                    str(c.tmp / "out.safetensors")],
         ("{files}/garbage.pth", "malformed MXNet .params file")),
    Case("convert-another-architecture",
         lambda c: ["convert-weights", "resnet38", f"{c.files}/foreign.params",
                    str(c.tmp / "out.safetensors")],
         ("{files}/foreign.params", "fc_weight")),
    Case("convert-bad-output-format",
         lambda c: ["convert-weights", "resnet38", f"{c.files}/good.params",
                    str(c.tmp / "out.npz")],
         ("{tmp}/out.npz", "'safetensors' or 'pth'")),
]


def _write_xml(ds: Path, image_id: str, name: str, broken: bool = False,
               doctype: bool = False) -> None:
    ann = ds / "Annotations"
    ann.mkdir(exist_ok=True)
    for other in IDS:
        (ann / f"{other}.xml").write_text(
            "<annotation><object><name>a</name></object></annotation>")
    text = f"<annotation><object><name>{name}</name></object></annotation>"
    if broken:
        text = text[:-5]
    if doctype:
        text = ('<?xml version="1.0"?><!DOCTYPE a [<!ENTITY x "xxxxxxxx">]>'
                "<annotation><object><name>&x;</name></object></annotation>")
    (ann / f"{image_id}.xml").write_text(text)


def _context(tmp_path: Path, shared: Path, case_run: str,
             mutate: Callable[[Path], None] | None, setup=None) -> Ctx:
    ds = shutil.copytree(shared / "clean", tmp_path / "ds")
    if mutate is not None:
        mutate(ds)
    run = tmp_path / "run"
    if case_run != "new":
        ignore = shutil.ignore_patterns("cams") if case_run == "trained" else None
        shutil.copytree(shared / "run", run, ignore=ignore)
    c = Ctx(tmp_path, ds, shared / "clean", run, shared)
    if setup is not None:
        setup(c)
    return c


@pytest.mark.parametrize("case", CLI_CASES, ids=lambda case: case.name)
def test_cli_bad_input_is_one_clear_error(case, tmp_path, shared, capsys, one_thread):
    c = _context(tmp_path, shared, case.run, case.mutate, case.setup)
    argv = case.argv(c)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        status = main(argv)
    err = capsys.readouterr().err
    assert status == 2, err
    command = argv[0]
    lines = [line for line in err.splitlines() if line.startswith(f"plda {command}: error: ")]
    assert len(lines) == 1, err  # one error, not a cascade
    assert "Traceback" not in err
    for fragment in case.expect:
        assert c.fmt(fragment) in lines[0], (c.fmt(fragment), lines[0])
    assert not (shared / "PWNED").exists()  # no pickle payload ever ran


def test_every_command_of_the_brief_has_cases():
    commands = {case.argv(Ctx(*(Path("/x"),) * 5))[0] for case in CLI_CASES}
    assert {"train", "cam", "seeds", "eval", "prepare", "refine", "config", "weights",
            "convert-weights"} <= commands


# ---- the Python functions behind the commands -----------------------------------------------------

def _layout(ds):
    from plda.data.layout import DatasetLayout

    return DatasetLayout(ds)


def _classification(ds):
    from plda.data.datasets import ClassificationDataset

    return ClassificationDataset(ds, "train")


def _segmentation(ds, mask_dir=None):
    from plda.data.datasets import SegmentationDataset

    return SegmentationDataset(ds, "train", mask_dir=mask_dir)


def _pseudo_without_img1(ds: Path) -> None:
    shutil.copytree(ds / "SegmentationClassAug", ds / "pseudo")
    (ds / "pseudo/img1.png").unlink()


def _run_config(ds: Path, *extra: str):
    from plda.config import load_run_config

    return load_run_config("synth_cam", [f"data.root={ds}", f"run_dir={ds.parent / 'run'}",
                                         "model.pretrained=null", *extra])


def _write_evil_checkpoint(ds: Path) -> Path:
    from plda.engine.checkpoint import checkpoint_path

    path = checkpoint_path(ds.parent / "run" / "checkpoints", 1)
    path.parent.mkdir(parents=True)
    torch.save({"model": {}, "payload": _Marker(ds.parent / "PWNED")}, path)
    return path


class _Marker:
    """Unpickling this would create ``path``: the proof that code from a file ran."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def _quick_dataset(ds: Path):
    from benchmarks.voc12subset import _quick_dataset as quick
    return quick(ds, ds.parent / "quick", 2, 2)


API_CASES = [
    ("layout-missing-root", lambda ds: _layout(ds.parent / "nope"), DataError,
     ("{tmp}/nope", "not a folder"), None),
    ("layout-missing-list", lambda ds: _layout(ds).ids("train"), DataError,
     ("{ds}/ImageSets/Segmentation/train.txt not found",), no_list),
    ("layout-escaping-id", lambda ds: _layout(ds).ids("train"), DataError,
     (f"'{EVIL}'", "train.txt:2"), evil_id),
    ("layout-escaping-split", lambda ds: _layout(ds).ids("../../etc/passwd"), DataError,
     (f"'{EVIL}'", "split name"), None),
    ("layout-escaping-image-id", lambda ds: _layout(ds).load_image(EVIL), DataError,
     (f"'{EVIL}'",), None),
    ("layout-truncated-jpeg", lambda ds: _layout(ds).load_image("img1"), DataError,
     ("cannot read image {ds}/JPEGImages/img1.jpg",), truncate_jpeg),
    ("layout-corrupt-png", lambda ds: _layout(ds).load_mask("img1"), DataError,
     ("{ds}/SegmentationClassAug/img1.png",), corrupt_png),
    ("layout-mask-value-37", lambda ds: _layout(ds).load_mask("img1"), DataError,
     ("{ds}/SegmentationClassAug/img1.png", "[37]", "0..3 or 255"), mask_value_37),
    ("layout-size-mismatch", lambda ds: _layout(ds).load_mask("img1"), DataError,
     ("10x24", "{ds}/JPEGImages/img1.jpg size 20x24"), mask_size_mismatch),
    ("layout-unknown-class", lambda ds: _layout(ds).labels("img0"), DataError,
     ("{ds}/image_labels.json", "'zebra'"), unknown_class),
    ("dataset-id-without-image", _classification, DataError,
     ("1 ('img1') of the 4 ids have no image in {ds}/JPEGImages",), no_image),
    ("dataset-id-without-mask", _segmentation, DataError,
     ("1 ('img1') of the 4 ids have no mask <id>.png in {ds}/SegmentationClassAug",), no_mask),
    ("dataset-id-without-pseudo-mask", lambda ds: _segmentation(ds, ds / "pseudo"), DataError,
     ("1 ('img1')", "{ds}/pseudo"), _pseudo_without_img1),
    ("eval-list-escaping-id",
     lambda ds: __import__("plda.evaluation.evaluate", fromlist=["x"]).read_id_list(
         ds / "ImageSets/Segmentation/train.txt"), DataError, (f"'{EVIL}'",), evil_id),
    ("eval-escaping-id-argument",
     lambda ds: __import__("plda.evaluation.evaluate", fromlist=["x"]).evaluate_labels(
         ds, ds, [EVIL], ["background", *CLASSES]), DataError, (f"'{EVIL}'",), None),
    ("benchmark-quick-dataset-escaping-id", _quick_dataset, DataError, (f"'{EVIL}'",),
     both(evil_id, lambda ds: (ds / "ImageSets/Segmentation/val.txt").write_text(f"{EVIL}\n"))),
    ("config-unknown-key", lambda ds: _run_config(ds, "cam.scale=[1.0]"), ConfigError,
     ("'cam.scale'", "did you mean 'scales'"), None),
    ("config-wrong-type", lambda ds: _run_config(ds, "data.crop=big"), ConfigError,
     ("'data.crop'", "expected int"), None),
    ("resume-malicious-checkpoint",
     lambda ds: __import__("plda.engine.checkpoint", fromlist=["x"]).load_checkpoint(
         _write_evil_checkpoint(ds)), WeightsError, ("step_00000001.pt", "refused"), None),
    ("stage1-malicious-checkpoint",
     lambda ds: (_write_evil_checkpoint(ds),
                 __import__("plda.methods.build", fromlist=["x"]).load_stage1_model(
                     _run_config(ds), 3)),
     WeightsError, ("step_00000001.pt", "refused"), None),
]


@pytest.mark.parametrize("name,call,error,expect,mutate", API_CASES,
                         ids=[case[0] for case in API_CASES])
def test_api_bad_input_names_the_file(name, call, error, expect, mutate, tmp_path, shared,
                                      one_thread):
    c = _context(tmp_path, shared, "new", mutate)
    with pytest.raises(error) as info:
        call(c.ds)
    message = str(info.value)
    for fragment in expect:
        assert c.fmt(fragment) in message, (c.fmt(fragment), message)
    assert not (tmp_path / "PWNED").exists()


def test_cams_of_another_dataset_in_the_run_folder_are_redone(tmp_path, shared, one_thread):
    """Same ids, same classes, other images: the old CAM files must not be taken as done."""
    from plda.data.camfile import load_cams

    c = _context(tmp_path, shared, "cams", None)
    other = make_dataset(tmp_path / "other", size=(18, 30), seed=1)
    before = {i: load_cams(c.run / "cams/train" / f"{i}.npz").image_size for i in IDS}
    assert set(before.values()) == {SIZE}
    assert main(["cam", *overrides(c, other)]) == 0
    after = {i: load_cams(c.run / "cams/train" / f"{i}.npz").image_size for i in IDS}
    assert set(after.values()) == {(18, 30)}
    source = json.loads((c.run / "cams/train/source.json").read_text())
    assert source["data_root"] == str(other.resolve())


def test_empty_label_list_is_kept_with_a_counted_warning(tmp_path, shared):
    """Decision: an image labelled with no class is a background-only example, not an error
    (``plda prepare coco --keep-empty`` writes such images on purpose), but it is counted."""
    from plda.data.datasets import ClassificationDataset

    c = _context(tmp_path, shared, "new", empty_labels)
    with pytest.warns(UserWarning, match=r"1 \('img1'\) of the 4 images have an empty label list"):
        dataset = ClassificationDataset(c.ds, "train")
    assert len(dataset) == 4
    assert dataset[1]["label"].sum() == 0 and dataset[0]["label"].sum() == 1


# ---- plda eval --skip-bad ----------------------------------------------------------------------

def _break_several(ds: Path) -> None:
    corrupt_png(ds)
    save_label_png(ds / "SegmentationClassAug/img2.png", np.full(SIZE, 37, np.uint8))
    save_label_png(ds / "SegmentationClassAug/img3.png", np.zeros((10, SIZE[1]), np.uint8))


@pytest.mark.parametrize("source", ["pred", "cams"])
def test_eval_skip_bad_counts_lists_and_scores_the_rest(source, tmp_path, shared, capsys):
    c = _context(tmp_path, shared, "cams", _break_several)
    (c.tmp / "all.txt").write_text("\n".join(IDS) + "\n")
    (c.tmp / "good.txt").write_text("img0\n")
    if source == "pred":
        (c.tmp / "pred").mkdir()
        for i in IDS[:3]:  # img3's prediction is missing as well as its mask being wrong
            shutil.copy(c.clean / "SegmentationClassAug" / f"{i}.png", c.tmp / "pred")
        src = ["--pred", str(c.tmp / "pred")]
    else:
        src = _cams(c)
    every = [*src, "--list", str(c.tmp / "all.txt")]
    assert main(_eval(c, *every)) == 2  # without --skip-bad the first bad pair is an error
    capsys.readouterr()
    out_json = c.tmp / "result.json"
    assert main(_eval(c, *every, "--skip-bad", "--json", str(out_json))) == 0
    err = capsys.readouterr().err
    assert "skipped 3 of 4 images (--skip-bad)" in err
    result = json.loads(out_json.read_text())
    assert [s["id"] for s in result["skipped"]] == ["img1", "img2", "img3"]
    reasons = [s["reason"] for s in result["skipped"]]
    assert all(f"{i}: {r}" in err for i, r in zip(("img1", "img2", "img3"), reasons))
    assert "img1.png" in reasons[0] and "[37]" in reasons[1]
    assert ("prediction not found" if source == "pred" else "10x24") in reasons[2]
    assert result["images"] == 1
    # The score is that of the good image alone.
    good_json = c.tmp / "good.json"
    assert main(_eval(c, *src, "--list", str(c.tmp / "good.txt"), "--json", str(good_json))) == 0
    good = json.loads(good_json.read_text())
    assert "skipped" not in good
    assert result["miou"] == good["miou"] and result["iou"] == good["iou"]


def test_eval_skip_bad_with_every_image_bad_is_still_an_error(tmp_path, shared, capsys):
    c = _context(tmp_path, shared, "new", lambda ds: [
        save_label_png(ds / "SegmentationClassAug" / f"{i}.png", np.full(SIZE, 37, np.uint8))
        for i in IDS])
    assert main(_eval(c, *_pred(c), "--skip-bad")) == 2
    assert "all 4 images were skipped as bad" in capsys.readouterr().err


def test_skip_bad_in_worker_processes_matches_in_process(tmp_path, shared):
    from plda.evaluation.evaluate import evaluate_labels

    c = _context(tmp_path, shared, "new", _break_several)
    many = tmp_path / "many"
    for sub in ("pred", "gt"):
        (many / sub).mkdir(parents=True)
    names = ["background", *CLASSES]
    ids = []
    for k in range(40):  # past the pool threshold
        src = IDS[k % 4]
        shutil.copy(c.clean / "SegmentationClassAug" / f"{src}.png", many / "pred" / f"x{k}.png")
        shutil.copy(c.ds / "SegmentationClassAug" / f"{src}.png", many / "gt" / f"x{k}.png")
        ids.append(f"x{k}")
    serial = evaluate_labels(many / "pred", many / "gt", ids, names, num_workers=0, skip_bad=True)
    pooled = evaluate_labels(many / "pred", many / "gt", ids, names, num_workers=2, skip_bad=True)
    assert serial == pooled
    assert [s["id"] for s in serial["skipped"]] == [i for k, i in enumerate(ids) if k % 4]
    assert serial["images"] == 10
