"""Every image and mask a run uses is checked before training: all problems at once, in one
message, nothing trained; a clean re-run is instant (remembered in the run folder)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from plda.cli.main import main
from plda.data.check import CHECK_FILE, check_dataset
from plda.data.layout import DatasetLayout
from plda.errors import DataError
from plda.data.labels import save_label_png

from test_bad_input import IDS, make_dataset

pytestmark = pytest.mark.usefixtures("one_thread")

TRAIN = ["model.pretrained=null", "data.crop=16", "data.resize_long=[16,24]",
         "train.epochs=1", "train.batch_size=2", "train.num_workers=0", "cam.scales=[1.0]"]


def _break(ds):
    """A truncated image, a mask of the wrong size and one with a value out of range."""
    jpg = ds / "JPEGImages" / "img1.jpg"
    jpg.write_bytes(jpg.read_bytes()[:200])
    save_label_png(ds / "SegmentationClassAug" / "img2.png", np.zeros((5, 5), np.uint8))
    save_label_png(ds / "SegmentationClassAug" / "img3.png", np.full((20, 24), 9, np.uint8))


def test_all_problems_are_listed_together_before_training(tmp_path, capsys):
    ds = make_dataset(tmp_path / "ds")
    _break(ds)
    run = tmp_path / "run"
    status = main(["train", "synth_cam", f"data.root={ds}", f"run_dir={run}", *TRAIN])
    err = capsys.readouterr().err
    assert status == 2 and "Traceback" not in err
    assert "3 of 4 images" in err and "nothing was trained" in err
    assert "img1.jpg" in err  # unreadable
    assert "img2.png: mask size 5x5" in err  # wrong size
    assert "img3.png: label values [9] out of range" in err  # value out of range
    assert not (run / "checkpoints").exists() and not (run / "stage1.safetensors").exists()


def test_a_clean_recheck_is_remembered_and_a_changed_file_is_checked_again(tmp_path,
                                                                          monkeypatch):
    ds = make_dataset(tmp_path / "ds")
    layout = DatasetLayout(ds)
    first = check_dataset(layout, ["train", "val"], cache_dir=tmp_path, workers=0)
    assert first == {"checked": len(IDS), "cached": 0}
    assert set(json.loads((tmp_path / CHECK_FILE).read_text())["ok"]) == set(IDS)
    import plda.data.check as check

    calls = []
    real = check._check_one
    monkeypatch.setattr(check, "_check_one", lambda root, i: calls.append(i) or real(root, i))
    assert check_dataset(layout, ["train"], cache_dir=tmp_path, workers=0) == {
        "checked": 0, "cached": len(IDS)}
    assert calls == []
    # A file changed since: checked again, and its problem found.
    Image.fromarray(np.zeros((7, 7, 3), np.uint8)).save(ds / "JPEGImages" / "img0.jpg")
    with pytest.raises(DataError, match=r"(?s)1 of 4 images.*img0.png: mask size 20x24"):
        check_dataset(layout, ["train"], cache_dir=tmp_path, workers=0)
    assert calls == ["img0"]


def test_parallel_and_serial_checks_agree(tmp_path):
    ds = make_dataset(tmp_path / "ds")
    _break(ds)
    messages = []
    for workers in (0, 2):
        with pytest.raises(DataError) as info:
            check_dataset(DatasetLayout(ds), ["train"], workers=workers)
        messages.append(str(info.value))
    assert messages[0] == messages[1]
