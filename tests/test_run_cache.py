"""``plda run`` caching: stages skipped when current, re-run (alone with their followers) when
their settings change, resumed after a kill with the result of an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from plda.config import load_run_config

from test_pipeline import TINY as _PIPELINE_TINY

# The pipeline tests' tiny synthetic run, deterministic (kill/resume must reproduce it).
TINY = [*_PIPELINE_TINY, "train.deterministic=true"]

pytestmark = pytest.mark.usefixtures("one_thread")


def _cfg(run: Path, *extra: str):
    return load_run_config("synth_cam", [*TINY, f"run_dir={run}", *extra])


def test_fingerprints_chain_and_ignore_bookkeeping(tmp_path):
    from plda.pipeline.run import STAGES, fingerprints

    base = fingerprints(_cfg(tmp_path))
    assert list(base) == list(STAGES) and len(set(base.values())) == len(STAGES)
    # Bookkeeping settings change nothing.
    same = fingerprints(_cfg(tmp_path, "train.log_every=7", "train.num_workers=3",
                             "seg.train.checkpoint_every=5", "run_dir=/elsewhere"))
    assert same == base
    # A CAM setting changes cam and every later stage, nothing before it.
    flip = fingerprints(_cfg(tmp_path, "cam.flip=false"))
    changed = [s for s in STAGES if flip[s] != base[s]]
    assert changed == list(STAGES[STAGES.index("cam"):])
    # A segmentation evaluation setting changes only seg_eval and report.
    crf = fingerprints(_cfg(tmp_path, "seg.scales=[1.0,0.5]"))
    assert [s for s in STAGES if crf[s] != base[s]] == ["seg_eval", "report"]
    # The refinement settings that count are those of the chosen method.
    other = fingerprints(_cfg(tmp_path, "refine.affinity.beta=4"))
    assert other["refine"] == base["refine"]
    irn = fingerprints(_cfg(tmp_path, "refine.method=irn"))["refine"]
    assert irn != base["refine"]
    assert fingerprints(_cfg(tmp_path, "refine.method=irn", "refine.irn.beta=4"))["refine"] != irn
    # Where pseudo masks are made counts too: null means the seg training split + eval splits.
    from plda.pipeline.run import cam_splits, refine_splits

    assert refine_splits(_cfg(tmp_path)) == ["train", "val"]
    only = _cfg(tmp_path, "refine.splits=[train]")
    assert refine_splits(only) == ["train"] and cam_splits(only) == ["train", "val"]
    assert fingerprints(only)["refine"] != base["refine"]
    assert fingerprints(_cfg(tmp_path, "refine.splits=[train,val]"))["refine"] == base["refine"]
    from plda.errors import ConfigError

    with pytest.raises(ConfigError, match=r"refine\.splits=\[\]"):
        _cfg(tmp_path, "refine.splits=[]")
    with pytest.raises(ConfigError, match=r"refine\.irn\.image_scale=1\.5"):
        _cfg(tmp_path, "refine.irn.image_scale=1.5")


def test_stage_range_errors(tmp_path):
    from plda.errors import ConfigError
    from plda.pipeline.run import stage_range

    assert stage_range("cam", "seeds") == ["cam", "seeds"]
    with pytest.raises(ConfigError, match="unknown stage 'sed'"):
        stage_range(None, "sed")
    with pytest.raises(ConfigError, match="--from seeds comes after --until cam"):
        stage_range("seeds", "cam")


@pytest.mark.slow
def test_rerun_skips_and_changed_option_reruns_only_affected_stages(tmp_path):
    from plda.pipeline.run import plan, read_stage_records, run_pipeline

    run = tmp_path / "run"
    cfg = _cfg(run)
    assert set(plan(cfg, ["data", "train", "cam", "seeds"]).values()) == {"run"}
    first = run_pipeline(cfg, until="seeds", log=lambda _: None)
    records = read_stage_records(run)
    assert all(records[s]["done"] for s in ("data", "train", "cam", "seeds"))
    assert set(first["pipeline"]) == {"data", "train", "cam", "seeds"}
    weights = (run / "stage1.safetensors").stat().st_mtime_ns
    cams = {p: p.stat().st_mtime_ns for p in run.glob("cams/*/*.npz")}

    # Same config (bookkeeping changed only): everything skipped, files untouched.
    same = _cfg(run, "train.log_every=5")
    assert set(plan(same, ["data", "train", "cam", "seeds"]).values()) == {"skip"}
    messages: list[str] = []
    again = run_pipeline(same, until="seeds", log=messages.append)
    assert again["seeds"] == first["seeds"]
    assert all("skipped" in m for m in messages)
    assert (run / "stage1.safetensors").stat().st_mtime_ns == weights
    assert {p: p.stat().st_mtime_ns for p in run.glob("cams/*/*.npz")} == cams

    # A CAM option: training skipped, CAMs and seeds computed again.
    changed = _cfg(run, "cam.flip=false")
    assert plan(changed, ["data", "train", "cam", "seeds"]) == {
        "data": "skip", "train": "skip", "cam": "rerun", "seeds": "rerun"}
    messages.clear()
    run_pipeline(changed, until="seeds", log=messages.append)
    assert any(m.startswith("[cam] settings changed") for m in messages)
    assert (run / "stage1.safetensors").stat().st_mtime_ns == weights
    assert all(p.stat().st_mtime_ns != t for p, t in cams.items())
    assert read_stage_records(run)["cam"]["settings"]["flip"] is False

    # A deleted output is noticed: the stage runs again even though its record says done.
    for p in (run / "seeds").rglob("*.png"):
        p.unlink()
    (run / "seeds" / "train").rmdir()
    (run / "seeds" / "val").rmdir()
    (run / "seeds").rmdir()
    assert plan(changed, ["seeds"]) == {"seeds": "resume"}


def _run_cli(run: Path, extra: list[str], **kwargs) -> subprocess.Popen:
    env = {**os.environ, "PLDA_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    return subprocess.Popen([sys.executable, "-m", "plda", "run", "synth_cam", *TINY,
                             f"run_dir={run}", "train.epochs=3", *extra, "--until", "seeds"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, **kwargs)


def _wait_for(path_glob, run: Path, proc: subprocess.Popen, timeout: float = 300) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if any(run.glob(path_glob)):
            return
        if proc.poll() is not None:
            raise AssertionError(f"plda run ended before {path_glob}: {proc.stdout.read()}")
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {path_glob}")


@pytest.mark.slow
def test_run_killed_mid_stage_resumes_to_the_uninterrupted_result(tmp_path):
    """SIGKILL in the middle of stage-1 training and again in the middle of the CAM stage;
    the re-run resumes each and ends with the same weights, CAMs and seed scores."""
    from plda.data.camfile import load_cams
    from plda.pipeline.run import read_stage_records
    from plda.weights.io import load_state_dict_file

    clean = tmp_path / "clean"
    proc = _run_cli(clean, [])
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out

    killed = tmp_path / "killed"
    # Kill 1: once the first training checkpoint exists (training is 6 steps long).
    proc = _run_cli(killed, [])
    _wait_for("checkpoints/step_00000002.pt", killed, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "stage1.safetensors").exists()
    assert read_stage_records(killed)["train"]["done"] is False
    # Kill 2: in the CAM stage, after some CAM files are written.
    proc = _run_cli(killed, [])
    _wait_for("cams/train/*.npz", killed, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    # Finish.
    proc = _run_cli(killed, [])
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out
    assert "[train] up to date, skipped" in out and "[cam] resuming" in out

    a = load_state_dict_file(clean / "stage1.safetensors")
    b = load_state_dict_file(killed / "stage1.safetensors")
    assert a.keys() == b.keys() and all(np.array_equal(a[k].numpy(), b[k].numpy()) for k in a)
    for split in ("train", "val"):
        names = sorted(p.name for p in (clean / "cams" / split).glob("*.npz"))
        assert names == sorted(p.name for p in (killed / "cams" / split).glob("*.npz"))
        for name in names:
            x, y = load_cams(clean / "cams" / split / name), load_cams(killed / "cams" / split / name)
            assert np.array_equal(x.cams, y.cams) and np.array_equal(x.keys, y.keys)
    assert not [p for p in killed.rglob("*") if ".tmp" in p.name]
    m1 = json.loads((clean / "metrics.json").read_text())["seeds"]
    m2 = json.loads((killed / "metrics.json").read_text())["seeds"]
    assert m1 == m2


SEG_TINY = ["refine.method=pamr", "seg.model.pretrained=null", "seg.crop=64",
            "seg.train.iterations=4", "seg.train.batch_size=4", "seg.train.num_workers=0",
            "seg.train.log_every=1", "seg.train.checkpoint_every=2", "seg.scales=[1.0]"]


@pytest.mark.slow
def test_whole_chain_then_cached_then_only_evaluation_reruns(tmp_path, capsys):
    """data -> ... -> report on the tiny synthetic set; a second call skips every stage; a new
    evaluation scale re-runs segmentation evaluation and the report only."""
    from plda.pipeline.run import STAGES, format_metrics, plan, run_pipeline

    run = tmp_path / "run"
    cfg = _cfg(run, *SEG_TINY)
    metrics = run_pipeline(cfg, log=lambda _: None)
    assert set(metrics["pipeline"]) == set(STAGES)
    for section in ("seeds", "pseudo", "seg_train", "seg"):
        assert section in metrics, section
    assert 0.0 <= metrics["seg"]["val"]["miou"] <= 100.0
    assert len(list((run / "seg" / "val").glob("*.png"))) == 4
    assert len(list((run / "pseudo" / "train").glob("*.png"))) == 8
    assert (run / "deeplab" / "segmentation.safetensors").is_file()
    assert (run / "report.html").is_file()
    table = format_metrics(metrics)
    assert "segmentation" in table and "pseudo masks" in table

    assert set(plan(cfg).values()) == {"skip"}
    report_stamp = (run / "report.html").stat().st_mtime_ns
    run_pipeline(cfg, log=lambda _: None)
    assert (run / "report.html").stat().st_mtime_ns == report_stamp

    # What 'plda run' prints at the end: the table, the report, one line on what to try next.
    from plda.cli.main import main

    capsys.readouterr()
    assert main(["run", "synth_cam", *TINY, f"run_dir={run}", *SEG_TINY]) == 0
    out = capsys.readouterr().out
    assert "image-level classification on val: F1" in out and "segmentation" in out
    assert f"report: {(run / 'report.html').resolve()}" in out
    assert f"next: segment your own images with 'plda predict {run} IMAGES --out DIR'" in out
    assert (run / "report.html").stat().st_mtime_ns == report_stamp  # still nothing re-ran

    weights = (run / "deeplab" / "segmentation.safetensors").stat().st_mtime_ns
    changed = _cfg(run, *SEG_TINY, "seg.eval_flip=false")
    actions = plan(changed)
    assert [s for s, a in actions.items() if a != "skip"] == ["seg_eval", "report"]
    again = run_pipeline(changed, log=lambda _: None)
    assert (run / "deeplab" / "segmentation.safetensors").stat().st_mtime_ns == weights
    assert (run / "report.html").stat().st_mtime_ns != report_stamp
    assert set(again["pipeline"]) == set(STAGES)  # earlier timings kept, new ones merged


def test_dry_run_prints_each_stage_and_runs_nothing(tmp_path, capsys):
    from plda.cli.main import main

    run = tmp_path / "run"
    assert main(["run", "synth_cam", *TINY, f"run_dir={run}", "--from", "cam", "--until",
                 "seg_eval", "--dry-run"]) == 0
    lines = capsys.readouterr().out.split("\n")
    assert [line.split() for line in lines if line.strip()] == [
        ["cam", "run"], ["seeds", "run"], ["refine", "run"], ["seg_train", "run"],
        ["seg_eval", "run"]]
    assert not run.exists()


def test_overrides_after_an_option_still_count(tmp_path, capsys):
    """'plda run CONFIG --dry-run key=value': argparse leaves the trailing overrides over; they
    are overrides all the same (here run_dir: nothing exists there, so every stage would run),
    and anything else left over is still an error."""
    from plda.cli.main import main

    run = tmp_path / "run"
    assert main(["run", "synth_cam", "--dry-run", *TINY, f"run_dir={run}", "--until",
                 "seeds", "cam.flip=false"]) == 0
    out = [line.split() for line in capsys.readouterr().out.split("\n") if line.strip()]
    assert out == [["data", "run"], ["train", "run"], ["cam", "run"], ["seeds", "run"]]
    assert not run.exists()
    with pytest.raises(SystemExit):
        main(["run", "synth_cam", "--dry-run", f"run_dir={run}", "--bogus"])
    assert "unrecognized arguments: --bogus" in capsys.readouterr().err


def test_init_from_adds_plda_to_a_trained_cam_run_and_tracks_its_file(tmp_path, capsys):
    """``model.init_from``: a finished CAM run starts a cam_plda run (its weights loaded, PLDA's
    layers fresh, one line saying so); the train stage's fingerprint follows the baseline file's
    content, so re-training the baseline makes the PLDA run stale."""
    import torch

    from plda.methods.build import build_stage1_model
    from plda.pipeline.run import fingerprints, run_pipeline
    from plda.weights.io import load_state_dict_file, save_state_dict_file

    base = tmp_path / "cam"
    run_pipeline(_cfg(base, "train.epochs=null", "train.iterations=2"), until="train")
    plda_cfg = load_run_config("synth_cam_plda", [*TINY, f"run_dir={tmp_path / 'plda'}",
                                                  f"model.init_from={base}"])
    model = build_stage1_model(plda_cfg, 3)
    trained = load_state_dict_file(base / "stage1.safetensors")
    assert torch.equal(model.classifier.conv.weight, trained["classifier.conv.weight"])
    assert "initialised from" in capsys.readouterr().out
    before = fingerprints(plda_cfg)["train"]
    assert before != fingerprints(load_run_config(
        "synth_cam_plda", [*TINY, f"run_dir={tmp_path / 'plda'}"]))["train"]
    trained["classifier.conv.weight"] = trained["classifier.conv.weight"] + 1
    save_state_dict_file(base / "stage1.safetensors", trained)
    assert fingerprints(plda_cfg)["train"] != before
    # Runs without init_from keep the fingerprint they had before the setting existed: the
    # model section is the backbone's settings only.
    from plda.pipeline.run import stage_settings

    assert "init_from" not in stage_settings(_cfg(base), "train")["model"]
