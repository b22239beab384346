"""Where a measurement came from: the code's commit (for result files and benchmark tables)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path


def git_commit(where: str | os.PathLike | None = None) -> str | None:
    """The short commit of the checkout holding ``where`` (default: this package's checkout);
    where the code is a copy without git, the ``PLDA_COMMIT`` environment variable names it."""
    folder = Path(where) if where is not None else Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "-C", str(folder), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True)
        found = out.stdout.strip() if out.returncode == 0 else ""
    except OSError:
        found = ""
    return found or os.environ.get("PLDA_COMMIT") or None
