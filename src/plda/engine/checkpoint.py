"""Training checkpoints: atomic writes, weights-only loads, ``step_XXXXXXXX.pt`` rotation.

A checkpoint holds only what ``torch.load(weights_only=True)`` accepts (tensors, numbers,
strings, lists, tuples, dicts, None), so loading one never runs code from the file.
"""

from __future__ import annotations

import io
import os
import pickle
import re
from pathlib import Path
from typing import Any

import torch

from plda.errors import WeightsError
from plda.utils.io import atomic_write_bytes, clean_stale_temporaries

_NAME_RE = re.compile(r"^step_(\d{8,})\.pt$")


class CheckpointRefused(WeightsError):
    """A checkpoint that holds more than tensors and plain values: refused, never unpickled,
    and never skipped in silence either (someone put a foreign file there)."""


def checkpoint_path(folder: str | os.PathLike, step: int) -> Path:
    return Path(folder) / f"step_{step:08d}.pt"


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Write ``state`` to ``path`` atomically (a killed writer leaves the previous file intact)."""
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load a checkpoint onto the CPU with ``weights_only=True``; ``WeightsError`` if unusable."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"checkpoint {str(path)!r} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        with open(path, "rb") as fh:
            head = fh.read(4)
        if head != b"PK\x03\x04":  # not torch's zip container at all: a damaged file
            raise WeightsError(f"checkpoint {str(path)!r} is not a readable torch file "
                               f"(UnpicklingError: {exc})") from None
        raise CheckpointRefused(
            f"checkpoint {str(path)!r} holds objects other than tensors and plain values and was "
            f"refused (weights_only=True): {exc}") from None
    except Exception as exc:  # noqa: BLE001 - a corrupt pickle can raise IndexError, KeyError...
        raise WeightsError(f"checkpoint {str(path)!r} is not a readable torch file "
                           f"({type(exc).__name__}: {exc})") from None
    if not isinstance(state, dict):
        raise WeightsError(f"checkpoint {str(path)!r} holds a {type(state).__name__}, "
                           "expected a dict")
    return state


def list_checkpoints(folder: str | os.PathLike) -> list[tuple[int, Path]]:
    """``(step, path)`` of the checkpoints in ``folder``, oldest first."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME_RE.match(p.name))]
    return sorted(found)


def latest_checkpoint(folder: str | os.PathLike) -> Path | None:
    """The highest-step checkpoint in ``folder`` (temporaries of a killed writer are removed)."""
    clean_stale_temporaries(folder)
    found = list_checkpoints(folder)
    return found[-1][1] if found else None


def readable_checkpoint(folder: str | os.PathLike) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint of ``folder`` that loads, with its state; each newer one that does
    not (truncated, corrupt) is named in a warning and skipped. None if there is none; a
    ``WeightsError`` if checkpoints exist but none loads."""
    import warnings

    clean_stale_temporaries(folder)
    found = list_checkpoints(folder)
    problems = []
    for _, path in reversed(found):
        try:
            state = load_checkpoint(path)
        except CheckpointRefused:
            raise
        except WeightsError as exc:
            problems.append(str(exc))
            warnings.warn(f"{exc}; falling back to an older checkpoint", stacklevel=2)
            continue
        return path, state
    if problems:
        raise WeightsError(f"no checkpoint in {folder} can be read: {'; '.join(problems)}")
    return None


def prune_checkpoints(folder: str | os.PathLike, keep: int) -> list[Path]:
    """Delete all but the ``keep`` newest checkpoints; return the deleted paths."""
    found = list_checkpoints(folder)
    doomed = [p for _, p in found[:-keep]] if keep > 0 else [p for _, p in found]
    for p in doomed:
        p.unlink(missing_ok=True)
    return doomed
