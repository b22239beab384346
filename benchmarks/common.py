"""What the benchmark scripts share: where the repository and the real sample are, the commit
a measurement was taken at, and worker processes that run one variant each."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT / ".." / "shared" / "data" / "voc12-subset"


def commit() -> str | None:
    """The repository's short commit (with ``+dirty`` when the tree has changes), or None."""
    from plda.utils.provenance import git_commit

    return git_commit(ROOT)


def module_command(module: str, *args: str) -> list[str]:
    """The command that runs ``benchmarks.<module>`` with ``args`` in a new interpreter (from
    the repository root: run it with ``cwd=ROOT``)."""
    return [sys.executable, "-m", f"benchmarks.{module}", *map(str, args)]


def with_pythonpath(env: dict, *paths) -> dict:
    """``env`` with ``paths`` put first on ``PYTHONPATH`` (a checkout of published code a worker
    imports), the repository root kept on it so ``benchmarks`` still imports."""
    parts = [*map(str, paths), str(ROOT), env.get("PYTHONPATH", "")]
    return {**env, "PYTHONPATH": os.pathsep.join(p for p in parts if p)}


def run_worker(cmd: list[str], env: dict | None, what: str) -> dict:
    """Run one worker (its last stdout line is a JSON object) from the repository root; exit
    with its stderr when it fails."""
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT,
                         env=with_pythonpath(dict(env if env is not None else os.environ)))
    if out.returncode != 0:
        sys.stderr.write(out.stderr)
        raise SystemExit(f"benchmark variant {what} failed (exit {out.returncode})")
    return json.loads(out.stdout.strip().splitlines()[-1])


def preset_methods(preset: str) -> tuple[str, ...]:
    """The registered stage-1 methods (``plda.registry.METHODS``) that have a preset named
    ``preset.format(method=name)``, in registration order: a method added with its preset
    joins every benchmark that runs the presets of its kind."""
    from plda.config.loader import PRESET_DIR
    from plda.registry import METHODS

    return tuple(m for m in METHODS.names()
                 if (PRESET_DIR / f"{preset.format(method=m)}.yaml").is_file())
