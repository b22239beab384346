"""Benchmark and experiment scripts. Each is a module of this package, run from the repository
root with the toolkit installed (``bash scripts/setup.sh``)::

    .venv/bin/python -m benchmarks.train_step --help

Shared pieces: :mod:`benchmarks.common` (the repository root, the commit, worker processes)
and :mod:`benchmarks.table` (the one table printer every script prints with).
"""

from __future__ import annotations
