"""Fault tolerance of the real commands: ``plda train`` and ``plda cam`` killed with SIGKILL
again and again at random points, then resumed, end exactly where an uninterrupted run ends;
SIGTERM / SIGINT make ``plda train`` write a checkpoint and exit.

Each run is a subprocess (``python -m plda ...``) on one thread, so results are bitwise
reproducible between processes. Kill times come from a seeded RNG: a kill waits until the run
has made progress since the last one (a new checkpoint or CAM file), then a random extra delay,
so kills land during steps, checkpoint writes and CAM writes alike. After each kill every file
on disk must be complete (no partial checkpoint or CAM file, temporaries aside).

(The non-finite-loss stop is tested in test_engine.py; interrupts in-process also there.)
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from plda.data.camfile import load_cams
from plda.engine.checkpoint import list_checkpoints, load_checkpoint
from plda.errors import PldaError
from plda.data.labels import save_label_png
from plda.weights.io import load_state_dict_file

SRC = Path(__file__).resolve().parents[1] / "src"
CLASSES = ("a", "b", "c")


def make_dataset(root: Path, n: int, size: tuple[int, int]) -> Path:
    """``n`` noisy images with a rectangle of class 1 + i % 3 each; labels json; train list."""
    rng = np.random.default_rng(0)
    for sub in ("JPEGImages", "SegmentationClassAug", "ImageSets/Segmentation"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    (root / "classes.txt").write_text("".join(f"{c}\n" for c in CLASSES))
    labels, ids = {}, [f"im{i:03d}" for i in range(n)]
    for i, image_id in enumerate(ids):
        rgb = rng.integers(0, 255, (*size, 3), dtype=np.uint8)
        mask = np.zeros(size, np.uint8)
        mask[size[0] // 4: size[0] // 2, size[1] // 4: size[1] // 2] = 1 + i % 3
        rgb[mask > 0] = (60 * (1 + i % 3), 40, 200)
        Image.fromarray(rgb).save(root / "JPEGImages" / f"{image_id}.jpg", quality=90)
        save_label_png(root / "SegmentationClassAug" / f"{image_id}.png", mask)
        labels[image_id] = [CLASSES[i % 3]]
    (root / "image_labels.json").write_text(json.dumps(labels))
    (root / "ImageSets/Segmentation/train.txt").write_text("\n".join(ids) + "\n")
    return root


def overrides(data: Path, run: Path, iterations: int, crop: int) -> list[str]:
    return [f"data.root={data}", f"run_dir={run}", "method.name=cam", "model.pretrained=null",
            "model.output_stride=16", f"data.crop={crop}", f"data.resize_long=[{crop},{crop + 8}]",
            "train.epochs=null", f"train.iterations={iterations}", "train.batch_size=2",
            "train.num_workers=0", "train.vis_every=0", "train.checkpoint_every=1",
            "train.keep_checkpoints=2", "train.log_every=1", "train.deterministic=true",
            "data.eval_splits=[train]", "cam.scales=[1.0,0.5,1.5]", "cam.flip=true"]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
            "PLDA_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _plda(args: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "plda", *args], env=_env(), capture_output=True,
                          text=True, timeout=timeout)


class KillLoop:
    """Start ``plda ARGS`` repeatedly; kill each run with SIGKILL once ``progress()`` has moved
    past its value at the previous kill, after a random extra delay. Counts what it did."""

    def __init__(self, args: list[str], progress, check, kills: int, seed: int,
                 max_extra_delay: float):
        self.args, self.progress, self.check = args, progress, check
        self.kills_wanted, self.max_extra = kills, max_extra_delay
        self.rng = np.random.default_rng(seed)
        self.kills = 0
        self.delays: list[float] = []
        self.progress_at_kill: list[int] = []

    def run(self) -> None:
        mark = self.progress()
        for _ in range(self.kills_wanted):
            proc = subprocess.Popen([sys.executable, "-m", "plda", *self.args], env=_env(),
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            try:
                deadline = time.monotonic() + 240
                while proc.poll() is None and self.progress() <= mark:
                    assert time.monotonic() < deadline, "no progress within 240 s"
                    time.sleep(0.02)
                delay = float(self.rng.uniform(0.0, self.max_extra))
                time.sleep(delay)
                if proc.poll() is not None:  # finished before the kill: stop killing
                    assert proc.returncode == 0, proc.stderr.read().decode()
                    return
                proc.send_signal(signal.SIGKILL)
            finally:
                proc.wait()
                proc.stderr.close()
            assert proc.returncode == -signal.SIGKILL
            self.kills += 1
            self.delays.append(round(delay, 3))
            mark = self.progress()
            self.progress_at_kill.append(mark)
            self.check()


def _checkpoint_steps(run: Path) -> int:
    found = list_checkpoints(run / "checkpoints")
    return found[-1][0] if found else 0


def _all_checkpoints_complete(run: Path) -> int:
    """Load every checkpoint in the folder; return how many were unreadable (files lost)."""
    lost = 0
    for _, path in list_checkpoints(run / "checkpoints"):
        try:
            load_checkpoint(path)
        except PldaError:
            lost += 1
    for name in ("config.yaml", "train_config.json"):
        if (run / name).exists() and not (run / name).read_text().strip():
            lost += 1
    if (run / "logs/train.jsonl").exists():
        for line in (run / "logs/train.jsonl").read_text().splitlines():
            json.loads(line)  # a torn log line would raise here
    return lost


@pytest.mark.slow
def test_train_killed_repeatedly_resumes_to_the_uninterrupted_weights(tmp_path, capsys):
    data = make_dataset(tmp_path / "data", n=8, size=(40, 48))
    iterations = 14
    reference = tmp_path / "reference"
    done = _plda(["train", *overrides(data, reference, iterations, 32)])
    assert done.returncode == 0, done.stderr

    run = tmp_path / "killed"
    args = ["train", *overrides(data, run, iterations, 32), "--resume"]
    lost = []
    loop = KillLoop(args, lambda: _checkpoint_steps(run),
                    lambda: lost.append(_all_checkpoints_complete(run)),
                    kills=4, seed=1234, max_extra_delay=0.4)
    loop.run()
    assert loop.kills >= 3, f"only {loop.kills} kills landed before the run finished"
    resumed = _plda(args)
    assert resumed.returncode == 0, resumed.stderr
    assert sum(lost) == 0

    got = load_state_dict_file(run / "stage1.safetensors")
    want = load_state_dict_file(reference / "stage1.safetensors")
    assert got.keys() == want.keys()
    for key in want:
        assert got[key].equal(want[key]), key  # bitwise
    losses = [[r["loss"] for r in map(json.loads, (d / "logs/train.jsonl").read_text()
                                          .splitlines()) if "loss" in r]
              for d in (run, reference)]
    assert losses[0] == losses[1] and len(losses[0]) == iterations
    assert not list(run.rglob(".tmp-*"))
    with capsys.disabled():
        print(f"\n[faults] plda train: {loop.kills} SIGKILLs survived (after checkpoint steps "
              f"{loop.progress_at_kill}, extra delays {loop.delays} s), files lost {sum(lost)}")


def _cam_files(folder: Path) -> int:
    return len(list(folder.glob("*.npz"))) if folder.is_dir() else 0


def _cams_complete(folder: Path) -> int:
    lost = 0
    for path in folder.glob("*.npz"):
        try:
            load_cams(path)
        except PldaError:
            lost += 1
    return lost


@pytest.mark.slow
def test_cam_killed_repeatedly_resumes_to_the_uninterrupted_files(tmp_path, capsys):
    data = make_dataset(tmp_path / "data", n=16, size=(64, 80))
    run = tmp_path / "run"
    common = overrides(data, run, 1, 32)
    assert _plda(["train", *common]).returncode == 0

    folder = run / "cams/train"
    lost = []
    loop = KillLoop(["cam", *common], lambda: _cam_files(folder),
                    lambda: lost.append(_cams_complete(folder)),
                    kills=3, seed=99, max_extra_delay=0.3)
    loop.run()
    assert loop.kills >= 2, f"only {loop.kills} kills landed before the split was done"
    finished = _plda(["cam", *common])
    assert finished.returncode == 0, finished.stderr
    assert sum(lost) == 0

    reference = tmp_path / "reference"
    shutil.copytree(run, reference, ignore=shutil.ignore_patterns("cams"))
    assert _plda(["cam", *overrides(data, reference, 1, 32)]).returncode == 0
    ref_folder = reference / "cams/train"
    names = sorted(p.name for p in ref_folder.glob("*.npz"))
    assert len(names) == 16
    assert sorted(p.name for p in folder.glob("*.npz")) == names
    assert not list(folder.glob(".tmp-*"))
    max_diff = 0.0
    for name in names:
        a, b = load_cams(folder / name), load_cams(ref_folder / name)
        assert np.array_equal(a.keys, b.keys) and a.image_size == b.image_size
        assert a.num_classes == b.num_classes
        max_diff = max(max_diff, float(np.abs(a.cams - b.cams).max(initial=0.0)))
    assert max_diff == 0.0  # the same process setup gives the same float16 values
    with capsys.disabled():
        print(f"\n[faults] plda cam: {loop.kills} SIGKILLs survived (after "
              f"{loop.progress_at_kill} of 16 files, extra delays {loop.delays} s), files lost "
              f"{sum(lost)}")


@pytest.mark.slow
@pytest.mark.parametrize("signame", ["SIGTERM", "SIGINT"])
def test_sigterm_and_sigint_write_a_checkpoint_and_exit(tmp_path, signame):
    data = make_dataset(tmp_path / "data", n=8, size=(40, 48))
    run = tmp_path / "run"
    args = ["train", *overrides(data, run, 400, 32)]
    args[args.index("train.checkpoint_every=1")] = "train.checkpoint_every=1000"
    proc = subprocess.Popen([sys.executable, "-m", "plda", *args], env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = run / "logs/train.jsonl"
    try:
        deadline = time.monotonic() + 240
        while proc.poll() is None and not (log.is_file() and log.read_text().strip()):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert proc.poll() is None, proc.communicate()
        proc.send_signal(getattr(signal, signame))
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    steps = [s for s, _ in list_checkpoints(run / "checkpoints")]
    assert len(steps) == 1 and 0 < steps[0] < 400  # written on the signal, not by schedule
    assert f"interrupted at step {steps[0]}/400" in out and "--resume" in out
    state = load_checkpoint(run / "checkpoints" / f"step_{steps[0]:08d}.pt")
    assert state["step"] == steps[0]
    assert not (run / "stage1.safetensors").exists()


def test_a_restarted_run_removes_the_temporaries_a_kill_left(tmp_path, one_thread):
    """A kill during an atomic write leaves ``.tmp-<name>.<random>`` next to the target; the
    next run of the same step removes those of the files it writes, nothing else."""
    from plda.cli.main import main

    data = make_dataset(tmp_path / "data", n=4, size=(24, 32))
    run = tmp_path / "run"
    planted = [run / ".tmp-stage1.safetensors.k1ll3d", run / ".tmp-metrics.json.abc",
               run / "logs/.tmp-train.jsonl.tc90tr2h", run / "vis/.tmp-step_00000001.png.x1",
               run / "checkpoints/.tmp-step_00000002.pt.zz"]
    keep = run / "notes.txt"
    for path in [*planted, keep]:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"partial")
    assert main(["train", *overrides(data, run, 2, 16), "--resume"]) == 0
    assert [p for p in planted if p.exists()] == []
    assert keep.read_bytes() == b"partial"
    assert not list(run.rglob(".tmp-*"))
