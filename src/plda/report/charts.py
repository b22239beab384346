"""The report's charts, drawn by matplotlib as SVG and inlined in the page: no JavaScript, no
chart library at view time and no network, so the page opens the same way offline, years
later, in any browser.

Text stays text (``svg.fonttype: none``: the page's font, selectable, escaped by matplotlib).
The markup is made fit for inlining: no XML prologue, no metadata block, no namespace URLs, and
every element id prefixed with a digest of the chart, so two charts on one page never share an
id that means different things. The same data gives the same bytes.
"""

from __future__ import annotations

import hashlib
import io
import math
import re
from typing import Sequence

# A qualitative palette that stays distinguishable for the usual 2-8 series (Tableau 10).
SERIES_COLOURS = ("#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948",
                  "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac")
_AXIS = "#555555"
_GRID = "#e3e3e3"
_MARKER = "#d62728"
_DPI = 72  # 1 figure inch = 72 SVG user units, so sizes are given in pixels
_RC = {"svg.fonttype": "none", "svg.hashsalt": "plda-report", "font.size": 9,
       "font.family": "sans-serif", "axes.edgecolor": _AXIS, "axes.labelcolor": _AXIS,
       "xtick.color": _AXIS, "ytick.color": _AXIS, "axes.titlesize": 10,
       "axes.titleweight": "bold", "axes.titlelocation": "left", "legend.frameon": False}


def _figure(width: int, height: int):
    from matplotlib.figure import Figure

    return Figure(figsize=(width / _DPI, height / _DPI), dpi=_DPI)


def _to_svg(fig, label: str) -> str:
    """The figure as inline SVG markup (module docstring), with ``class="chart"``."""
    import matplotlib

    with matplotlib.rc_context(_RC):
        buffer = io.StringIO()
        fig.savefig(buffer, format="svg", metadata={"Date": None, "Creator": None,
                                                    "Format": None, "Type": None})
    text = buffer.getvalue()
    text = text[text.index("<svg"):]
    text = re.sub(r"<metadata>.*?</metadata>\s*", "", text, flags=re.S)
    text = re.sub(r'\s+xmlns(:\w+)?="[^"]*"', "", text)
    text = text.replace("xlink:href=", "href=")
    # Sizes in CSS pixels (matplotlib writes points): a W x H chart takes W x H on the page.
    text = re.sub(r'^(<svg[^>]*?\b(?:width|height)=")([\d.]+)pt"', r'\1\2"', text)
    text = re.sub(r'^(<svg[^>]*?\b(?:width|height)=")([\d.]+)pt"', r'\1\2"', text)
    prefix = "c" + hashlib.sha1(text.encode()).hexdigest()[:8] + "-"
    text = re.sub(r'\bid="([^"]+)"', lambda m: f'id="{prefix}{m.group(1)}"', text)
    text = re.sub(r'(url\(#|href="#)([^)"]+)', lambda m: f"{m.group(1)}{prefix}{m.group(2)}",
                  text)
    from html import escape

    return text.replace("<svg ", f'<svg class="chart" role="img" aria-label="{escape(label)}" ',
                        1).strip()


def _runs(xs: Sequence[float], ys: Sequence[float | None], log_y: bool
          ) -> list[list[tuple[float, float]]]:
    """The unbroken stretches of a series: a None, non-finite or (on a log axis) non-positive
    value breaks the line."""
    runs: list[list[tuple[float, float]]] = [[]]
    for x, y in zip(xs, ys):
        bad = y is None or not math.isfinite(float(y)) or not math.isfinite(float(x))
        if bad or (log_y and float(y) <= 0):
            if runs[-1]:
                runs.append([])
            continue
        runs[-1].append((float(x), float(y)))
    return [r for r in runs if r]


def _empty(width: int, title: str) -> str:
    fig = _figure(width, 60)
    fig.text(0.02, 0.5, f"{title}: no values" if title else "no values", color=_AXIS,
             va="center")
    return _to_svg(fig, title)


def line_chart(series: Sequence[tuple[str, Sequence[float], Sequence[float | None]]], *,
               width: int = 560, height: int = 300, x_label: str = "", y_label: str = "",
               title: str = "", marker_x: float | None = None, marker_label: str = "",
               log_y: bool = False, legend: bool = True,
               colours: Sequence[str] = SERIES_COLOURS) -> str:
    """Lines ``(label, xs, ys)`` on shared axes (``None`` / non-finite values break a line;
    each unbroken stretch is its own line, id ``<label>-<k>``; points are dotted up to 40 per
    stretch).

    ``marker_x`` draws a dashed vertical line with ``marker_label`` (e.g. the chosen
    background threshold). ``log_y`` uses a log axis when every value is positive (loss terms
    that fall by decades), and falls back to linear otherwise. Series take ``colours`` in turn.
    """
    import matplotlib

    values = [y for _, _, ys in series for y in ys
              if y is not None and math.isfinite(float(y))]
    if not values:
        return _empty(width, title)
    log_y = log_y and min(values) > 0
    with matplotlib.rc_context(_RC):
        fig = _figure(width, height)
        ax = fig.add_subplot()
        for i, (label, xs, ys) in enumerate(series):
            colour = colours[i % len(colours)]
            for k, run in enumerate(_runs(xs, ys, log_y)):
                line, = ax.plot(*zip(*run), color=colour, linewidth=1.8,
                                marker="o" if len(run) <= 40 else None, markersize=4,
                                label=label if k == 0 else None)
                line.set_gid(f"{label}-{k}")
        if log_y:
            ax.set_yscale("log")
        if marker_x is not None:
            ax.axvline(marker_x, color=_MARKER, linestyle="--", linewidth=1.5,
                       gid="marker")
            if marker_label:
                # At the foot of the line: a chosen threshold sits at the curve's peak.
                lo, hi = ax.get_xlim()
                right = (marker_x - lo) > 0.7 * (hi - lo)
                ax.annotate(marker_label, (marker_x, 0), xycoords=("data", "axes fraction"),
                            xytext=(-4 if right else 4, 6), textcoords="offset points",
                            ha="right" if right else "left", color=_MARKER)
        ax.grid(True, color=_GRID, linewidth=0.8)
        ax.set_axisbelow(True)
        if title:
            ax.set_title(title)
        ax.set_xlabel(x_label)
        ax.set_ylabel(y_label + (" (log)" if log_y else ""))
        if legend and len(series) > 1:
            ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=4)
        fig.tight_layout()
        return _to_svg(fig, title or y_label)


def grouped_hbar_chart(categories: Sequence[str],
                       groups: Sequence[tuple[str, Sequence[float | None]]], *,
                       width: int = 640, bar: int = 9, max_value: float = 100.0,
                       title: str = "", unit: str = "") -> str:
    """Horizontal bars: for each category (a class), one bar per group (a stage) in the
    group's colour, its value written at its end; a ``None`` value (class absent) is an em
    dash, not a zero bar."""
    import matplotlib

    row = bar * len(groups) + 6
    height = 70 + row * len(categories)
    with matplotlib.rc_context(_RC):
        fig = _figure(width, height)
        ax = fig.add_subplot()
        step = bar / row  # one bar's height in category units
        for g, (name, values) in enumerate(groups):
            colour = SERIES_COLOURS[g % len(SERIES_COLOURS)]
            for r in range(len(categories)):
                value = values[r] if r < len(values) else None
                y = r - 0.5 + 3 / row + (g + 0.5) * step
                if value is None:
                    ax.text(1, y, "—", color="#999999", va="center", fontsize=bar)
                    continue
                v = max(0.0, min(float(value), max_value))
                ax.barh(y, v, height=step * 0.9, color=colour,
                        label=name if r == 0 else None)
                ax.text(v + max_value * 0.005, y, f"{float(value):.1f}", va="center",
                        fontsize=bar, color="#444444")
        ax.set_yticks(range(len(categories)), list(categories))
        ax.set_ylim(len(categories) - 0.5, -0.5)
        ax.set_xlim(0, max_value * 1.08)
        ax.grid(True, axis="x", color=_GRID, linewidth=0.8)
        ax.set_axisbelow(True)
        if unit.strip():
            ax.set_xlabel(unit.strip())
        if title:
            ax.set_title(title)
        if groups:  # above the plot, right of the title
            ax.legend(loc="lower right", bbox_to_anchor=(1.0, 1.0), ncol=min(4, len(groups)),
                      borderaxespad=0.2)
        fig.tight_layout()
        return _to_svg(fig, title)


__all__ = ["SERIES_COLOURS", "grouped_hbar_chart", "line_chart"]
