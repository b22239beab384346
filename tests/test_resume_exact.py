"""Resuming is exact: the newest readable checkpoint is used (a truncated newest one falls back
to the older ones kept beside it), damaged log lines are skipped, and the weights and the final
metrics of a resumed run equal an uninterrupted run's."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from plda.cli.main import main

from test_run_cache import TINY

pytestmark = pytest.mark.usefixtures("one_thread")

# 8 steps (8 images, batch 4, 4 epochs); logs at 5 and 8, checkpoints at 2, 4, 6, 8: a resume
# from step 6 lies inside the last averaging window (steps 6-8).
# ImageNet weights: with random ones the tiny CAM's loss is exactly log 2 at every step, and
# averages over any window would agree.
LONGER = ["train.epochs=4", "train.log_every=5", "train.checkpoint_every=2",
          "train.keep_checkpoints=10", "model.pretrained=imagenet"]
TIMING = {"images_per_s", "wall_time_s"}


def _final(run: Path) -> dict:
    final = json.loads((run / "metrics.json").read_text())["train"]["final"]
    return {k: v for k, v in final.items() if k not in TIMING}


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(run / "stage1.safetensors")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("resume") / "full"
    assert main(["train", "synth_cam", *TINY, *LONGER, f"run_dir={run}"]) == 0
    return run


def _killed_after(uninterrupted: Path, target: Path, step: int) -> Path:
    """The run folder as a kill right after step ``step``'s checkpoint leaves it."""
    shutil.copytree(uninterrupted, target)
    for ckpt in (target / "checkpoints").glob("step_*.pt"):
        if int(ckpt.stem.split("_")[1]) > step:
            ckpt.unlink()
    (target / "stage1.safetensors").unlink()
    (target / "metrics.json").unlink()
    return target


def _flat(weights: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([weights[k].double().flatten() for k in sorted(weights)
                      if weights[k].is_floating_point()])


def _same_weights(a: Path, b: Path) -> None:
    """Equal to float rounding, which oneDNN's kernels leave after a restart (they are not
    bit-reproducible across one): measured 5e-4 of one step's change on an AVX2 CPU, 1e-8
    absolute on an AMX one. Held to 1 % of what one training step changes (the mean step of
    ``b``'s last two, from its checkpoints), so a lost or repeated step (about 100 %) fails."""
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    before = torch.load(b / "checkpoints" / "step_00000006.pt", weights_only=True)["model"]
    one_step = (_flat(wb) - _flat({k: before[k] for k in wb})).norm() / 2
    assert one_step > 0
    for k in wa:
        assert wa[k].dtype == wb[k].dtype and wa[k].shape == wb[k].shape, k
    assert (_flat(wa) - _flat(wb)).norm() <= 0.01 * one_step


def _same_final(a: Path, b: Path) -> None:
    # Averages over a window that spans the resume differ by ~4e-5 when the window restarts.
    fa, fb = _final(a), _final(b)
    assert fa.keys() == fb.keys()
    for k in fa:
        assert fa[k] == pytest.approx(fb[k], rel=1e-6, abs=1e-9), k


def test_resume_inside_a_log_window_gives_the_uninterrupted_metrics(uninterrupted, tmp_path):
    run = _killed_after(uninterrupted, tmp_path / "run", 6)
    assert main(["train", str(run), "--resume"]) == 0
    _same_final(run, uninterrupted)
    _same_weights(run, uninterrupted)


def test_a_truncated_newest_checkpoint_falls_back_to_the_previous(uninterrupted, tmp_path):
    run = _killed_after(uninterrupted, tmp_path / "run", 6)
    newest = run / "checkpoints" / "step_00000006.pt"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 3])
    with pytest.warns(UserWarning, match="step_00000006.pt.*falling back"):
        assert main(["train", str(run), "--resume"]) == 0
    _same_final(run, uninterrupted)
    _same_weights(run, uninterrupted)


def test_damaged_log_lines_are_skipped_with_a_warning(uninterrupted, tmp_path):
    run = _killed_after(uninterrupted, tmp_path / "run", 4)
    log = run / "logs" / "train.jsonl"
    lines = log.read_text().splitlines()
    log.write_text("\n".join([lines[0][: len(lines[0]) // 2], *lines[1:], "{not json"]) + "\n")
    with pytest.warns(UserWarning, match=r"train.jsonl: skipped 2 damaged line\(s\) \(1, "):
        assert main(["train", str(run), "--resume"]) == 0
    _same_final(run, uninterrupted)
    records = [json.loads(x) for x in log.read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [5, 8]  # logged again after step 4


def test_no_readable_checkpoint_is_one_clear_error(uninterrupted, tmp_path, capsys):
    run = _killed_after(uninterrupted, tmp_path / "run", 4)
    for ckpt in (run / "checkpoints").glob("step_*.pt"):
        ckpt.write_bytes(b"not a checkpoint")
    with pytest.warns(UserWarning):
        assert main(["train", str(run), "--resume"]) == 2
    err = capsys.readouterr().err
    assert "no checkpoint in" in err and "step_00000004.pt" in err and "Traceback" not in err
