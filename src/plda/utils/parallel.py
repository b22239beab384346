"""Map a function over chunks of image ids in worker processes and sum what it returns: the
engine of every whole-split evaluation and histogram."""

from __future__ import annotations

import math
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Callable, Iterable, Sequence, TypeVar

import numpy as np

from plda.errors import DataError
from plda.utils.progress import progress, progress_bar

T = TypeVar("T")
R = TypeVar("R")

# Below this many images a pool costs more than it saves.
MIN_IMAGES_FOR_POOL = 32


def default_workers() -> int:
    """Worker processes used when ``num_workers`` is ``None``: the CPU count, at most 8."""
    return max(1, min(8, os.cpu_count() or 1))


def map_sum(fn: Callable[..., tuple[np.ndarray, list]], ids: Sequence[str], args: tuple,
            num_workers: int | None, desc: str) -> tuple[np.ndarray, list[tuple[str, str]]]:
    """Run ``fn(chunk, *args)`` over chunks of ``ids`` in worker processes; sum the arrays and
    gather the skipped ``(id, reason)`` pairs, in the order of ``ids``."""
    ids = list(ids)
    if not ids:
        raise DataError("no images to evaluate (the id list is empty)")
    workers = default_workers() if num_workers is None else max(0, int(num_workers))
    if len(ids) < MIN_IMAGES_FOR_POOL:
        workers = 0
    chunk = max(1, min(64, math.ceil(len(ids) / (max(workers, 1) * 4))))
    chunks = [ids[i:i + chunk] for i in range(0, len(ids), chunk)]
    total = None
    skipped: list[tuple[str, str]] = []
    with progress_bar(len(ids), desc=desc, unit="img") as bar:
        if workers <= 1:
            for part_ids in chunks:
                part, part_skipped = fn(part_ids, *args)
                total = part if total is None else total + part
                skipped += part_skipped
                bar.update(len(part_ids))
            return total, _in_order(skipped, ids)
        # fork shares the parent's imports, so the pool starts in milliseconds.
        methods = multiprocessing.get_all_start_methods()
        ctx = multiprocessing.get_context("fork" if "fork" in methods else None)
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
            futures = {pool.submit(fn, part_ids, *args): len(part_ids) for part_ids in chunks}
            try:
                for fut in as_completed(futures):
                    part, part_skipped = fut.result()
                    total = part if total is None else total + part
                    skipped += part_skipped
                    bar.update(futures[fut])
            except BaseException:
                pool.shutdown(wait=False, cancel_futures=True)
                raise
    return total, _in_order(skipped, ids)


def _in_order(skipped: list[tuple[str, str]], ids: Sequence[str]) -> list[tuple[str, str]]:
    position = {image_id: i for i, image_id in enumerate(ids)}
    return sorted(skipped, key=lambda item: position[item[0]])


def map_in_workers(fn: Callable[[T], R], items: Iterable[T], workers: int, *, desc: str = "",
                   unit: str = "img", mp_context: str = "spawn") -> list[R]:
    """``[fn(x) for x in items]`` over ``workers`` processes, in order, with a progress bar.

    ``workers <= 1`` runs in this process. ``fn`` and the items must be picklable (``fn`` a
    module-level function). Workers start with ``spawn`` by default: forking a process whose
    torch/OpenMP thread pools are already running can deadlock the children.
    """
    items = list(items)
    if workers <= 1 or len(items) <= 1:
        return [fn(x) for x in progress(items, total=len(items), desc=desc, unit=unit)]
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    ctx = multiprocessing.get_context(mp_context)
    with ProcessPoolExecutor(max_workers=min(workers, len(items)), mp_context=ctx) as pool:
        try:
            return list(progress(pool.map(fn, items), total=len(items), desc=desc, unit=unit))
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise
