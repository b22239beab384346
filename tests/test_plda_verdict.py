"""benchmarks.plda_verdict (benchmarks/verdict/): the paired summary of finished runs, and what
a job runs."""

from __future__ import annotations

import json
import sys
from argparse import Namespace
from pathlib import Path

import pytest

from benchmarks.verdict import budget, jobs, parallel, seedmaps, summary


def _write(out: Path, arm: str, method: str, seed: int, val13: float, train13: float,
           iou_cat: float) -> None:
    run = out / arm / f"seed{seed}" / method
    run.mkdir(parents=True)
    purity = {k: 10.0 * (seed + 1) for k in summary.PURITY_KEYS}
    row = {"arm": arm, "method": method, "seed": seed, "val_miou_13": val13,
           "val_miou_present": val13 - 1, "train_miou_13": train13,
           "train_miou_present": train13 - 1, "val_iou": {"cat": iou_cat, "dog": 20.0, "train": None},
           "classification": {"val": {"map": 50.0 + seed}}, "minutes": 3.0,
           "domains": {"purity": purity}, "commit": "abc1234"}
    (run / seedmaps.RESULT).write_text(json.dumps(row))


def test_summary_pairs_seeds_and_reports_the_difference(tmp_path):
    for seed, (base, plda) in enumerate([(20.0, 23.0), (22.0, 21.0), (18.0, 22.0)]):
        _write(tmp_path, "scratch", "cam", seed, base, base + 1, 30.0)
        _write(tmp_path, "scratch", "cam_plda", seed, plda, plda + 1, 30.0 + seed)
    _write(tmp_path, "scratch", "seam", 0, 10.0, 11.0, 5.0)  # no partner: not compared
    comparisons = summary.summarise(tmp_path)
    assert len(comparisons) == 1
    c = comparisons[0]
    assert (c["arm"], c["baseline"], c["variant"], c["seeds"]) == ("scratch", "cam", "cam_plda",
                                                                   [0, 1, 2])
    val = c["scores"]["val_miou_13"]
    assert val["diff"] == [3.0, -1.0, 4.0] and val["plda_higher"] == 2
    assert c["val_class_diff"] == {"cat": pytest.approx(1.0), "dog": 0.0, "train": None}
    assert c["plda_purity"]["S in c"] == pytest.approx(20.0)
    text = (tmp_path / "summary.md").read_text()
    assert "| scratch | cam → cam_plda | 0,1,2 | 20.0 ± 2.0 | 22.0 ± 1.0 | 2.0 ± 2.6 (2 of 3)" \
        in text
    assert "| +3.0 / -1.0 / +4.0 |" in text  # the paired difference of each seed
    assert "| scratch | cam → cam_plda | +1.0 | +0.0 |" in text  # per class: cat, dog
    assert json.loads((tmp_path / "summary.json").read_text())["comparisons"][0]["seeds"] == \
        [0, 1, 2]


def test_continue_jobs_start_from_the_scratch_baseline_of_the_same_seed(tmp_path):
    args = Namespace(out=tmp_path, epochs=4, continue_epochs=2, amp="bf16")
    method, overrides = jobs.job_overrides("continue", "seam_plda", 1, args)
    assert method == "seam_plda"
    assert f"model.init_from={tmp_path / 'scratch' / 'seed1' / 'seam'}" in overrides
    assert "train.epochs=2" in overrides and "train.seed=1" in overrides
    _, same = jobs.job_overrides("continue", "cam", 2, args)
    assert f"model.init_from={tmp_path / 'scratch' / 'seed2' / 'cam'}" in same
    _, scratch = jobs.job_overrides("scratch", "cam_plda", 0, args)
    assert "train.epochs=4" in scratch and not any("init_from" in o for o in scratch)


def test_a_finished_run_is_not_run_again_and_a_continue_job_waits(tmp_path):
    _write(tmp_path, "scratch", "cam", 0, 20.0, 21.0, 30.0)
    args = Namespace(out=tmp_path, epochs=4, continue_epochs=2, amp="bf16", data=tmp_path,
                     overrides=[], domain_images=0)
    assert jobs.run_job("scratch", "cam", 0, args)["val_miou_13"] == 20.0
    # Its scratch baseline has no weights: the continue job does not start.
    assert jobs.run_job("continue", "cam_plda", 0, args) == {}
    assert not (tmp_path / "continue").exists()


@pytest.mark.parametrize("job", ["verdict", "budget"])
def test_a_run_records_the_commit_it_started_from(tmp_path, monkeypatch, job):
    heads = iter(["start01", "later02"])
    monkeypatch.setattr(jobs, "commit", lambda: next(heads))

    class Trainer:  # stands in for voc12subset: a commit lands while the run trains
        @staticmethod
        def run_method(method, folder, data, overrides, **kwargs):
            assert jobs.commit() == "later02"
            (folder / method).mkdir(parents=True)
            return {"method": method, "val_miou_13": 1.0, "train_miou_13": 1.0,
                    "train_miou_present": 1.0, "bg_threshold": 0.2, "train_minutes": 0.1}

    def score(run, row, *a):
        row["classification"] = {"train": {"map": 50.0, "f1": 0.5}}
        return row

    monkeypatch.setattr(jobs, "voc12subset", Trainer)
    monkeypatch.setattr(jobs, "score_run", score)
    args = Namespace(out=tmp_path, epochs=1, continue_epochs=1, amp="bf16", data=tmp_path,
                     overrides=[], domain_images=0, seeds=[0], epochs_list=[1],
                     methods=["cam"], no_summary=True)
    if job == "verdict":
        row = jobs.run_job("scratch", "cam", 0, args)
        saved = tmp_path / "scratch" / "seed0" / "cam" / seedmaps.RESULT
    else:
        [row] = budget.budget(args)
        saved = tmp_path / "e1" / "cam" / "budget.json"
    assert row["commit"] == "start01"
    assert json.loads(saved.read_text())["commit"] == "start01"


def _budget_row(out: Path, method: str, epochs: int, train13: float) -> None:
    run = out / f"e{epochs}" / method
    run.mkdir(parents=True)
    (run / "budget.json").write_text(json.dumps({"method": method, "epochs": epochs,
                                                 "train_miou_13": train13}))


def test_budget_stops_where_the_next_sweep_step_adds_too_little(tmp_path):
    for epochs, score in ((1, 20.0), (2, 25.0), (4, 25.5), (8, 30.0)):
        _budget_row(tmp_path, "cam", epochs, score)
    for epochs, score in ((1, 10.0), (2, 14.0), (4, 19.0), (8, 21.0)):
        _budget_row(tmp_path, "seam", epochs, score)
    choice = budget.choose_budget(budget.read_budget(tmp_path), min_gain=1.0)
    # cam: 2 -> 4 adds 0.5 (< 1): stops at 2, although 8 is higher again.
    assert choice["methods"]["cam"]["epochs"] == 2
    # seam: every step adds >= 1 point: the largest swept.
    assert choice["methods"]["seam"]["epochs"] == 8
    assert choice["epochs"] == 8
    strict = budget.choose_budget(budget.read_budget(tmp_path), min_gain=2.5)
    assert strict["methods"]["seam"]["epochs"] == 4 and strict["epochs"] == 4


def test_budget_of_a_falling_curve_is_its_first_point(tmp_path):
    for epochs, score in ((1, 20.0), (2, 18.0)):
        _budget_row(tmp_path, "cam", epochs, score)
    assert budget.choose_budget(budget.read_budget(tmp_path))["epochs"] == 1
    with pytest.raises(SystemExit, match="no finished runs"):
        budget.choose_budget(budget.read_budget(tmp_path / "empty"))


def test_parallel_jobs_wait_for_what_they_start_from(tmp_path):
    stamp = tmp_path / "order.txt"

    def job(name: str, after=(), code: int = 0, sleep: float = 0.0) -> dict:
        script = (f"import time; time.sleep({sleep}); "
                  f"open({str(stamp)!r}, 'a').write({name!r} + '\\n'); raise SystemExit({code})")
        return {"name": name, "after": list(after), "argv": [sys.executable, "-c", script]}

    jobs = [job("slow", sleep=1.5), job("fast"), job("child", after=["slow"]),
            job("broken", code=3), job("orphan", after=["broken"])]
    failed = parallel.run_parallel(jobs, 2, tmp_path)
    order = stamp.read_text().split()
    assert sorted(failed) == ["broken", "orphan"]
    assert "orphan" not in order  # never started: what it starts from failed
    assert order.index("child") > order.index("slow")
    assert set(order) == {"slow", "fast", "child", "broken"}
    assert (tmp_path / "logs" / "broken.log").is_file()


def _finished_run(out: Path, method: str, seed: int, overrides: list[str]) -> Path:
    """A scratch run folder whose stages are recorded as done with ``overrides``' fingerprints."""
    from plda.config.loader import save_config
    from plda.pipeline.run import fingerprints

    from benchmarks import voc12subset

    folder = out / "scratch" / f"seed{seed}"
    _, _, cfg = voc12subset.method_config(method, folder, out / "data", overrides)
    run = folder / method
    run.mkdir(parents=True)
    save_config(cfg, run / "config.yaml")
    prints = fingerprints(cfg)
    (run / "stages.json").write_text(json.dumps(
        {s: {"fingerprint": prints[s], "done": True} for s in ("data", "train", "cam", "seeds")}))
    (run / seedmaps.RESULT).write_text(json.dumps({"overrides": overrides}))
    return run


def test_a_chain_refuses_to_retrain_a_run_made_with_other_overrides(tmp_path):
    _finished_run(tmp_path, "cam", 0, ["train.epochs=8", "train.seed=0"])
    # The verdict.json says 8 epochs; a chain given 4 more would change stage 1's fingerprint.
    args = Namespace(out=tmp_path, data=tmp_path / "data", overrides=["train.epochs=4"])
    with pytest.raises(SystemExit, match="would not reuse the finished stages.*'train': "
                                         "'rerun'"):
        jobs.run_chain("cam", 0, args)
    assert not (tmp_path / "scratch" / "seed0" / "cam" / jobs.CHAIN).exists()


def test_chain_table_reads_each_finished_chain(tmp_path):
    for seed, (seg13, segp) in enumerate([(20.0, 25.0), (24.0, 29.0)]):
        run = tmp_path / "scratch" / f"seed{seed}" / "cam"
        run.mkdir(parents=True)
        (run / jobs.CHAIN).write_text(json.dumps(
            {"method": "cam", "seed": seed, "val_miou_13": 30.0, "val_miou_present": 28.0,
             "pseudo_train_miou_13": 33.0, "pseudo_train_miou_present": 31.0,
             "seg_val_miou_13": seg13, "seg_val_miou_present": segp, "refine_minutes": 10.0,
             "seg_minutes": 12.0}))
    text = summary.chain_markdown(tmp_path)
    assert "| cam | 0,1 | 30.0 ± 0.0 / 28.0 ± 0.0 | 33.0 ± 0.0 / 31.0 ± 0.0 " \
           "| 22.0 ± 2.8 / 27.0 ± 2.8 | 22.0 ± 0.0 |" in text
    assert summary.chain_markdown(tmp_path / "none") == ""
