"""benchmarks/plda_verdict.py: the paired summary of finished runs, and what a job runs."""

from __future__ import annotations

import json
import sys
from argparse import Namespace
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import plda_verdict  # noqa: E402

sys.path.pop(0)


def _write(out: Path, arm: str, method: str, seed: int, val13: float, train13: float,
           iou_cat: float) -> None:
    run = out / arm / f"seed{seed}" / method
    run.mkdir(parents=True)
    purity = {k: 10.0 * (seed + 1) for k in plda_verdict.PURITY_KEYS}
    row = {"arm": arm, "method": method, "seed": seed, "val_miou_13": val13,
           "val_miou_present": val13 - 1, "train_miou_13": train13,
           "train_miou_present": train13 - 1, "val_iou": {"cat": iou_cat, "dog": 20.0},
           "classification": {"val": {"map": 50.0 + seed}}, "minutes": 3.0,
           "domains": {"purity": purity}, "commit": "abc1234"}
    (run / plda_verdict.RESULT).write_text(json.dumps(row))


def test_summary_pairs_seeds_and_reports_the_difference(tmp_path):
    for seed, (base, plda) in enumerate([(20.0, 23.0), (22.0, 21.0), (18.0, 22.0)]):
        _write(tmp_path, "scratch", "cam", seed, base, base + 1, 30.0)
        _write(tmp_path, "scratch", "cam_plda", seed, plda, plda + 1, 30.0 + seed)
    _write(tmp_path, "scratch", "seam", 0, 10.0, 11.0, 5.0)  # no partner: not compared
    comparisons = plda_verdict.summarise(tmp_path)
    assert len(comparisons) == 1
    c = comparisons[0]
    assert (c["arm"], c["baseline"], c["variant"], c["seeds"]) == ("scratch", "cam", "cam_plda",
                                                                   [0, 1, 2])
    val = c["scores"]["val_miou_13"]
    assert val["diff"] == [3.0, -1.0, 4.0] and val["plda_higher"] == 2
    assert c["val_class_diff"] == {"cat": pytest.approx(1.0), "dog": 0.0}
    assert c["plda_purity"]["S in c"] == pytest.approx(20.0)
    text = (tmp_path / "summary.md").read_text()
    assert "| scratch | cam → cam_plda | 0,1,2 | 20.0 ± 2.0 | 22.0 ± 1.0 | 2.0 ± 2.6 (2 of 3)" \
        in text
    assert json.loads((tmp_path / "summary.json").read_text())["comparisons"][0]["seeds"] == \
        [0, 1, 2]


def test_continue_jobs_start_from_the_scratch_baseline_of_the_same_seed(tmp_path):
    args = Namespace(out=tmp_path, epochs=4, continue_epochs=2, amp="bf16")
    method, overrides = plda_verdict.job_overrides("continue", "seam_plda", 1, args)
    assert method == "seam_plda"
    assert f"model.init_from={tmp_path / 'scratch' / 'seed1' / 'seam'}" in overrides
    assert "train.epochs=2" in overrides and "train.seed=1" in overrides
    _, same = plda_verdict.job_overrides("continue", "cam", 2, args)
    assert f"model.init_from={tmp_path / 'scratch' / 'seed2' / 'cam'}" in same
    _, scratch = plda_verdict.job_overrides("scratch", "cam_plda", 0, args)
    assert "train.epochs=4" in scratch and not any("init_from" in o for o in scratch)


def test_a_finished_run_is_not_run_again_and_a_continue_job_waits(tmp_path):
    _write(tmp_path, "scratch", "cam", 0, 20.0, 21.0, 30.0)
    args = Namespace(out=tmp_path, epochs=4, continue_epochs=2, amp="bf16", data=tmp_path,
                     overrides=[], domain_images=0)
    assert plda_verdict.run_job("scratch", "cam", 0, args)["val_miou_13"] == 20.0
    # Its scratch baseline has no weights: the continue job does not start.
    assert plda_verdict.run_job("continue", "cam_plda", 0, args) == {}
    assert not (tmp_path / "continue").exists()
