"""Part / body coverage of seeds (plda.evaluation.parts) and its columns in the seed spread."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from plda.errors import DataError
from plda.evaluation.parts import coverage_counts, part_body_coverage
from plda.data.labels import label_to_image

from benchmarks import seed_spread


def test_counts_on_hand_made_maps():
    gt = np.zeros((4, 6), np.uint8)
    gt[:, :3] = 1          # object of class 1: 12 px
    gt[:2, 3:] = 2         # object of class 2: 6 px
    gt[3, 5] = 255         # ignore label
    parts = np.zeros_like(gt)
    parts[:2, :2] = 1      # part of 1: 4 px, body 8 px
    parts[0, 3] = 2        # part of 2: 1 px, body 5 px
    pred = np.zeros_like(gt)
    pred[:2, :2] = 1       # the whole part of 1
    pred[2, 0] = 1         # one body pixel of 1
    pred[2, 1] = 2         # a pixel of 1's body called 2: no coverage for either
    pred[0, 4:] = 2        # two body pixels of 2, not its part
    counts = coverage_counts(pred, gt, parts, 3)
    assert counts.tolist() == [[0, 0, 0, 0], [4, 4, 8, 1], [1, 0, 5, 2]]
    with pytest.raises(DataError, match="shapes differ"):
        coverage_counts(pred[:3], gt, parts, 3)


def _write(folder: Path, image_id: str, label: np.ndarray) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    label_to_image(label).save(folder / f"{image_id}.png")


def test_coverage_over_files_pools_pixels(tmp_path):
    gt = np.zeros((8, 8), np.uint8)
    gt[1:7, 1:7] = 1                       # 36 px
    parts = np.zeros_like(gt)
    parts[2:4, 2:4] = 1                    # 4 px part, 32 px body
    a, b = gt.copy(), np.where(parts == 1, 1, 0).astype(np.uint8)  # all / part only
    for image_id, pred in (("a", a), ("b", b)):
        _write(tmp_path / "gt", image_id, gt)
        _write(tmp_path / "parts", image_id, parts)
        _write(tmp_path / "pred", image_id, pred)
    cov = part_body_coverage(tmp_path / "pred", tmp_path / "gt", tmp_path / "parts", ["a", "b"],
                             ["background", "thing", "other"])
    assert cov["part"] == pytest.approx(100.0)
    assert cov["body"] == pytest.approx(50.0)   # 32 of 64 body pixels
    assert cov["per_class"]["other"] == {"part": None, "body": None}
    assert cov["images"] == 2
    with pytest.raises(DataError, match="part masks folder not found"):
        part_body_coverage(tmp_path / "pred", tmp_path / "gt", tmp_path / "nope", ["a"],
                           ["background", "thing"])
    _write(tmp_path / "gt", "c", gt)
    _write(tmp_path / "parts", "c", parts)
    with pytest.raises(DataError, match=r"prediction not found: .*c\.png"):
        part_body_coverage(tmp_path / "pred", tmp_path / "gt", tmp_path / "parts", ["c"],
                           ["background", "thing"])


def test_seed_spread_reports_part_and_body_on_synthetic_runs(tmp_path):
    from plda.config import load_run_config
    from plda.config.loader import save_config
    from plda.data.synth import generate_synthetic
    from plda.data.labels import load_label_png

    run = tmp_path / "run"
    cfg = load_run_config("synth_cam", [f"run_dir={run}", "data.synth.n_train=6",
                                        "data.synth.n_val=4", "data.synth.size=64"])
    run.mkdir()
    save_config(cfg, run / "config.yaml")
    data = run / "data"
    generate_synthetic(data, n_train=6, n_val=4, size=64, num_classes=cfg.data.synth.num_classes)
    # seeds = the parts only: every part covered, no body pixel
    for split in ("train", "val"):
        for image_id in (data / "ImageSets/Segmentation" / f"{split}.txt").read_text().split():
            _write(run / "seeds" / split, image_id,
                   load_label_png(data / "SegmentationParts" / f"{image_id}.png"))
    split_scores = {"miou": 40.0, "iou": {"background": 80.0}, "images": 4}
    (run / "metrics.json").write_text(json.dumps({"seeds": {
        "bg_threshold": 0.3, "train": split_scores, "val": split_scores}}))
    row = seed_spread.run_row(run)
    assert row["val_part"] == pytest.approx(100.0) and row["train_part"] == pytest.approx(100.0)
    assert row["val_body"] == pytest.approx(0.0)
    summary = seed_spread.summarize([row])
    assert summary["methods"]["cam"]["val_body"]["mean"] == pytest.approx(0.0)
