"""A run folder made before a refactoring stays current after it: every shipped preset's stage
fingerprints, under each refinement method, equal the ones recorded in
``tests/data/stage_fingerprints.json`` (computed by the code of the commit it names), and a run
folder carrying those recorded fingerprints is skipped whole by ``plda run --dry-run``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from plda.config import load_run_config

FIXTURE = json.loads((Path(__file__).parent / "data" / "stage_fingerprints.json").read_text())
CASES = [(preset, method) for preset, methods in sorted(FIXTURE["fingerprints"].items())
         for method in sorted(methods)]


def _cfg(preset: str, method: str, run_dir: str = "RUN"):
    return load_run_config(preset, [f"refine.method={method}", f"run_dir={run_dir}"])


@pytest.mark.parametrize("preset,method", CASES)
def test_fingerprints_equal_the_recorded_ones(preset, method):
    from plda.pipeline.run import fingerprints

    assert fingerprints(_cfg(preset, method)) == FIXTURE["fingerprints"][preset][method]


def test_every_shipped_preset_is_in_the_fixture():
    from plda.config.loader import list_presets

    shipped = {name for name in list_presets() if not name.endswith("_base")}
    assert shipped <= set(FIXTURE["fingerprints"]), sorted(shipped - set(FIXTURE["fingerprints"]))


@pytest.mark.parametrize("method", ["irn", "crf"])
def test_old_run_folder_is_skipped_whole(tmp_path, capsys, method):
    """A run folder whose stages.json holds the recorded fingerprints, every stage finished and
    its outputs present: nothing to run again."""
    from plda.cli.main import main
    from plda.pipeline.run import STAGES

    recorded = FIXTURE["fingerprints"]["synth_cam"][method]
    run = tmp_path / "run"
    run.mkdir()
    (run / "stages.json").write_text(json.dumps(
        {stage: {"fingerprint": recorded[stage], "done": True} for stage in STAGES}))
    for name in ("cams", "seeds", "pseudo", "seg", "deeplab"):
        (run / name).mkdir()
    for name in ("stage1.safetensors", "report.html", "deeplab/segmentation.safetensors"):
        (run / name).write_bytes(b"x")
    assert main(["run", "synth_cam", f"refine.method={method}", f"run_dir={run}",
                 "--dry-run"]) == 0
    lines = [line.split() for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert lines == [[stage, "skip"] for stage in STAGES]
