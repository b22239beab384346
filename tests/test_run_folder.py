"""A run folder is the run: copies are independent runs, moved runs stay current; one writer
at a time (a second is refused at once, naming the first, and nothing of the first is lost)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from plda.cli.main import main

from test_pipeline import TINY

pytestmark = pytest.mark.usefixtures("one_thread")


def _mtimes(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != ".lock"}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("runs") / "A"
    assert main(["run", "synth_cam", *TINY, f"run_dir={run}", "--until", "seeds"]) == 0
    return run


def test_paths_stored_in_a_run_folder_are_relative_to_it(finished_run):
    saved = yaml.safe_load((finished_run / "config.yaml").read_text())
    assert saved["run_dir"] == "."
    for split in ("train", "val"):
        source = json.loads((finished_run / "cams" / split / "source.json").read_text())
        assert source["weights"] == "stage1.safetensors" and source["data_root"] == "data"
    train = json.loads((finished_run / "train_config.json").read_text())
    assert train["config"]["run_dir"] == "."


def test_a_copied_run_folder_is_an_independent_run(finished_run, tmp_path, capsys):
    copy = tmp_path / "B"
    shutil.copytree(finished_run, copy)
    before = _mtimes(finished_run)
    assert main(["run", str(copy), "cam.bg_threshold=0.3", "--until", "seeds"]) == 0
    assert _mtimes(finished_run) == before  # the original is untouched
    saved = yaml.safe_load((copy / "config.yaml").read_text())
    assert saved["cam"]["bg_threshold"] == 0.3 and saved["run_dir"] == "."
    metrics = json.loads((copy / "metrics.json").read_text())
    assert metrics["seeds"]["bg_threshold"] == pytest.approx(0.3)
    # Only the seeds were redone in the copy: the CAMs made in the original are still current.
    capsys.readouterr()
    assert main(["run", str(copy), "cam.bg_threshold=0.3", "--until", "seeds", "--dry-run"]) == 0
    assert set(capsys.readouterr().out.split()) == {"data", "train", "cam", "seeds", "skip"}


def test_a_moved_run_folder_stays_current(finished_run, tmp_path, capsys):
    moved = tmp_path / "C"
    shutil.copytree(finished_run, tmp_path / "orig")
    (tmp_path / "orig").rename(moved)
    capsys.readouterr()
    assert main(["run", str(moved), "--until", "seeds", "--dry-run"]) == 0
    plan = dict(line.split() for line in capsys.readouterr().out.splitlines())
    assert plan == {"data": "skip", "train": "skip", "cam": "skip", "seeds": "skip"}
    # Its own config.yaml names the run too.
    assert main(["run", str(moved / "config.yaml"), "--until", "seeds", "--dry-run"]) == 0
    assert set(capsys.readouterr().out.split()) == {"data", "train", "cam", "seeds", "skip"}


def test_an_explicit_run_dir_still_wins_and_says_so(finished_run, tmp_path, capsys):
    other = tmp_path / "D"
    assert main(["run", str(finished_run), f"run_dir={other}", "--until", "data"]) == 0
    err = capsys.readouterr().err
    assert f"run_dir={other} overrides the run folder {finished_run}" in err
    assert (other / "config.yaml").is_file()


def test_a_folder_without_config_is_a_clear_error(tmp_path, capsys):
    assert main(["run", str(tmp_path), "--dry-run"]) == 2
    assert "without config.yaml" in capsys.readouterr().err


def _env() -> dict[str, str]:
    return {**os.environ, "PLDA_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1",
            "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}


def test_a_second_writer_is_refused_at_once_and_the_first_finishes(tmp_path):
    run = tmp_path / "run"
    first = subprocess.Popen([sys.executable, "-m", "plda", "run", "synth_cam", *TINY,
                              f"run_dir={run}", "train.epochs=4", "--until", "seeds"],
                             env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True)
    try:
        deadline = time.monotonic() + 120
        while not (run / "checkpoints").exists():  # the first is training
            assert first.poll() is None, first.stdout.read()
            assert time.monotonic() < deadline
            time.sleep(0.05)
        t0 = time.monotonic()
        second = subprocess.run([sys.executable, "-m", "plda", "run", str(run),
                                 "cam.bg_threshold=0.2", "--until", "seeds"],
                                env=_env(), capture_output=True, text=True, timeout=120)
        assert time.monotonic() - t0 < 60  # refused at once, not after waiting
        assert second.returncode == 2
        assert f"run folder {run} is in use by process {first.pid}" in second.stderr
        assert "plda run synth_cam" in second.stderr and "Traceback" not in second.stderr
        out, _ = first.communicate(timeout=600)
        assert first.returncode == 0, out
    finally:
        if first.poll() is None:
            first.kill()
    metrics = json.loads((run / "metrics.json").read_text())
    assert "seeds" in metrics and metrics["seeds"]["bg_threshold"] != 0.2
    assert yaml.safe_load((run / "config.yaml").read_text())["cam"]["bg_threshold"] is None


def test_the_lock_does_not_survive_a_killed_holder(tmp_path):
    run = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from plda.utils.runlock import run_lock\n"
         f"with run_lock({str(run)!r}, 'holder'):\n    print('held', flush=True); time.sleep(60)"],
        env=_env(), stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    from plda.utils.runlock import RunBusyError, run_lock

    with pytest.raises(RunBusyError, match=f"process {holder.pid} .*'holder'"):
        with run_lock(run):
            pass
    holder.kill()
    holder.wait()
    with run_lock(run):  # SIGKILL released it
        with run_lock(run):  # re-entrant in one process
            pass


def test_only_rank_zero_takes_the_lock(tmp_path, monkeypatch):
    from plda.utils.runlock import run_lock

    monkeypatch.setenv("RANK", "1")
    with run_lock(tmp_path / "run"):
        assert not (tmp_path / "run" / ".lock").exists()
