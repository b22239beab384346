"""Operating-system, decoding and number errors: one message naming the path or value and what
to do, exit status 2, no traceback (``plda --debug`` shows it), and nothing finished is lost."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from plda.cli.main import main

from test_bad_input import make_dataset
from test_pipeline import TINY

pytestmark = pytest.mark.usefixtures("one_thread")


def _error(capsys, command: str) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith(f"plda {command}: error: ")]
    assert len(lines) == 1, err
    return lines[0]


def _eval_args(ds: Path, *extra: str) -> list[str]:
    return ["eval", "--pred", str(ds / "SegmentationClassAug"), "--gt",
            str(ds / "SegmentationClassAug"), "--classes", str(ds / "classes.txt"),
            "--workers", "0", *extra]


def test_a_list_file_that_is_not_utf8_is_named(tmp_path, capsys):
    ds = make_dataset(tmp_path / "ds")
    bad = tmp_path / "ids.txt"
    bad.write_bytes("img0\nimg1 caf\xe9\n".encode("latin-1"))
    assert main(_eval_args(ds, "--list", str(bad))) == 2
    line = _error(capsys, "eval")
    assert str(bad) in line and "not UTF-8" in line and "save it as UTF-8" in line


def test_byte_order_marks_are_accepted(tmp_path, capsys):
    ds = make_dataset(tmp_path / "ds")
    ids = tmp_path / "ids.txt"
    ids.write_bytes(b"\xef\xbb\xbfimg0\nimg1\n")
    classes = ds / "classes.txt"
    classes.write_bytes(b"\xef\xbb\xbf" + classes.read_bytes())
    assert main(_eval_args(ds, "--list", str(ids), "--json", str(tmp_path / "r.json"))) == 0
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["images"] == 2 and result["miou"] == pytest.approx(100.0)
    config = tmp_path / "bom.yaml"
    config.write_bytes(b"\xef\xbb\xbfextends: synth_cam\ntrain: {lr: 0.02}\n")
    from plda.config import load_run_config

    assert load_run_config(config).train.lr == 0.02


def test_a_decompression_bomb_is_a_data_error_that_skip_bad_skips(tmp_path, capsys,
                                                                  monkeypatch):
    ds = make_dataset(tmp_path / "ds")
    # Pillow refuses images over twice MAX_IMAGE_PIXELS; a small limit makes a 40x40 PNG one.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 700)
    bomb = ds / "SegmentationClassAug" / "img2.png"
    Image.fromarray(np.zeros((40, 40), np.uint8)).save(bomb)
    assert main(_eval_args(ds)) == 2
    line = _error(capsys, "eval")
    assert str(bomb) in line and "decompression bomb" in line
    assert main(_eval_args(ds, "--skip-bad", "--json", str(tmp_path / "r.json"))) == 0
    result = json.loads((tmp_path / "r.json").read_text())
    assert [s["id"] for s in result["skipped"]] == ["img2"] and result["images"] == 3


@pytest.mark.parametrize("argv, fragment", [
    (["eval", "--cams", "C", "--gt", "G", "--sweep", "0:inf:0.1"], "expected finite numbers"),
    (["eval", "--cams", "C", "--gt", "G", "--sweep", "0.2:0.6:1e-9"], "at most 1000"),
    (["train", "synth_cam", "train.lr=.nan"], "'train.lr': expected float, got nan"),
    (["train", "synth_cam", "train.lr=nan"], "'train.lr': expected float, got 'nan'"),
    (["train", "synth_cam", "train.momentum=1.5"], "train.momentum: expected a number in [0, 1)"),
    (["train", "synth_cam", "cam.bg_threshold=.inf"], "expected a finite number"),
    (["train", "synth_cam", "cam.score_threshold=2"], "cam.score_threshold=2.0: expected"),
    (["train", "synth_cam", "method.plda.tau=.nan"], "'method.plda.tau'"),
])
def test_non_finite_and_out_of_range_numbers_are_refused(argv, fragment, capsys):
    assert main(argv) == 2
    assert fragment in _error(capsys, argv[0])


def test_predict_scales_must_be_finite():
    from plda.cli.predict import parse_scales
    from plda.errors import ConfigError

    for spec in ("nan", "1.0,inf", "-1"):
        with pytest.raises(ConfigError, match="positive finite numbers"):
            parse_scales(spec)


def test_bg_threshold_on_the_command_line_must_be_in_range(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", "--cams", "C", "--gt", "G", "--bg-threshold", "nan"])
    assert exit_info.value.code == 2
    assert "expected a number in [0, 1]" in capsys.readouterr().err


def test_output_paths_under_a_file_or_on_a_folder_are_named(tmp_path, capsys):
    ds = make_dataset(tmp_path / "ds")
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    assert main(_eval_args(ds, "--json", str(blocker / "r.json"))) == 2
    line = _error(capsys, "eval")
    assert str(blocker) in line and "a part of the path is a file" in line
    folder = tmp_path / "afolder"
    folder.mkdir()
    assert main(_eval_args(ds, "--json", str(folder))) == 2
    line = _error(capsys, "eval")
    assert str(folder) in line and "is a folder where a file was expected" in line


def test_debug_shows_the_traceback(tmp_path):
    ds = make_dataset(tmp_path / "ds")
    bad = tmp_path / "ids.txt"
    bad.write_bytes(b"\xff\xfe")
    from plda.errors import DataError

    with pytest.raises(DataError, match="not UTF-8"):
        main(["--debug", *_eval_args(ds, "--list", str(bad))])


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _full_disk_then_resume(run: Path, fill, free, capsys) -> None:
    """Fill the disk during the CAM stage of a finished run's re-run; the error names it, the
    trained weights and every CAM file written before stay intact, and after ``free`` the same
    command finishes without redoing them."""
    weights = _sha(run / "stage1.safetensors")
    argv = ["run", str(run), "cam.flip=false", "--until", "seeds"]
    fill()
    assert main(argv) == 2
    line = _error(capsys, "run")
    assert "No space left on device" in line and "the disk is full" in line
    assert "run the same command again" in line
    assert _sha(run / "stage1.safetensors") == weights
    written = {p: p.stat().st_mtime_ns for p in run.glob("cams/*/*.npz")}
    for p in written:
        np.load(p)  # complete files only: every write is atomic
    free()
    assert main(argv) == 0
    assert _sha(run / "stage1.safetensors") == weights
    assert all(p.stat().st_mtime_ns == t for p, t in written.items())
    assert json.loads((run / "metrics.json").read_text())["seeds"]["bg_threshold"] is not None


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("full") / "run"
    assert main(["run", "synth_cam", *TINY, f"run_dir={run}", "--until", "seeds"]) == 0
    return run


def test_a_full_disk_is_a_message_and_the_run_resumes(finished_run, tmp_path, capsys,
                                                      monkeypatch):
    """Simulated: the CAM writer fails with ENOSPC after two files."""
    import plda.data.camfile as camfile

    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    real = camfile.atomic_save_npz
    calls = {"n": 0}

    def failing(path, **arrays):
        calls["n"] += 1
        if calls["n"] > 2:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real(path, **arrays)

    _full_disk_then_resume(run, lambda: monkeypatch.setattr(camfile, "atomic_save_npz", failing),
                           lambda: monkeypatch.setattr(camfile, "atomic_save_npz", real), capsys)


def test_a_full_tmpfs_is_a_message_and_the_run_resumes(finished_run, tmp_path, capsys):
    """A real full disk: a tmpfs just larger than the run (where this test may mount one)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    assert len(list(finished_run.glob("cams/*/*.npz"))) > 4
    size_mb = 16 + sum(p.stat().st_size for p in finished_run.rglob("*") if p.is_file()) // 2**20
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs",
                              str(mount)], capture_output=True).returncode == 0
    if not mounted:
        pytest.skip("cannot mount a tmpfs here (the simulated ENOSPC test covers it)")
    try:
        run = mount / "run"
        shutil.copytree(finished_run, run, ignore=shutil.ignore_patterns("*.npz", "checkpoints"))
        filler = mount / "filler"

        def fill() -> None:  # leave two pages: room for a CAM file or two, not twelve
            stat = os.statvfs(mount)
            filler.write_bytes(b"\0" * (stat.f_bavail * stat.f_frsize - 8192))

        _full_disk_then_resume(run, fill, filler.unlink, capsys)
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)
