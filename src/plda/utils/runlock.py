"""One writer per run folder: an advisory lock on ``<run>/.lock``.

Every command that writes into a run folder holds it (``plda run``, ``train``, ``cam``,
``seeds``, ``refine``, ``segment``); readers (``plda report``, ``plda eval``) do not. The lock is
``flock`` on an open file, so the operating system releases it when the process ends, however it
ends (SIGKILL included): no stale lock survives. The file records who holds it (pid, host,
command, start time), which the refused second writer prints. Under ``torchrun`` only global
rank 0 takes it, so a run has one holder, not one per rank; if rank 0 is refused it exits and
torchrun stops the other ranks.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import socket
import sys
from pathlib import Path
from typing import Iterator

from plda.errors import PldaError

LOCK_NAME = ".lock"
_held: dict[str, tuple[int, int]] = {}  # resolved folder -> (fd, depth), this process


class RunBusyError(PldaError):
    """Another process is writing into the run folder."""


def _rank() -> int:
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


def _holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
        return (f"process {info.get('pid')} on {info.get('host')} ('{info.get('command')}', "
                f"since {info.get('since')})")
    except (OSError, ValueError):
        return "another process"


@contextlib.contextmanager
def run_lock(folder: str | os.PathLike, command: str | None = None) -> Iterator[None]:
    """Hold the write lock of run folder ``folder`` (created if missing) for the block.

    Re-entrant within a process. Raises :class:`RunBusyError` at once, naming the holder, when
    another process holds it. On platforms without ``fcntl`` it does nothing."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no advisory locks here
        yield
        return
    if _rank() != 0:
        yield
        return
    folder = Path(folder)
    key = str(folder.resolve())
    if key in _held:
        fd, depth = _held[key]
        _held[key] = (fd, depth + 1)
        try:
            yield
        finally:
            fd, depth = _held[key]
            _held[key] = (fd, depth - 1)
        return
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise RunBusyError(
            f"run folder {folder} is in use by {_holder(path)}; wait for it to finish or stop it "
            "(two writers would mix their outputs), or give another run_dir=") from None
    try:
        record = {"pid": os.getpid(), "host": socket.gethostname(),
                  "command": command or " ".join(["plda", *sys.argv[1:]]),
                  "since": dt.datetime.now().isoformat(timespec="seconds")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
        _held[key] = (fd, 1)
        yield
    finally:
        fd, depth = _held.pop(key, (fd, 1))
        os.close(fd)  # closing the descriptor releases the lock
