"""The run report: one self-contained HTML page (inline CSS, inline SVG charts, ``data:``
thumbnails; no script, no external resource), so that it can be mailed, archived and opened
offline. Every piece of text from the run folder is escaped: class names and ids are data.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
from html import escape
from pathlib import Path
from typing import Any

from plda.errors import ConfigError
from plda.report.gallery import Gallery, GalleryRow, build_gallery, choose_split
from plda.report.rundata import (RunData, TrainLog, known_sections, label_stages, load_run,
                                 split_entries, train_logs, train_stages)
from plda.report.charts import SERIES_COLOURS, grouped_hbar_chart, line_chart

REPORT_NAME = "report.html"

_CSS = """
:root { color-scheme: light; }
* { box-sizing: border-box; }
body { margin: 0; background: #f3f4f6; color: #1f2328;
  font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; }
header { background: #24292f; color: #fff; padding: 18px 32px; }
header h1 { margin: 0; font-size: 22px; font-weight: 600; }
header .sub { color: #c9d1d9; font-size: 13px; margin-top: 4px; word-break: break-all; }
nav { background: #fff; border-bottom: 1px solid #d0d7de; padding: 8px 32px; font-size: 13px; }
nav a { color: #0969da; text-decoration: none; margin-right: 16px; }
main { max-width: 1240px; margin: 0 auto; padding: 16px 24px 48px; }
section { background: #fff; border: 1px solid #d0d7de; border-radius: 8px; padding: 16px 20px;
  margin: 16px 0; }
h2 { font-size: 17px; margin: 0 0 12px; }
h3 { font-size: 14px; margin: 16px 0 8px; color: #444; }
p.note, li.note { color: #6e7781; }
.notes { background: #fff8c5; border: 1px solid #d4a72c; border-radius: 8px; padding: 8px 20px; }
table { border-collapse: collapse; font-size: 13px; margin: 4px 0 8px; }
th, td { border-bottom: 1px solid #e5e7eb; padding: 4px 10px; text-align: left;
  vertical-align: top; }
th { background: #f6f8fa; font-weight: 600; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
td.miss { color: #8c959f; }
table.kv th { background: none; color: #57606a; font-weight: 500; white-space: nowrap; }
.big { font-size: 16px; font-weight: 600; }
.small { font-size: 11px; color: #6e7781; }
.charts { display: flex; flex-wrap: wrap; gap: 12px 20px; }
.chart { background: #fff; }
.scroll { overflow-x: auto; }
.gallery-row { display: flex; flex-wrap: wrap; gap: 10px; align-items: flex-start; padding: 10px 0;
  border-top: 1px solid #eaeef2; }
.row-head { width: 120px; flex: none; font-size: 12px; }
.row-head .score { font-size: 18px; font-weight: 600; }
figure { margin: 0; width: 148px; flex: none; }
figure img { display: block; width: 144px; height: auto; image-rendering: auto;
  border: 1px solid #d0d7de; border-radius: 3px; background: #fafafa; }
figure img.label { image-rendering: pixelated; }
figcaption { font-size: 11px; color: #444; margin-top: 2px; overflow-wrap: anywhere; }
figcaption b { display: block; font-weight: 600; color: #1f2328; }
.missing { width: 144px; height: 90px; border: 1px dashed #c6ccd2; border-radius: 3px;
  display: flex; align-items: center; justify-content: center; color: #8c959f; font-size: 12px; }
.legend { display: flex; flex-wrap: wrap; gap: 4px 10px; font-size: 11px; margin-top: 6px; }
.chip { display: inline-block; width: 10px; height: 10px; border: 1px solid #999;
  vertical-align: -1px; margin-right: 3px; }
.stages span { display: inline-block; padding: 2px 8px; margin: 2px 4px 2px 0; border-radius: 10px;
  font-size: 12px; }
.stages .done { background: #dafbe1; color: #116329; }
.stages .absent { background: #eaeef2; color: #6e7781; }
"""


def _fmt_seconds(seconds: Any) -> str:
    if not isinstance(seconds, (int, float)) or isinstance(seconds, bool) or not math.isfinite(seconds):
        return "—"
    seconds = float(seconds)
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.2f} h"


def _fmt_value(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple, dict)):
        text = json.dumps(value)
        return text if len(text) <= 160 else text[:157] + "…"
    return str(value)


def _iou_style(value: float | None) -> str:
    """A white-to-green cell background, so that weak classes stand out in a long table."""
    if value is None:
        return ""
    t = max(0.0, min(1.0, float(value) / 100.0))
    r, g, b = (round(255 + (v - 255) * t) for v in (99, 190, 123))
    return f' style="background: rgb({r},{g},{b})"'


def _kv_table(rows: list[tuple[str, str]], cls: str = "kv") -> str:
    body = "".join(f"<tr><th>{escape(k)}</th><td>{escape(v)}</td></tr>" for k, v in rows)
    return f'<table class="{cls}">{body}</table>'


def _flatten(value: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if isinstance(value, dict) and value:
        out: list[tuple[str, Any]] = []
        for k, v in value.items():
            out += _flatten(v, f"{prefix}.{k}" if prefix else str(k))
        return out
    return [(prefix, value)]


# ---- sections ---------------------------------------------------------------------------------

def _stage_status(run: RunData) -> list[tuple[str, bool]]:
    m = run.metrics
    status = [("stage-1 training", "train" in m or (run.root / "logs" / "train.jsonl").is_file()),
              ("CAMs", any(run.cam_dir(s) for s in run.splits()))]
    for section, folder, title in label_stages():
        status.append((title, section in m or any(run.label_dir(folder, s)
                                                  for s in run.splits())))
        if section == "seeds":
            status.append(("refinement training", "irn_train" in m or "affinity_train" in m))
        if section == "pseudo":
            status.append(("segmentation training", "seg_train" in m))
    return status


def _summary(run: RunData) -> str:
    rows: list[tuple[str, str]] = []
    cfg = run.config
    if cfg is not None:
        rows.append(("run name", cfg.name))
        if cfg.description:
            rows.append(("preset", cfg.description))
        method = cfg.method.name + (" (reference quirks)" if cfg.method.reference else "")
        rows += [("method", method), ("backbone", cfg.model.backbone),
                 ("dataset", f"{run.dataset_name} ({cfg.data.root})" if cfg.data.root != "synth"
                  else f"synthetic ({cfg.data.synth.n_train} train / {cfg.data.synth.n_val} "
                       f"val, {cfg.data.synth.size} px)"),
                 ("CAM inference", f"scales {list(cfg.cam.scales)}, flip "
                                   f"{'on' if cfg.cam.flip else 'off'}"),
                 ("refinement", cfg.refine.method),
                 ("segmentation net", f"{cfg.seg.model.arch} on {cfg.seg.model.backbone}")]
    if run.layout is not None:
        rows.append(("classes", f"{run.layout.num_classes} foreground + background: "
                     + ", ".join(run.layout.classes[:12])
                     + (", …" if run.layout.num_classes > 12 else "")))
        coverage = run.mask_coverage()
        if coverage:
            rows.append(("ground-truth masks", ", ".join(
                f"{split} {m} of {n}" for split, (m, n) in coverage.items())
                + ("" if any(m for m, _ in coverage.values()) else
                   " (none: nothing is scored)")))
    rows.append(("run folder", str(run.root.resolve())))
    timing: list[tuple[str, str]] = []
    for section, _, title in train_stages():
        entry = run.metrics.get(section)
        if isinstance(entry, dict):
            steps = entry.get("steps")
            total = entry.get("total_steps")
            what = f"{steps} steps" if total in (None, steps) else f"{steps} / {total} steps"
            if entry.get("interrupted"):
                what += " (interrupted)"
            final = entry.get("final") if isinstance(entry.get("final"), dict) else {}
            loss = final.get("loss")
            if isinstance(loss, (int, float)):
                what += f", final loss {loss:.4g}"
            timing.append((title, f"{_fmt_seconds(entry.get('wall_time_s'))} · {what}"))
    for section, _, title in label_stages():
        for split, entry in split_entries(run.metrics.get(section)).items():
            seconds = entry.get("seconds", entry.get("wall_time_s"))
            if isinstance(seconds, (int, float)):
                timing.append((f"{title} ({split})", _fmt_seconds(seconds)))
    pipeline = run.metrics.get("pipeline")
    if isinstance(pipeline, dict):
        for key, value in _flatten(pipeline):
            shown = _fmt_seconds(value) if isinstance(value, (int, float)) and not \
                isinstance(value, bool) and ("time" in key or key.endswith("_s")
                                             or "." not in key) else _fmt_value(value)
            timing.append((f"pipeline: {key}", shown))
    status = "".join(f'<span class="{"done" if ok else "absent"}">{"✓" if ok else "–"} '
                     f'{escape(name)}</span>' for name, ok in _stage_status(run))
    html = [f'<section id="summary"><h2>Summary</h2><div class="stages">{status}</div>',
            '<div class="charts"><div>', _kv_table(rows), "</div>"]
    if timing:
        html += ["<div><h3>Timings</h3>", _kv_table(timing), "</div>"]
    html.append("</div></section>")
    return "".join(html)


def _metric_table(run: RunData) -> str:
    splits = [s for s in run.splits()
              if any(s in split_entries(run.metrics.get(sec)) for sec, _, _ in label_stages())]
    head = "".join(f'<th class="num">{escape(s)}</th>' for s in splits)
    rows = []
    for section, _, title in label_stages():
        data = run.metrics.get(section)
        entries = split_entries(data)
        detail = ""
        if isinstance(data, dict):
            if section == "seeds" and isinstance(data.get("bg_threshold"), (int, float)):
                from plda.runfolder import tuning_text

                detail = (f"background threshold {data['bg_threshold']:.2f}: "
                          f"{tuning_text(data)}")
            elif isinstance(data.get("method"), str):
                detail = f"method {data['method']}"
        cells = []
        for split in splits:
            e = entries.get(split)
            if e is None:
                why = "not made for this split" if entries else "stage not run"
                cells.append(f'<td class="num miss">—<br><span class="small">{escape(why)}'
                             '</span></td>')
            elif not isinstance(e.get("miou"), (int, float)):
                why = e.get("reason") or "no score recorded"
                cells.append(f'<td class="num miss" title="{escape(str(why))}">—<br>'
                             f'<span class="small">not scored: {escape(str(why))}</span></td>')
            else:
                images, total = e.get("images"), e.get("images_total")
                count = ""
                if isinstance(images, int):
                    count = (f"{images} of {total} images (those with masks)"
                             if isinstance(total, int) and total > images else f"{images} images")
                cells.append(f'<td class="num"{_iou_style(e["miou"])}><span class="big">'
                             f'{e["miou"]:.1f}</span>'
                             + (f'<br><span class="small">{escape(count)}</span>'
                                if count else "") + "</td>")
        if not entries:
            detail = "not run" if not detail else detail + " · no scores"
        rows.append(f"<tr><th>{escape(title)}</th>{''.join(cells)}"
                    f'<td class="small">{escape(detail)}</td></tr>')
    if not splits:
        body = '<p class="note">No stage has recorded scores yet (no ground truth, or no ' \
               'seeds / pseudo masks / segmentation).</p>'
    else:
        body = (f'<table id="metric-table"><tr><th>stage · mIoU (%)</th>{head}<th></th></tr>'
                + "".join(rows) + "</table>")
    return (f'<section id="metrics"><h2>Scores per stage</h2>{_classification(run)}{body}'
            '</section>')


def _classification(run: RunData) -> str:
    """The classifier's image-level scores (mAP, F1, precision, recall) per split."""
    section = run.metrics.get("classification")
    entries = {k: v for k, v in section.items() if isinstance(v, dict)} \
        if isinstance(section, dict) else {}
    if not entries:
        why = ("the CAMs were masked with predicted labels (cam.label_source=predicted)"
               if run.config is not None and run.config.cam.label_source != "gt"
               else "the CAM stage has not run on the validation split yet")
        return (f'<h3>Image-level classification</h3><p class="note">Not measured: '
                f'{escape(why)}.</p>')
    head = ('<tr><th>split</th><th class="num">mAP (%)</th><th class="num">F1</th>'
            '<th class="num">precision</th><th class="num">recall</th>'
            '<th class="num">images</th></tr>')
    rows = []
    for split, e in entries.items():
        def cell(key, spec):
            v = e.get(key)
            return (f'<td class="num">{format(v, spec)}</td>' if isinstance(v, (int, float))
                    and not isinstance(v, bool) else '<td class="num miss">—</td>')
        rows.append(f"<tr><th>{escape(split)}</th>{cell('map', '.1f')}{cell('f1', '.2f')}"
                    f"{cell('precision', '.2f')}{cell('recall', '.2f')}{cell('images', 'd')}"
                    "</tr>")
    threshold = next((e.get("threshold") for e in entries.values()
                      if isinstance(e.get("threshold"), (int, float))), 0.5)
    return (f'<h3>Image-level classification</h3><p class="note">How well the stage-1 '
            f'classifier names the classes of an image (F1, precision and recall at score > '
            f'{threshold:g}): what segmenting an image without its tags depends on.</p>'
            f'<table id="classification-table">{head}{"".join(rows)}</table>'
            '<h3>Label maps</h3>')


def _precision_recall(run: RunData) -> str:
    """Per class: precision and recall of every scored stage and split."""
    cols = [(t, s, e) for t, s, e in _per_class_columns(run)
            if isinstance(e.get("precision"), dict) and isinstance(e.get("recall"), dict)]
    if not cols:
        return ""
    names = run.class_names or list(cols[0][2]["iou"])
    head = "".join(f'<th class="num" colspan="2">{escape(t)}<br><span class="small">'
                   f'{escape(s)}</span></th>' for t, s, _ in cols)
    sub = "".join('<th class="num">P</th><th class="num">R</th>' for _ in cols)
    rows = []
    for name in names:
        cells = []
        for _, _, entry in cols:
            for key in ("precision", "recall"):
                v = entry[key].get(name)
                cells.append('<td class="num miss">—</td>' if not isinstance(v, (int, float))
                             else f'<td class="num"{_iou_style(v)}>{v:.1f}</td>')
        rows.append(f"<tr><th>{escape(name)}</th>{''.join(cells)}</tr>")
    return (f'<section id="precision-recall"><h2>Precision and recall per class (%)</h2>'
            f'<p class="note">Precision: of the pixels given a class, the share that is that '
            f'class; recall: of the pixels of a class, the share found. Low recall with high '
            f'precision: the maps cover the discriminative part only.</p><div class="scroll">'
            f'<table id="pr-table"><tr><th rowspan="2">class</th>{head}</tr><tr>{sub}</tr>'
            f'{"".join(rows)}</table></div></section>')


def _per_class_columns(run: RunData) -> list[tuple[str, str, dict]]:
    """``(stage title, split, entry)`` of every scored stage and split, in pipeline order."""
    cols = []
    for split in run.splits():
        for section, _, title in label_stages():
            entry = split_entries(run.metrics.get(section)).get(split)
            if entry is not None and isinstance(entry.get("iou"), dict):
                cols.append((title, split, entry))
    return cols


def _class_table(run: RunData) -> str:
    cols = _per_class_columns(run)
    if not cols:
        return ""
    names = run.class_names or list(cols[0][2]["iou"])
    head = "".join(f'<th class="num">{escape(t)}<br><span class="small">{escape(s)}</span></th>'
                   for t, s, _ in cols)
    rows = []
    for name in names:
        cells = []
        for _, _, entry in cols:
            v = entry["iou"].get(name)
            cells.append('<td class="num miss">—</td>' if not isinstance(v, (int, float)) else
                         f'<td class="num"{_iou_style(v)}>{v:.1f}</td>')
        rows.append(f"<tr><th>{escape(name)}</th>{''.join(cells)}</tr>")
    foot = "".join(f'<td class="num"><b>{e["miou"]:.1f}</b></td>'
                   if isinstance(e.get("miou"), (int, float)) else '<td class="num">—</td>'
                   for _, _, e in cols)
    rows.append(f"<tr><th>mIoU</th>{foot}</tr>")
    return (f'<section id="classes"><h2>IoU per class (%)</h2><p class="note">— : the class is '
            f'in neither the ground truth nor the prediction of that split (left out of the '
            f'mIoU).</p><div class="scroll"><table id="class-table"><tr><th>class</th>{head}'
            f'</tr>{"".join(rows)}</table></div></section>')


def _class_bars(run: RunData) -> str:
    cols = _per_class_columns(run)
    if not cols:
        return ""
    names = run.class_names or list(cols[0][2]["iou"])
    charts = []
    for split in dict.fromkeys(s for _, s, _ in cols):
        groups = [(title, [e["iou"].get(n) if isinstance(e["iou"].get(n), (int, float))
                           else None for n in names]) for title, s, e in cols if s == split]
        charts.append(grouped_hbar_chart(names, groups, title=f"split {split}", unit=" %"))
    return (f'<section id="class-bars"><h2>IoU per class, by stage</h2><div class="charts">'
            f'{"".join(charts)}</div></section>')


def _threshold_curve(run: RunData) -> str:
    seeds = run.metrics.get("seeds")
    if not isinstance(seeds, dict):
        return ('<section id="threshold"><h2>Background threshold</h2><p class="note">No seed '
                'scores yet: the background-threshold sweep runs in the seeds stage.</p></section>')
    sweep = seeds.get("sweep")
    chosen = seeds.get("bg_threshold")
    from plda.runfolder import tuning_text

    how = tuning_text(seeds)
    if not isinstance(sweep, dict) or not isinstance(sweep.get("curve"), list):
        text = (f"{chosen:.3g}: {how}; no sweep was run (it needs ground-truth masks)"
                if isinstance(chosen, (int, float)) else "no threshold recorded")
        return (f'<section id="threshold"><h2>Background threshold</h2><p class="note">'
                f'{escape(text)}.</p></section>')
    points = [p for p in sweep["curve"] if isinstance(p, dict)]
    xs = [float(p["threshold"]) for p in points if isinstance(p.get("threshold"), (int, float))]
    ys = [p.get("miou") if isinstance(p.get("miou"), (int, float)) else None for p in points
          if isinstance(p.get("threshold"), (int, float))]
    best = sweep.get("best_threshold", chosen)
    marker = float(best) if isinstance(best, (int, float)) else None
    best_miou = next((y for x, y in zip(xs, ys) if marker is not None and abs(x - marker) < 1e-9),
                     None)
    label = "" if marker is None else f"chosen {marker:.2f}" + (
        f" → {best_miou:.1f}" if best_miou is not None else "")
    chart = line_chart([("seed mIoU", xs, ys)], width=620, height=300,
                       x_label="background threshold", y_label="seed mIoU (%)",
                       marker_x=marker, marker_label=label, legend=False)
    images = sweep.get("images")
    on = f" ({images} images with masks)" if isinstance(images, int) else ""
    return (f'<section id="threshold"><h2>Background threshold</h2><p class="note">Seed mIoU '
            f'on split {escape(str(sweep.get("split", "?")))}{escape(on)} for each background '
            f'threshold; the dashed line marks the threshold the seeds use ({escape(how)}).</p>'
            f'{chart}{_held_out_ids(seeds)}</section>')


def _held_out_ids(seeds: dict) -> str:
    """Which images tuned the threshold and which were scored, for a held-out sweep."""
    tuning = seeds.get("tuning")
    if not isinstance(tuning, dict) or tuning.get("how") != "held-out sweep":
        return ""
    rows = []
    for title, key in (("tuned the threshold", "tuned_ids"), ("scored", "scored_ids")):
        ids = [str(i) for i in tuning.get(key) or []]
        shown = ", ".join(ids[:60]) + (f", … ({len(ids)} in all)" if len(ids) > 60 else "")
        rows.append((f"{title} ({len(ids)})", shown))
    return "<h3>Images of split " + escape(str(tuning.get("split"))) + "</h3>" + _kv_table(rows)


def _spans_decades(values: list[float | None]) -> bool:
    """A log axis only for a term that falls by more than a decade: on a narrower range it
    would flatten the curve that the reader wants to see move."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return bool(finite) and min(finite) > 0 and max(finite) / min(finite) >= 10


def _loss_curves(logs: list[TrainLog]) -> str:
    if not logs:
        return ('<section id="losses"><h2>Training curves</h2><p class="note">No training log '
                'found (logs/train.jsonl): nothing was trained in this folder yet.</p></section>')
    parts = ['<section id="losses"><h2>Training curves</h2>']
    for log in logs:
        parts.append(f"<h3>{escape(log.title)} <span class=\"small\">"
                     f"({escape(str(len(log.steps)))} records)</span></h3>")
        if not log.steps:
            parts.append('<p class="note">The log has no step records yet.</p>')
            continue
        charts = []
        for i, term in enumerate(log.loss_terms):
            # One colour per term, so that a small multiple is told apart at a glance.
            charts.append(line_chart([(term, log.steps, log.values[term])], width=300,
                                     height=190, title=term, x_label="step",
                                     log_y=_spans_decades(log.values[term]),
                                     legend=False,
                                     colours=(SERIES_COLOURS[i % len(SERIES_COLOURS)],)))
        if "lr" in log.values:
            charts.append(line_chart([("lr", log.steps, log.values["lr"])], width=300,
                                     height=190, title="learning rate", x_label="step",
                                     legend=False, colours=("#57606a",)))
        parts.append(f'<div class="charts">{"".join(charts)}</div>')
    parts.append("</section>")
    return "".join(parts)


def _legend(row: GalleryRow, class_names: list[str] | None) -> str:
    if not row.classes:
        return ""
    from plda.data.labels import palette_for

    pal = palette_for(class_names)
    chips = []
    for value in row.classes:
        name = class_names[value] if class_names and value < len(class_names) else str(value)
        r, g, b = (int(c) for c in pal[value])
        chips.append(f'<span><span class="chip" style="background: rgb({r},{g},{b})"></span>'
                     f'{escape(name)}</span>')
    return f'<div class="legend">{"".join(chips)}</div>'


def _gallery_rows(rows: list[GalleryRow], kind: str, source: str | None,
                  class_names: list[str] | None) -> str:
    out = []
    for rank, row in enumerate(rows, start=1):
        score = "" if row.score is None else (
            f'<div class="score">{row.score:.1f}</div><div class="small">{escape(source or "")}'
            f" mIoU</div>")
        figures = []
        for cell in row.cells:
            if cell.uri is None:
                body = f'<div class="missing">{escape(cell.missing or "missing")}</div>'
            else:
                cls = "" if cell.title in ("image", "CAM") else ' class="label"'
                body = (f'<img{cls} src="{cell.uri}" alt="{escape(cell.title)} of '
                        f'{escape(row.image_id)}">')
            figures.append(f"<figure>{body}<figcaption><b>{escape(cell.title)}</b>"
                           f"{escape(cell.caption)}</figcaption></figure>")
        out.append(f'<div class="gallery-row {kind}" data-id="{escape(row.image_id)}">'
                   f'<div class="row-head"><div class="small">{escape(kind)} #{rank}</div>'
                   f'<div><b>{escape(row.image_id)}</b></div>{score}'
                   f'{_legend(row, class_names)}</div>{"".join(figures)}</div>')
    return "".join(out)


def _gallery(run: RunData, gallery: Gallery | None, requested_size: int) -> str:
    if gallery is None:
        why = ("gallery switched off (size 0)" if requested_size <= 0 else
               "no split has seeds, pseudo masks, segmentation or CAMs yet")
        return (f'<section id="gallery"><h2>Gallery</h2><p class="note">{escape(why)}.</p>'
                f"</section>")
    names = run.class_names
    parts = [f'<section id="gallery"><h2>Gallery · split {escape(gallery.split)}</h2>']
    if gallery.source is not None:
        parts.append(f'<p class="note">Images ranked by the per-image mIoU of the '
                     f'{escape(gallery.source)} ({gallery.ranked_images} images with ground '
                     f'truth); captions give each output\'s own mIoU.</p>')
        parts.append("<h3>Best</h3>" + _gallery_rows(gallery.best, "best", gallery.source, names))
        if gallery.worst:
            parts.append("<h3>Worst</h3>" + _gallery_rows(gallery.worst, "worst",
                                                          gallery.source, names))
    else:
        parts.append('<p class="note">Not ranked (no ground truth or no label maps for this '
                     'split): the first images of the split.</p>')
        parts.append(_gallery_rows(gallery.unranked, "image", None, names))
    parts.append("</section>")
    return "".join(parts)


def _other_sections(run: RunData) -> str:
    others = [k for k in run.metrics if k not in known_sections() and k != "pipeline"]
    if not others:
        return ""
    parts = ['<section id="other"><h2>Other recorded metrics</h2>']
    for key in others:
        rows = _flatten(run.metrics[key])[:300]
        parts.append(f"<h3>{escape(key)}</h3>"
                     + _kv_table([(k or key, _fmt_value(v)) for k, v in rows]))
    parts.append("</section>")
    return "".join(parts)


def render_report(run: RunData, *, gallery_split: str | None = None, gallery_size: int = 4
                  ) -> str:
    """The report page of a loaded run, as a string."""
    split = choose_split(run, gallery_split)
    gallery = build_gallery(run, split, gallery_size)
    logs = train_logs(run)
    title = (f"{run.config.method.name} on {run.dataset_name}" if run.config is not None
             else run.root.name)
    now = _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    notes = ""
    if run.notes:
        notes = ('<div class="notes"><ul>' + "".join(f"<li>{escape(n)}</li>" for n in run.notes)
                 + "</ul></div>")
    nav = "".join(f'<a href="#{a}">{escape(t)}</a>' for a, t in (
        ("summary", "summary"), ("metrics", "scores"), ("classes", "per class"),
        ("precision-recall", "precision / recall"),
        ("threshold", "threshold"), ("losses", "training"), ("gallery", "gallery")))
    body = [_summary(run), _metric_table(run), _class_table(run), _precision_recall(run),
            _threshold_curve(run), _class_bars(run), _loss_curves(logs),
            _gallery(run, gallery, gallery_size), _other_sections(run)]
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>plda report · {escape(title)}</title><style>{_CSS}</style></head><body>"
            f"<header><h1>Run report · {escape(title)}</h1><div class=\"sub\">"
            f"{escape(str(run.root.resolve()))} · generated {escape(now)}</div></header>"
            f"<nav>{nav}</nav><main>{notes}{''.join(body)}</main></body></html>\n")


def write_report(run_dir: str | Path, *, gallery_split: str | None = None,
                 gallery_size: int = 4) -> Path:
    """Write ``<run_dir>/report.html`` (atomically) and return its path.

    ``gallery_size`` is the number of best and of worst images shown (0: no gallery);
    ``gallery_split`` defaults to ``val`` when it has label maps, else the first split that has.
    """
    from plda.utils.io import atomic_write_text

    if isinstance(gallery_size, bool) or not isinstance(gallery_size, int) or gallery_size < 0:
        raise ConfigError(f"gallery_size must be an integer >= 0, got {gallery_size!r}")
    run = load_run(run_dir)
    html = render_report(run, gallery_split=gallery_split, gallery_size=gallery_size)
    path = run.root / REPORT_NAME
    atomic_write_text(path, html)
    return path
