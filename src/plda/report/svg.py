"""Charts drawn as inline SVG strings, so that the report needs no JavaScript, no chart library
and no network: it opens the same way offline, years later, in any browser.

Every text that reaches the markup goes through :func:`html.escape`; hovering a point or a bar
shows its exact value through an SVG ``<title>``.
"""

from __future__ import annotations

import math
from html import escape
from typing import Sequence

# A qualitative palette that stays distinguishable for the usual 2-8 series (Tableau 10).
SERIES_COLOURS = ("#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948",
                  "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac")
_AXIS = "#555"
_GRID = "#e3e3e3"
_FONT = 'font-family="inherit" font-size="11"'


def _fmt(value: float) -> str:
    """A short label: tick values stay free of float noise such as 0.30000000000000004."""
    if value == 0:
        return "0"
    magnitude = abs(value)
    if magnitude >= 1000 or magnitude < 1e-3:
        return f"{value:.3g}"
    return f"{value:.4g}"


def nice_ticks(low: float, high: float, count: int = 5, integer: bool = False) -> list[float]:
    """About ``count`` round tick values (1, 2, 2.5 or 5 times a power of ten) covering
    ``low..high``; a degenerate range is widened so that the axis still has a scale.
    ``integer`` keeps steps whole (training steps have no step 1.5)."""
    if not (math.isfinite(low) and math.isfinite(high)):
        raise ValueError(f"tick range must be finite, got {low}..{high}")
    if high < low:
        low, high = high, low
    if high == low:
        pad = abs(low) * 0.1 or 1.0
        low, high = low - pad, high + pad
    raw = (high - low) / max(count, 1)
    power = 10.0 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)
    if integer:
        step = max(1.0, float(math.ceil(step)))
    first = math.floor(low / step + 1e-9) * step
    ticks = [round(first, 12)]
    while ticks[-1] < high - step * 1e-9:  # the last tick reaches the data's maximum
        ticks.append(round(first + len(ticks) * step, 12))
    return ticks


def _log_ticks(low: float, high: float) -> list[float]:
    lo, hi = math.floor(math.log10(low)), math.ceil(math.log10(high))
    if hi == lo:
        hi += 1
    return [10.0 ** p for p in range(lo, hi + 1)]


def line_chart(series: Sequence[tuple[str, Sequence[float], Sequence[float | None]]], *,
               width: int = 560, height: int = 300, x_label: str = "", y_label: str = "",
               title: str = "", marker_x: float | None = None, marker_label: str = "",
               log_y: bool = False, legend: bool = True,
               colours: Sequence[str] = SERIES_COLOURS) -> str:
    """Lines ``(label, xs, ys)`` on shared axes (``None`` / non-finite values break a line).

    ``marker_x`` draws a dashed vertical line with ``marker_label`` (e.g. the chosen
    background threshold). ``log_y`` uses a log axis when every value is positive (loss terms
    that fall by decades), and falls back to linear otherwise. Series take ``colours`` in turn.
    """
    points = [(float(x), float(y)) for _, xs, ys in series for x, y in zip(xs, ys)
              if y is not None and math.isfinite(float(y)) and math.isfinite(float(x))]
    if not points:
        return (f'<svg class="chart" width="{width}" height="60" role="img" '
                f'viewBox="0 0 {width} 60"><text x="10" y="30" {_FONT} fill="{_AXIS}">'
                f'{escape(title)}: no values</text></svg>')
    xs_all = [p[0] for p in points] + ([marker_x] if marker_x is not None else [])
    ys_all = [p[1] for p in points]
    log_y = log_y and min(ys_all) > 0
    left, right, top = 56, 14, 30 if title else 12
    legend_rows = math.ceil(len(series) / 4) if legend and len(series) > 1 else 0
    bottom = 40 + 16 * legend_rows
    plot_w, plot_h = width - left - right, height - top - bottom
    x_ticks = nice_ticks(min(xs_all), max(xs_all), 6,
                         integer=all(float(x).is_integer() for x in xs_all))
    x_lo, x_hi = min(x_ticks[0], min(xs_all)), max(x_ticks[-1], max(xs_all))
    if log_y:
        y_ticks = _log_ticks(min(ys_all), max(ys_all))
        y_lo, y_hi = math.log10(y_ticks[0]), math.log10(y_ticks[-1])
    else:
        y_ticks = nice_ticks(min(ys_all), max(ys_all), 5)
        y_lo, y_hi = y_ticks[0], y_ticks[-1]

    def sx(x: float) -> float:
        return left + (x - x_lo) / ((x_hi - x_lo) or 1.0) * plot_w

    def sy(y: float) -> float:
        v = math.log10(y) if log_y else y
        return top + plot_h - (v - y_lo) / ((y_hi - y_lo) or 1.0) * plot_h

    out = [f'<svg class="chart" width="{width}" height="{height}" viewBox="0 0 {width} '
           f'{height}" role="img" aria-label="{escape(title or y_label)}">']
    if title:
        out.append(f'<text x="{left}" y="16" {_FONT} font-weight="600" fill="#222">'
                   f'{escape(title)}</text>')
    for t in y_ticks:
        y = sy(t)
        out.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{y:.1f}" y2="{y:.1f}" '
                   f'stroke="{_GRID}"/>')
        out.append(f'<text x="{left - 6}" y="{y + 4:.1f}" {_FONT} text-anchor="end" '
                   f'fill="{_AXIS}">{escape(_fmt(t))}</text>')
    for t in x_ticks:
        x = sx(t)
        out.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{top + plot_h}" y2="{top + plot_h + 4}" '
                   f'stroke="{_AXIS}"/>')
        out.append(f'<text x="{x:.1f}" y="{top + plot_h + 16}" {_FONT} text-anchor="middle" '
                   f'fill="{_AXIS}">{escape(_fmt(t))}</text>')
    out.append(f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="none" '
               f'stroke="{_AXIS}"/>')
    if x_label:
        out.append(f'<text x="{left + plot_w / 2:.1f}" y="{top + plot_h + 31}" {_FONT} '
                   f'text-anchor="middle" fill="{_AXIS}">{escape(x_label)}</text>')
    if y_label:
        cy = top + plot_h / 2
        out.append(f'<text x="13" y="{cy:.1f}" {_FONT} text-anchor="middle" fill="{_AXIS}" '
                   f'transform="rotate(-90 13 {cy:.1f})">{escape(y_label)}'
                   f'{" (log)" if log_y else ""}</text>')
    if marker_x is not None:
        mx = sx(marker_x)
        out.append(f'<line class="marker" x1="{mx:.1f}" x2="{mx:.1f}" y1="{top}" '
                   f'y2="{top + plot_h}" stroke="#d62728" stroke-width="1.5" '
                   f'stroke-dasharray="5 3"/>')
        if marker_label:
            # At the foot of the line: a chosen threshold sits at the curve's peak, at the top.
            anchor = "end" if mx > left + plot_w * 0.7 else "start"
            dx = -4 if anchor == "end" else 4
            out.append(f'<text x="{mx + dx:.1f}" y="{top + plot_h - 6}" {_FONT} '
                       f'text-anchor="{anchor}" '
                       f'fill="#d62728">{escape(marker_label)}</text>')
    for i, (label, xs, ys) in enumerate(series):
        colour = colours[i % len(colours)]
        runs: list[list[tuple[float, float]]] = [[]]
        for x, y in zip(xs, ys):
            if y is None or not math.isfinite(float(y)) or (log_y and float(y) <= 0):
                if runs[-1]:
                    runs.append([])
                continue
            runs[-1].append((float(x), float(y)))
        for run in runs:
            if len(run) > 1:
                pts = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in run)
                out.append(f'<polyline points="{pts}" fill="none" stroke="{colour}" '
                           f'stroke-width="1.8" stroke-linejoin="round"/>')
            if len(run) <= 40:
                for x, y in run:
                    out.append(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="2.6" '
                               f'fill="{colour}"><title>{escape(label)}: {escape(_fmt(x))} → '
                               f'{escape(_fmt(y))}</title></circle>')
    if legend_rows:
        col_w = plot_w / 4
        for i, (label, _, _) in enumerate(series):
            colour = colours[i % len(colours)]
            lx = left + (i % 4) * col_w
            ly = top + plot_h + 40 + 16 * (i // 4)
            out.append(f'<rect x="{lx:.1f}" y="{ly - 8}" width="12" height="3" fill="{colour}"/>')
            out.append(f'<text x="{lx + 16:.1f}" y="{ly - 3}" {_FONT} fill="#222">'
                       f'{escape(label)}</text>')
    out.append("</svg>")
    return "".join(out)


def grouped_hbar_chart(categories: Sequence[str],
                       groups: Sequence[tuple[str, Sequence[float | None]]], *,
                       width: int = 640, bar: int = 9, max_value: float = 100.0,
                       title: str = "", unit: str = "") -> str:
    """Horizontal bars: for each category (a class), one bar per group (a stage) in the
    group's colour; a ``None`` value (class absent) is drawn as an em dash, not a zero bar."""
    label_w = min(180, 14 + 7 * max((len(c) for c in categories), default=4))
    left, right = label_w, 48
    top = 26 if title else 8
    legend_h = 22
    row_h = bar * len(groups) + 6
    plot_w = width - left - right
    height = top + row_h * len(categories) + 24 + legend_h
    out = [f'<svg class="chart" width="{width}" height="{height}" viewBox="0 0 {width} '
           f'{height}" role="img" aria-label="{escape(title)}">']
    if title:
        out.append(f'<text x="8" y="16" {_FONT} font-weight="600" fill="#222">'
                   f'{escape(title)}</text>')
    plot_bottom = top + row_h * len(categories)
    for t in nice_ticks(0.0, max_value, 5):
        if t > max_value + 1e-9:
            continue
        x = left + t / max_value * plot_w
        out.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{top}" y2="{plot_bottom}" '
                   f'stroke="{_GRID}"/>')
        out.append(f'<text x="{x:.1f}" y="{plot_bottom + 14}" {_FONT} text-anchor="middle" '
                   f'fill="{_AXIS}">{escape(_fmt(t))}</text>')
    for r, category in enumerate(categories):
        y0 = top + r * row_h + 3
        if r % 2:
            out.append(f'<rect x="0" y="{y0 - 3}" width="{width}" height="{row_h}" '
                       f'fill="#f6f7f9"/>')
        out.append(f'<text x="{left - 6}" y="{y0 + row_h / 2:.1f}" {_FONT} text-anchor="end" '
                   f'fill="#222">{escape(category)}</text>')
        for g, (name, values) in enumerate(groups):
            colour = SERIES_COLOURS[g % len(SERIES_COLOURS)]
            value = values[r] if r < len(values) else None
            y = y0 + g * bar
            if value is None:
                out.append(f'<text x="{left + 4}" y="{y + bar - 1}" font-size="{bar}" '
                           f'fill="#999">—</text>')
                continue
            w = max(0.0, min(float(value), max_value)) / max_value * plot_w
            out.append(f'<rect x="{left}" y="{y}" width="{w:.1f}" height="{bar - 1}" '
                       f'fill="{colour}"><title>{escape(category)} · {escape(name)}: '
                       f'{float(value):.1f}{escape(unit)}</title></rect>')
            out.append(f'<text x="{left + w + 3:.1f}" y="{y + bar - 1.5}" font-size="{bar}" '
                       f'fill="#444">{float(value):.1f}</text>')
    out.append(f'<line x1="{left}" x2="{left}" y1="{top}" y2="{plot_bottom}" stroke="{_AXIS}"/>')
    ly = plot_bottom + 34
    x = left
    for g, (name, _) in enumerate(groups):
        colour = SERIES_COLOURS[g % len(SERIES_COLOURS)]
        out.append(f'<rect x="{x}" y="{ly - 9}" width="10" height="10" fill="{colour}"/>')
        out.append(f'<text x="{x + 14}" y="{ly}" {_FONT} fill="#222">{escape(name)}</text>')
        x += 28 + 7 * len(name)
    out.append("</svg>")
    return "".join(out)
