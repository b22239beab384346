"""The one table printer of the benchmark scripts: a list of rows under a header, as aligned
plain text for the terminal or as a Markdown table for the docs (``markdown=True``).

Cells are formatted by column: ``formats`` maps a column to a format spec (``".1f"``) or a
function; ``None`` prints as ``-``. Numbers are right-aligned, text left-aligned.
"""

from __future__ import annotations

from numbers import Number
from typing import Any, Callable, Mapping, Sequence

MISSING = "-"


def _cell(value: Any, fmt: str | Callable[[Any], str] | None) -> str:
    if value is None:
        return MISSING
    if callable(fmt):
        return fmt(value)
    if fmt is not None and isinstance(value, Number):
        return format(value, fmt)
    return str(value)


def format_table(columns: Sequence[str], rows: Sequence[Sequence[Any] | Mapping[str, Any]],
                 formats: Mapping[str, str | Callable[[Any], str]] | None = None, *,
                 markdown: bool = False) -> str:
    """``rows`` (sequences in column order, or mappings keyed by column) as a table."""
    formats = formats or {}
    body = []
    numeric = [True] * len(columns)
    for row in rows:
        values = [row.get(c) for c in columns] if isinstance(row, Mapping) else list(row)
        if len(values) != len(columns):
            raise ValueError(f"row {values!r} has {len(values)} cells for {len(columns)} columns")
        for k, v in enumerate(values):
            if v is not None and not isinstance(v, Number):
                numeric[k] = False
        body.append([_cell(v, formats.get(c)) for v, c in zip(values, columns)])
    if markdown:
        lines = ["| " + " | ".join(columns) + " |",
                 "|" + "|".join("---:" if n and body else "---" for n in numeric) + "|"]
        lines += ["| " + " | ".join(r) + " |" for r in body]
        return "\n".join(lines)
    widths = [max([len(c), *(len(r[k]) for r in body)]) for k, c in enumerate(columns)]

    def line(cells):
        return "  ".join(c.rjust(w) if n else c.ljust(w)
                         for c, w, n in zip(cells, widths, numeric)).rstrip()

    return "\n".join([line(columns), *(line(r) for r in body)])


def print_table(columns, rows, formats=None, *, markdown: bool = False, title: str = "") -> None:
    if title:
        print(title)
    print(format_table(columns, rows, formats, markdown=markdown), flush=True)
