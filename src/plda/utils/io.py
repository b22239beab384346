"""Atomic file writing and safe path handling.

Every file the toolkit writes goes through :func:`atomic_write`: data is written to a temporary
file in the destination folder, flushed, fsync'ed and renamed over the target, so a run killed
at any moment leaves either the old file or the complete new one, never a partial file.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import tempfile
from pathlib import Path
from typing import IO, Any, Iterator

from plda.errors import DataError

_TMP_PREFIX = ".tmp-"


def read_text_file(path: str | os.PathLike, what: str = "file", error: type = DataError) -> str:
    """The text of a UTF-8 file (a leading byte-order mark is accepted and dropped); an
    unreadable or non-UTF-8 file is an ``error`` naming it, the byte offset and what to do."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise error(f"cannot read {what} {path}: {exc.strerror or exc}") from exc
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise error(f"{what} {path} is not UTF-8 text (byte {exc.start}: {exc.reason}); save it "
                    "as UTF-8") from exc


def check_output_file(path: str | os.PathLike, what: str = "output") -> Path:
    """Refuse, before any work, an output file path that names a folder or lies under a file."""
    from plda.errors import ConfigError

    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{what} {path} is a folder where a file was expected: give a file "
                          "path")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ConfigError(f"{what} {path}: {parent} is a file (a part of the path is a "
                                  "file, not a folder): choose another path")
            break
    return path


def _default_file_mode() -> int:
    # mkstemp makes 0600 files; a finished file gets the mode open() would have given it.
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


_FILE_MODE = _default_file_mode()


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary file next to ``path``; on success rename it onto ``path``.

    On an exception the temporary file is removed and ``path`` is untouched.
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_write mode must be 'wb' or 'w', got {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=_TMP_PREFIX + path.name + ".", dir=path.parent)
    try:
        with os.fdopen(fd, mode, **({"encoding": "utf-8"} if mode == "w" else {})) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_write(path, "wb") as fh:
        fh.write(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_write(path, "w") as fh:
        fh.write(text)


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> None:
    atomic_write_text(path, json.dumps(obj, indent=indent, sort_keys=False) + "\n")


def atomic_save_image(path: str | os.PathLike, image: "Any", format: str | None = None) -> None:
    """Save a PIL image atomically (format guessed from the suffix unless given)."""
    path = Path(path)
    fmt = format or {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG"}.get(path.suffix.lower(), "PNG")
    buf = io.BytesIO()
    image.save(buf, format=fmt)
    atomic_write_bytes(path, buf.getvalue())


def atomic_save_npz(path: str | os.PathLike, **arrays: Any) -> None:
    """``numpy.savez_compressed`` made atomic."""
    import numpy as np

    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


def clean_stale_temporaries(folder: str | os.PathLike, names=None) -> int:
    """Remove temporary files left by a killed writer in ``folder``; return how many.

    With ``names``, only the temporaries of those target file names are removed, so one rank
    never deletes a file another rank is writing.
    """
    n = 0
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    wanted = None if names is None else set(names)
    for p in folder.glob(_TMP_PREFIX + "*"):
        if wanted is not None and p.name[len(_TMP_PREFIX):].rsplit(".", 1)[0] not in wanted:
            continue
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
            n += 1
    return n


# Ids are file stems: letters, digits and a few separators; never a path.
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")


def check_id(image_id: str, source: str = "") -> str:
    """Return ``image_id`` if it is a safe file stem, else raise ``DataError``.

    Rejects anything that could escape the dataset root (``..``, ``/``, ``\\``, absolute paths,
    empty strings, control characters).
    """
    where = f" in {source}" if source else ""
    if not isinstance(image_id, str) or not _ID_RE.fullmatch(image_id) or ".." in image_id:
        raise DataError(
            f"invalid image id {image_id!r}{where}: expected a file stem of letters, digits, "
            "'_', '-' and '.' (no path separators, no '..')"
        )
    return image_id


def safe_join(root: str | os.PathLike, *parts: str) -> Path:
    """Join ``parts`` under ``root`` and refuse a result outside ``root``."""
    root_r = Path(root).resolve()
    p = root_r.joinpath(*parts).resolve()
    if p != root_r and root_r not in p.parents:
        raise DataError(f"path {'/'.join(parts)!r} escapes the root folder {str(root)!r}")
    return p
