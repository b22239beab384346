"""benchmarks/seed_spread.py: the run-to-run spread table over finished run folders."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from plda.config import load_run_config
from plda.config.loader import save_config

from benchmarks import seed_spread
from benchmarks.voc12subset import SUPPORTED


def _run(folder: Path, method: str, seed: int, val_13: float, train_13: float,
         threshold: float = 0.2) -> Path:
    """A finished run folder: its saved config and the seeds entry of metrics.json, with the 13
    supported classes at the given IoU, two rare classes far off it and one class absent."""
    cfg = load_run_config(f"synth_{method}", [f"run_dir={folder}", f"train.seed={seed}"])
    folder.mkdir(parents=True)
    save_config(cfg, folder / "config.yaml")

    def split(value: float) -> dict:
        iou = dict.fromkeys(SUPPORTED, value)
        iou.update(aeroplane=0.0, bus=100.0, train=None)
        present = [v for v in iou.values() if v is not None]
        return {"miou": sum(present) / len(present), "iou": iou, "images": 3}

    (folder / "metrics.json").write_text(json.dumps({"seeds": {
        "bg_threshold": threshold, "train": split(train_13), "val": split(val_13)}}))
    return folder


def test_spread_rows_stats_and_pairwise_wins(tmp_path, capsys):
    # two benchmark --out folders (seed 0 and 1) and one loose run folder (seed 2)
    for seed, (cam, seam) in enumerate([(20.0, 30.0), (26.0, 22.0)]):
        _run(tmp_path / f"seed{seed}" / "cam", "cam", seed, cam, cam + 1)
        _run(tmp_path / f"seed{seed}" / "seam", "seam", seed, seam, seam - 1)
    _run(tmp_path / "extra", "cam", 2, 23.0, 24.0, threshold=0.35)

    runs = seed_spread.run_folders([tmp_path / "seed0", tmp_path / "seed1", tmp_path / "extra"])
    assert [r.relative_to(tmp_path).as_posix() for r in runs] == [
        "seed0/cam", "seed0/seam", "seed1/cam", "seed1/seam", "extra"]
    rows = [seed_spread.run_row(r) for r in runs]
    extra = rows[-1]
    assert (extra["method"], extra["seed"], extra["threshold"]) == ("cam", 2, 0.35)
    assert extra["val_13"] == pytest.approx(23.0)  # the rare classes do not enter the 13
    assert extra["val"] == pytest.approx((13 * 23.0 + 100.0) / 15)  # absent class skipped
    assert extra["val_background"] == pytest.approx(23.0)

    summary = seed_spread.print_spread(rows)
    cam = summary["methods"]["cam"]["val_13"]
    assert (cam["n"], cam["min"], cam["max"]) == (3, 20.0, 26.0)
    assert cam["mean"] == pytest.approx(23.0)
    assert cam["sd"] == pytest.approx(3.0)  # sample sd of 20, 26, 23
    seam = summary["methods"]["seam"]["train_13"]
    assert seam["mean"] == pytest.approx(25.0) and seam["sd"] == pytest.approx(math.sqrt(32))
    # the pair is compared on the seeds both methods ran (0 and 1), not on cam's extra seed 2
    (pair,) = summary["pairs"]
    assert (pair["a"], pair["b"], pair["seeds"], pair["a_wins"]) == ("cam", "seam", [0, 1], 1)
    assert pair["mean_diff"] == pytest.approx(((20 - 30) + (26 - 22)) / 2)
    out = capsys.readouterr().out
    assert "cam > seam on 1 of 2 seeds [0, 1], mean difference -3.0" in out


def test_spread_single_run_has_no_sd_and_no_pairs(tmp_path):
    rows = [seed_spread.run_row(_run(tmp_path / "cam", "cam", 0, 21.0, 22.0))]
    summary = seed_spread.summarize(rows)
    assert summary["methods"]["cam"]["val_13"]["sd"] is None
    assert summary["pairs"] == []


def test_spread_names_a_folder_without_runs(tmp_path):
    (tmp_path / "empty" / "cam").mkdir(parents=True)
    with pytest.raises(SystemExit, match=r"empty: neither a run folder"):
        seed_spread.run_folders([tmp_path / "empty"])
    run = tmp_path / "unseeded"
    _run(run, "cam", 0, 21.0, 22.0)
    (run / "metrics.json").write_text(json.dumps({"train": {"steps": 3}}))
    with pytest.raises(SystemExit, match=r"unseeded/metrics.json: no seed scores"):
        seed_spread.run_row(run)


def test_voc12subset_rejects_bad_seed_lists():
    from benchmarks.voc12subset import _seed_list
    assert _seed_list("0,1, 2") == [0, 1, 2]
    for bad in ("0,x", "1,1", ","):
        with pytest.raises(SystemExit, match="--seeds"):
            _seed_list(bad)


def test_spread_on_other_class_names_compares_classes_present(tmp_path):
    runs = [_run(tmp_path / f"{m}{s}", m, s, 20.0 + s, 20.0) for m in ("cam", "seam")
            for s in (0, 1)]
    for run in runs[2:]:  # seam: a dataset without the VOC names, 50 % on every class
        metrics = json.loads((run / "metrics.json").read_text())
        for split in ("train", "val"):
            metrics["seeds"][split]["iou"] = {"background": 50.0, "disc": 50.0}
            metrics["seeds"][split]["miou"] = 50.0
        (run / "metrics.json").write_text(json.dumps(metrics))
    rows = [seed_spread.run_row(r) for r in runs]
    assert [r["val_13"] is None for r in rows] == [False, False, True, True]
    summary = seed_spread.summarize(rows)
    assert "val_13" not in summary["methods"]["seam"]
    assert summary["pair_score"] == "val"
    (pair,) = summary["pairs"]
    assert pair["a_wins"] == 0 and pair["mean_diff"] < 0  # cam's val is (13x20+100)/15 < 50
