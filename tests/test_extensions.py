"""Extending the toolkit without editing it: a toy backbone, a toy stage-1 method and a toy
refiner, each defined and registered in ``tests/toy_extensions.py`` alone, run through
``plda run`` on a tiny synthetic set from a preset that lists that module under ``imports``."""

from __future__ import annotations

import json
import sys

import pytest

from test_pipeline import TINY

pytestmark = pytest.mark.usefixtures("one_thread")

# The pipeline tests' tiny synthetic set, and a stage 2 that trains a few steps.
SMALL = [*TINY, "seg.train.iterations=4", "seg.train.batch_size=4", "seg.crop=48",
         "seg.train.checkpoint_every=2", "seg.train.log_every=1"]


@pytest.fixture
def toys():
    """The toy entries exist only while the test runs (the preset's import registers them)."""
    from plda.registry import BACKBONES, METHODS, REFINERS

    yield
    BACKBONES.unregister("toy_convnet")
    METHODS.unregister("toy_gmp_cam")
    REFINERS.unregister("toy_grow")
    sys.modules.pop("toy_extensions", None)


def _preset(tmp_path, body: str):
    path = tmp_path / "preset.yaml"
    path.write_text("extends: synth_cam\nimports: [toy_extensions]\n" + body)
    return path


def _run(tmp_path, preset, *extra: str) -> dict:
    from plda.cli.main import main

    run = tmp_path / "run"
    assert main(["run", str(preset), *SMALL, f"run_dir={run}", *extra]) == 0
    return json.loads((run / "metrics.json").read_text())


def _assert_whole_run(tmp_path, metrics: dict) -> None:
    run = tmp_path / "run"
    for split, n in (("train", 8), ("val", 4)):
        assert len(list((run / "pseudo" / split).glob("*.png"))) == n
    assert len(list((run / "seg" / "val").glob("*.png"))) == 4
    assert 0 <= metrics["seg"]["val"]["miou"] <= 100
    assert (run / "report.html").is_file()
    # The run folder's config names the module, so the folder alone reruns it (nothing to do).
    from plda.cli.main import main

    assert main(["run", str(run), "--dry-run"]) == 0


def test_toy_backbone_through_plda_run(tmp_path, toys, capsys):
    """Stage 1 and the DeepLab (whose decoder takes the backbone's registered low level) both
    on the toy backbone."""
    preset = _preset(tmp_path, "model: {backbone: toy_convnet, pretrained: null}\n"
                     "seg: {model: {backbone: toy_convnet, pretrained: stage1, "
                     "arch: deeplab_lite_plus}}\n")
    metrics = _run(tmp_path, preset)
    _assert_whole_run(tmp_path, metrics)
    from plda.data.camfile import load_cams

    cams = sorted((tmp_path / "run" / "cams" / "val").glob("*.npz"))
    assert cams and load_cams(cams[0]).cams.shape[-1] == 64  # the CAMs, at image size
    capsys.readouterr()
    from plda.cli.main import main

    assert main(["run", str(tmp_path / "run"), "--dry-run"]) == 0
    assert set(line.split()[1] for line in capsys.readouterr().out.split("\n")
               if line.strip()) == {"skip"}


def test_toy_method_through_plda_run(tmp_path, toys):
    preset = _preset(tmp_path, "method: {name: toy_gmp_cam}\n")
    metrics = _run(tmp_path, preset)
    _assert_whole_run(tmp_path, metrics)
    log = (tmp_path / "run" / "logs" / "train.jsonl").read_text().splitlines()
    assert any("cls" in json.loads(line) for line in log)
    assert metrics["seeds"]["val"]["miou"] is not None


def test_toy_refiner_through_plda_run(tmp_path, toys):
    """The toy refiner's options are checked when the config is read and hashed into the refine
    stage's fingerprint: more growth reruns refinement and nothing before it."""
    from plda.config import load_run_config
    from plda.errors import ConfigError
    from plda.pipeline.run import fingerprints

    preset = _preset(tmp_path, "refine: {method: toy_grow, options: {grow: 1}}\n")
    metrics = _run(tmp_path, preset)
    _assert_whole_run(tmp_path, metrics)
    assert metrics["pseudo"]["method"] == "toy_grow" and metrics["pseudo"]["grow"] == 1
    with pytest.raises(ConfigError, match="refine.options.growth"):
        load_run_config(preset, ["refine.options={growth: 2}"])
    run = tmp_path / "run"
    before = json.loads((run / "stages.json").read_text())
    base = load_run_config(preset, [*SMALL, f"run_dir={run}"])
    more = load_run_config(preset, [*SMALL, f"run_dir={run}", "refine.options={grow: 3}"])
    a, b = fingerprints(base), fingerprints(more)
    assert [s for s in a if a[s] != b[s]] == ["refine", "seg_train", "seg_eval", "report"]
    again = _run(tmp_path, preset, "refine.options={grow: 3}", "--until", "refine")
    assert again["pseudo"]["grow"] == 3
    after = json.loads((run / "stages.json").read_text())
    assert [s for s in before if before[s].get("finished") != after[s].get("finished")] == [
        "refine"]
    assert len(list((run / "pseudo" / "val").glob("*.png"))) == 4


_DECLARED_VS_IMPORTED = r"""
import json, sys
from plda.registry import BACKBONES, METHODS, REFINERS
from plda.config import load_run_config
cfg = load_run_config("synth_cam", ["refine.method=crf"])
read = {r.kind: [[n, r.meta(n)] for n in r.names()] for r in (BACKBONES, METHODS, REFINERS)}
torch_after_config = "torch" in sys.modules
for r in (BACKBONES, METHODS, REFINERS):
    r.get(r.names()[0])  # imports the package's modules: their decorators register
imported = {r.kind: [[n, r._entries[n].meta] for n in r.names()]
            for r in (BACKBONES, METHODS, REFINERS)}
print(json.dumps({"read": read, "imported": imported, "torch_after_config": torch_after_config,
                  "entries": {r.kind: sorted(r._entries) for r in (BACKBONES, METHODS, REFINERS)}}))
"""


def test_built_in_names_read_from_source_match_what_importing_registers():
    """Reading a config checks its names against the built-ins' declarations, read from the
    modules' source: no torch imported. Importing the modules registers exactly those names
    and metadata."""
    import subprocess

    out = subprocess.run([sys.executable, "-c", _DECLARED_VS_IMPORTED], capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    found = json.loads(out.stdout.strip().splitlines()[-1])
    assert found["torch_after_config"] is False
    assert found["read"] == found["imported"]
    for kind, names in found["read"].items():
        assert sorted(n for n, _ in names) == found["entries"][kind]
    assert dict(found["read"]["backbone"])["efficientnet_lite0"] == {"low_level": "stage2"}
    methods = {n for n, _ in found["read"]["stage-1 method"]}
    assert {"cam", "cam_plda", "seam", "seam_plda"} <= methods


def test_a_registered_name_of_ones_own_follows_the_built_ins(toys):
    from plda.registry import REFINERS

    import toy_extensions  # noqa: F401 - registers toy_grow

    names = REFINERS.names()
    assert names[-1] == "toy_grow" and {"irn", "crf", "pamr", "affinity"} <= set(names[:-1])
    assert REFINERS.meta("toy_grow") == REFINERS.get("toy_grow").meta
