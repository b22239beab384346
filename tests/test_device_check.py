"""``benchmarks/device_check.sh --cpu``: the GPU check script's every step, tiny, on the CPU, so
that the script a borrowed GPU runs has run before (versions, every method's training step in
fp32 / bf16 / fp16 with loss scaling, torchrun + DDP, CAM inference, one table)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]


def test_device_check_runs_every_check_on_the_cpu(tmp_path):
    out = tmp_path / "check"
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "device_check.sh"), "--cpu",
                           "--out", str(out), "--budget-s", "1200"], capture_output=True,
                          text=True, timeout=1500,
                          env={**__import__("os").environ, "PYTHON": sys.executable})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    table = json.loads((out / "device_check.json").read_text())
    rows = {(r["check"], r["setting"]): r for r in table["rows"]}
    steps = [r for (check, _), r in rows.items() if check == "train step"]
    from plda.registry import METHODS

    methods = set(METHODS.names())  # every registered method, in each of three precisions
    assert len(steps) == 3 * len(methods) and all(r["status"] == "ok" for r in steps)
    assert all(r["seconds"] > 0 and r["memory_mb"] > 0 for r in steps)
    assert {s.split()[0] for (c, s) in rows if c == "train step"} == methods
    ddp = next(r for (c, _), r in rows.items() if c == "torchrun ddp")
    assert ddp["status"] == "ok" and "all_reduce ok" in ddp["detail"]
    cams = [r for (c, _), r in rows.items() if c == "cam inference"]
    assert len(cams) == 2 and all(r["status"] == "ok" for r in cams)
    assert table["versions"]["torch"] and table["versions"]["cpu"]["model"]
    # One table at the end, one line per check.
    lines = done.stdout.splitlines()
    header = next(k for k, ln in enumerate(lines) if ln.split()[:2] == ["check", "setting"])
    assert len([ln for ln in lines[header:] if ln.startswith(("train step", "cam inference",
                                                              "torchrun ddp"))]) == len(steps) + 3
