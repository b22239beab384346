"""Real interruptions and real multi-process training, in subprocesses (CPU, gloo)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from _toy_training import run_toy
from plda.engine.checkpoint import checkpoint_path, list_checkpoints, load_checkpoint

SCRIPT = Path(__file__).with_name("_toy_training.py")


def _env() -> dict[str, str]:
    # One thread, as run_toy uses in-process, so kernels reduce in the same order.
    return {**os.environ, "PLDA_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1"}


def _run(args: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], env=_env(), capture_output=True, text=True,
                          timeout=timeout)


def _weights(run_dir: Path, step: int = 12) -> dict[str, torch.Tensor]:
    return load_checkpoint(checkpoint_path(run_dir / "checkpoints", step))["model"]


def _losses(run_dir: Path) -> list[float]:
    lines = (run_dir / "logs" / "train.jsonl").read_text().splitlines()
    return [r["loss"] for r in map(json.loads, lines) if "event" not in r]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_sigkill_after_checkpoint_then_resume_gives_identical_weights(tmp_path):
    """Killed (SIGKILL, no chance to clean up) at step 7, resumed from step 5's checkpoint."""
    run_dir = tmp_path / "killed"
    killed = _run([str(SCRIPT), str(run_dir), "--signal-at-step", "7", "--signal", "KILL"])
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert [s for s, _ in list_checkpoints(run_dir / "checkpoints")] == [5]

    result, _, dataset = run_toy(run_dir, resume=True)
    assert result.step == 12 and len(dataset.loaded) == 7 * 4
    run_toy(tmp_path / "reference")
    resumed, expected = _weights(run_dir), _weights(tmp_path / "reference")
    for k in expected:
        assert torch.equal(resumed[k], expected[k]), k
    assert _losses(run_dir) == _losses(tmp_path / "reference")


@pytest.mark.slow
def test_two_process_ddp_matches_one_process(tmp_path):
    """Global batch 4: 2 ranks × 2 samples (gloo) against 1 process × 4 samples."""
    ddp_dir = tmp_path / "ddp"
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
         "--master_addr=127.0.0.1", f"--master_port={_free_port()}", str(SCRIPT), str(ddp_dir),
         "--dropout", "0", "--num-workers", "1"],
        env=_env(), capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1])["step"] == 12

    run_toy(tmp_path / "single", dropout=0.0)
    ddp_losses, single_losses = _losses(ddp_dir), _losses(tmp_path / "single")
    assert len(ddp_losses) == 12
    assert ddp_losses == pytest.approx(single_losses, rel=1e-5)
    ddp_w, single_w = _weights(ddp_dir), _weights(tmp_path / "single")
    for k in single_w:
        torch.testing.assert_close(ddp_w[k], single_w[k], rtol=1e-5, atol=1e-6)
    state = load_checkpoint(checkpoint_path(ddp_dir / "checkpoints", 12))
    assert state["world_size"] == 2 and len(state["rng"]) == 2
    assert not torch.equal(state["rng"][0]["torch"], state["rng"][1]["torch"])  # per-rank seeds
