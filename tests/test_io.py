"""Atomic writes, temporary-file cleanup and path safety (plda.utils.io)."""

from __future__ import annotations

import os
import stat

import pytest

from plda.errors import DataError
from plda.utils import io as pio


def test_atomic_write_replaces_whole_file_and_keeps_the_old_one_on_error(tmp_path):
    target = tmp_path / "sub" / "a.json"
    pio.atomic_write_json(target, {"x": 1})
    assert target.read_text().strip().startswith("{")
    with pytest.raises(RuntimeError):
        with pio.atomic_write(target, "w") as fh:
            fh.write("half")
            raise RuntimeError("killed mid-write")
    assert '"x": 1' in target.read_text()
    assert sorted(p.name for p in target.parent.iterdir()) == ["a.json"]


def test_atomic_write_gives_the_usual_file_mode(tmp_path):
    old = os.umask(0o022)
    try:
        mode = pio._default_file_mode()
    finally:
        os.umask(old)
    assert mode == 0o644
    pio.atomic_write_text(tmp_path / "r.html", "<p>hi</p>")
    assert stat.S_IMODE((tmp_path / "r.html").stat().st_mode) == pio._FILE_MODE
    assert pio._FILE_MODE & 0o044  # readable by others unless the umask says otherwise


def test_clean_stale_temporaries_only_named_ones(tmp_path):
    mine = tmp_path / ".tmp-a.png.x1y2"
    other = tmp_path / ".tmp-b.png.z9"
    for p in (mine, other, tmp_path / "a.png"):
        p.write_bytes(b"")
    assert pio.clean_stale_temporaries(tmp_path, ["a.png"]) == 1
    assert not mine.exists() and other.exists() and (tmp_path / "a.png").exists()
    assert pio.clean_stale_temporaries(tmp_path) == 1 and not other.exists()
    assert pio.clean_stale_temporaries(tmp_path / "missing") == 0


@pytest.mark.parametrize("bad", ["../../etc/passwd", "/etc/passwd", "a/b", "..", "", "a\\b",
                                 "x\n", ".hidden", "a..b"])
def test_ids_that_could_escape_are_rejected(bad):
    with pytest.raises(DataError, match="invalid image id"):
        pio.check_id(bad, "train.txt")


def test_safe_join(tmp_path):
    assert pio.safe_join(tmp_path, "a.png") == (tmp_path / "a.png").resolve()
    with pytest.raises(DataError, match="escapes the root"):
        pio.safe_join(tmp_path, "../x.png")
