"""Check every image and mask a run will use before any training: readable (fully decoded),
mask the size of its image, mask values in range, image-level labels present.

All problems are collected and reported together in one ``DataError`` (not one per run), the
files are checked in parallel, and what passed is remembered in ``<run_dir>/data_check.json``
keyed by each file's size and modification time, so a re-run checks only what changed.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Iterable

from plda.errors import DataError, PldaError
from plda.utils.io import atomic_write_json

CHECK_FILE = "data_check.json"
SHOWN = 20  # problems listed in the error; the count says how many more


def _signature(path: Path | None) -> list[int] | None:
    if path is None:
        return None
    try:
        stat = path.stat()
    except OSError:
        return None
    return [stat.st_size, stat.st_mtime_ns]


def _path(getter, image_id: str) -> Path | None:
    try:
        return getter(image_id)
    except PldaError:  # a missing file: the check of that id reports it
        return None


def _check_one(root: str, image_id: str) -> str | None:
    """A problem with ``image_id`` of the dataset at ``root``, or None."""
    from plda.data.layout import DatasetLayout

    layout = DatasetLayout(root)
    try:
        image = layout.load_image(image_id)  # decodes every pixel
        mask_path = layout.mask_path(image_id)
        if mask_path is not None:
            layout.load_mask(image_id)  # values and size against the image
        layout.labels(image_id)
        del image
    except PldaError as exc:
        return str(exc)
    except (OSError, ValueError, MemoryError) as exc:  # anything a decoder may raise
        return f"image {image_id!r}: {type(exc).__name__}: {exc}"
    return None


def _check_many(root: str, ids: list[str]) -> list[tuple[str, str | None]]:
    return [(i, _check_one(root, i)) for i in ids]


def check_dataset(layout: Any, splits: Iterable[str], cache_dir: str | os.PathLike | None = None,
                  workers: int | None = None) -> dict[str, int]:
    """Check the images (and masks, where there are) of ``splits``; raise one ``DataError``
    listing every problem. Returns ``{"checked": n, "cached": m}``."""
    from plda.utils.progress import progress_bar

    root = Path(layout.root)
    ids = list(dict.fromkeys(i for split in splits for i in layout.ids(split)))
    cache_path = Path(cache_dir) / CHECK_FILE if cache_dir is not None else None
    cache: dict[str, Any] = {}
    if cache_path is not None and cache_path.is_file():
        try:
            saved = json.loads(cache_path.read_text(encoding="utf-8"))
            if saved.get("root") == str(root.resolve()):
                cache = saved.get("ok", {})
        except (OSError, ValueError, AttributeError):
            cache = {}
    signatures = {i: [_signature(_path(layout.image_path, i)),
                      _signature(_path(layout.mask_path, i))] for i in ids}
    todo = [i for i in ids if cache.get(i) != signatures[i]]
    problems: dict[str, str] = {}
    if todo:
        workers = min(os.cpu_count() or 1, 8) if workers is None else workers
        size = max(1, min(64, -(-len(todo) // (4 * max(1, workers)))))
        chunks = [todo[k:k + size] for k in range(0, len(todo), size)]
        bar = progress_bar(len(todo), desc="check data", unit="img")
        try:
            if workers > 1 and len(chunks) > 1:
                with ProcessPoolExecutor(workers) as pool:
                    for results in pool.map(_check_many, [str(root)] * len(chunks), chunks):
                        _collect(results, problems, bar)
            else:
                for chunk in chunks:
                    _collect(_check_many(str(root), chunk), problems, bar)
        finally:
            bar.close()
    ok = {i: signatures[i] for i in ids if i not in problems}
    if cache_path is not None:
        merged = {**cache, **ok}
        for i in problems:
            merged.pop(i, None)
        atomic_write_json(cache_path, {"root": str(root.resolve()), "ok": merged}, indent=None)
    if problems:
        # The first problem on the first line, each other one on a line of its own.
        lines = [f"{i}: {msg}" for i, msg in list(problems.items())[:SHOWN]]
        more = len(problems) - SHOWN
        raise DataError(f"{len(problems)} of {len(ids)} images of {root} cannot be used "
                        f"(nothing was trained; fix or remove them from the split lists): "
                        + "\n  ".join(lines) + (f"\n  ... and {more} more" if more > 0 else ""))
    return {"checked": len(todo), "cached": len(ids) - len(todo)}


def _collect(results, problems: dict[str, str], bar) -> None:
    for image_id, problem in results:
        if problem is not None:
            problems[image_id] = problem
        bar.update(1)
