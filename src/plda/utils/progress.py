"""Progress bars shown on rank 0 only: items done, rate and ETA (tqdm)."""

from __future__ import annotations

import os
import sys
from typing import Iterable, Iterator, TypeVar

from plda.utils.dist import is_main_process

T = TypeVar("T")


def _disabled() -> bool:
    return not is_main_process() or os.environ.get("PLDA_NO_PROGRESS", "") not in ("", "0")


def progress(iterable: Iterable[T], total: int | None = None, desc: str = "", unit: str = "it",
             **kwargs) -> Iterator[T]:
    """Wrap ``iterable`` in a tqdm bar on rank 0 (stderr); a plain iterator elsewhere."""
    from tqdm.auto import tqdm

    return iter(tqdm(iterable, total=total, desc=desc, unit=unit, disable=_disabled(),
                     file=sys.stderr, dynamic_ncols=True, **kwargs))


def progress_bar(total: int | None, desc: str = "", unit: str = "it", initial: int = 0, **kwargs):
    """A manually-updated bar (``.update(n)``, ``.set_postfix(...)``); silent off rank 0."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, initial=initial, disable=_disabled(),
                file=sys.stderr, dynamic_ncols=True, **kwargs)
