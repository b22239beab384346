"""The run report: content of the page for a small but real run folder, absent stages,
escaping, the CLI, and the page as a real headless browser renders it."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from plda.errors import ConfigError, DataError

# Fraction of each val image's foreground erased in its segmentation: the per-image mIoU falls
# strictly with it, so the expected ranking is val_00001 > val_00003 > val_00000 > val_00002.
SEG_ERASED = {"val_00000": 0.6, "val_00001": 0.0, "val_00002": 1.0, "val_00003": 0.3}
EXPECTED_ORDER = ["val_00001", "val_00003", "val_00000", "val_00002"]


class PageParser(HTMLParser):
    """Collects what the assertions need: tags, ids, images, gallery rows and the text."""

    def __init__(self):
        super().__init__()
        self.tags: dict[str, int] = {}
        self.ids: set[str] = set()
        self.img_src: list[str] = []
        self.rows: list[tuple[str, str]] = []   # (kind, image id) of gallery rows, in order
        self.links: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags[tag] = self.tags.get(tag, 0) + 1
        if "id" in a:
            self.ids.add(a["id"])
        if tag == "img":
            self.img_src.append(a.get("src", ""))
        for key in ("src", "href"):
            if key in a:
                self.links.append(a[key])
        classes = (a.get("class") or "").split()
        if tag == "div" and "gallery-row" in classes:
            self.rows.append((classes[1], a["data-id"]))

    def handle_data(self, data):
        self.text.append(data)


def parse(html: str) -> PageParser:
    p = PageParser()
    p.feed(html)
    p.close()
    return p


def _erase(gt: np.ndarray, fraction: float) -> np.ndarray:
    """``gt`` with the first ``fraction`` of its foreground pixels (raster order) set to
    background: nested for growing fractions, so every class's IoU can only fall."""
    out = gt.copy()
    fg = np.flatnonzero((gt > 0) & (gt < 255))
    out.reshape(-1)[fg[:int(round(fraction * fg.size))]] = 0
    return out


def make_run(root: Path, *, stages=("seeds", "pseudo", "seg"), name="tiny") -> Path:
    """A run folder with the real layout: the synthetic dataset, config.yaml, CAM files, label
    maps of ``stages`` for val, metrics.json scored by the real evaluator, a training log."""
    from plda.config import load_run_config
    from plda.config.loader import save_config
    from plda.data.camfile import save_cams
    from plda.data.layout import DatasetLayout
    from plda.data.synth import generate_synthetic
    from plda.evaluation.evaluate import evaluate_labels
    from plda.utils.io import atomic_write_json, atomic_write_text
    from plda.data.labels import load_label_png, save_label_png

    run = root / "run"
    generate_synthetic(run / "data", n_train=6, n_val=4, size=48, num_classes=3)
    cfg = load_run_config("synth_seam_plda", [f"run_dir={run}", f"name={name}",
                                              "data.synth.n_train=6", "data.synth.n_val=4",
                                              "data.synth.size=48", "data.synth.num_classes=3"])
    save_config(cfg, run / "config.yaml")
    layout = DatasetLayout(run / "data")
    ids = layout.ids("val")
    for image_id in ids:
        gt = load_label_png(layout.mask_path(image_id))
        keys = [int(v) for v in np.unique(gt) if 0 < v < 255]
        cams = np.stack([(gt == k).astype(np.float32) * 0.9 for k in keys]) if keys else \
            np.zeros((0, *gt.shape), np.float32)
        save_cams(run / "cams" / "val" / f"{image_id}.npz", cams, keys, 3, gt.shape)
        erased = SEG_ERASED[image_id]
        for stage, fraction in (("seeds", min(1.0, erased + 0.3)),
                                ("pseudo", min(1.0, erased + 0.1)), ("seg", erased)):
            if stage in stages:
                save_label_png(run / stage / "val" / f"{image_id}.png", _erase(gt, fraction))
    metrics: dict = {"train": {"steps": 4, "total_steps": 4, "interrupted": False,
                               "wall_time_s": 12.5, "images": 6, "final": {"loss": 0.5}},
                     "pipeline": {"train": 12.5, "cam": 3.0}, "custom_section": {"answer": 42}}
    for stage in stages:
        ev = evaluate_labels(run / stage / "val", layout.mask_dir, ids, layout.class_names,
                             num_workers=0)
        entry = {k: ev[k] for k in ("miou", "iou", "images")}
        if stage == "seeds":
            metrics["seeds"] = {"sweep": {"split": "val", "best_threshold": 0.3, "curve": [
                {"threshold": t, "miou": 40 + 10 * t - 20 * abs(t - 0.3)}
                for t in (0.2, 0.25, 0.3, 0.35, 0.4)]}, "bg_threshold": 0.3, "val": entry}
        elif stage == "pseudo":
            metrics["pseudo"] = {"method": "irn", "val": {**entry, "written": 4}}
        else:
            metrics["seg"] = {"val": entry}
    atomic_write_json(run / "metrics.json", metrics)
    log = [{"step": s, "epoch": s / 2, "lr": 0.01 / s, "loss": 2.0 / s, "cls": 1.0 / s,
            "er": 0.5 / s ** 2, "images_per_s": 3.0, "wall_time_s": 3.0 * s} for s in (1, 2, 3, 4)]
    log.append({"event": "end", "step": 4, "interrupted": False, "wall_time_s": 12.0})
    atomic_write_text(run / "logs" / "train.jsonl", "".join(json.dumps(r) + "\n" for r in log))
    return run


@pytest.fixture(scope="module")
def full_run(tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("report"))


@pytest.fixture(scope="module")
def full_page(full_run) -> tuple[Path, str]:
    from plda.report import write_report

    path = write_report(full_run, gallery_size=2)
    return path, path.read_text(encoding="utf-8")


def test_full_report_content(full_run, full_page):
    path, html = full_page
    assert path == full_run / "report.html"
    page = parse(html)
    assert {"summary", "metric-table", "class-table", "threshold", "losses",
            "gallery"} <= page.ids
    # Tables: summary (+ timings), the stage table, the class table, the unknown section.
    assert page.tags["table"] >= 5
    # SVG: the threshold curve, one bar chart (val), loss/cls/er + learning rate.
    assert page.tags["svg"] == 1 + 1 + 4
    text = " ".join(page.text)
    for cls in ("background", "striped", "checkered", "ringed"):
        assert cls in text
    assert "tiny" in text and "custom_section" in text and "answer" in text
    metrics = json.loads((full_run / "metrics.json").read_text())
    assert f"{metrics['seg']['val']['miou']:.1f}" in text
    assert f"{metrics['seeds']['val']['miou']:.1f}" in text
    assert "background threshold 0.30" in text and "method irn" in text


def test_gallery_ranks_best_and_worst_by_the_most_refined_output(full_page):
    _, html = full_page
    page = parse(html)
    best = [i for kind, i in page.rows if kind == "best"]
    worst = [i for kind, i in page.rows if kind == "worst"]
    assert best == EXPECTED_ORDER[:2]
    assert worst == EXPECTED_ORDER[::-1][:2]
    # Every row: image, ground truth, CAM, seed, pseudo mask, segmentation.
    assert len(page.img_src) == 4 * 6
    assert "segmentation mIoU" in html


def test_page_is_self_contained_and_small(full_page):
    _, html = full_page
    page = parse(html)
    assert "<script" not in html.lower()
    assert all(src.startswith(("data:image/png;base64,", "data:image/jpeg;base64,"))
               for src in page.img_src)
    assert all(link.startswith(("#", "data:")) for link in page.links)
    assert "http://" not in html and "https://" not in html
    assert len(html) < 3_000_000


def test_thumbnails_decode_to_bounded_images(full_page):
    import base64
    import io

    from PIL import Image

    _, html = full_page
    for src in parse(html).img_src:
        with Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))) as img:
            assert max(img.size) <= 160 and img.size == (48, 48)


def test_absent_stages_are_reported(tmp_path):
    from plda.report import write_report

    run = make_run(tmp_path, stages=("seeds",))
    html = write_report(run, gallery_size=1).read_text(encoding="utf-8")
    page = parse(html)
    assert "not run" in html
    # Ranked by the seeds, the only output; no pseudo / segmentation column.
    assert [i for kind, i in page.rows if kind == "best"] == ["val_00001"]
    assert [i for kind, i in page.rows if kind == "worst"] == ["val_00002"]
    assert len(page.img_src) == 2 * 4
    assert "pseudo mask" not in " ".join(page.text).replace("pseudo masks", "")

    # Nothing but the dataset and its config: every section still renders, with notes.
    for sub in ("cams", "seeds", "logs"):
        shutil.rmtree(run / sub)
    (run / "metrics.json").unlink()
    html = write_report(run).read_text(encoding="utf-8")
    page = parse(html)
    assert "metrics.json is missing" in html and "No training log" in html
    assert "no split has seeds" in html and page.img_src == []


def test_without_ground_truth_the_gallery_is_unranked(tmp_path):
    from plda.report import write_report

    run = make_run(tmp_path, stages=("seeds", "seg"))
    shutil.rmtree(run / "data" / "SegmentationClassAug")
    html = write_report(run, gallery_size=3).read_text(encoding="utf-8")
    page = parse(html)
    assert [i for _, i in page.rows] == ["val_00000", "val_00001", "val_00002"]
    assert {kind for kind, _ in page.rows} == {"image"}
    assert "no ground-truth masks" in html
    assert len(page.img_src) == 3 * 4      # image, CAM, seed, segmentation


def test_text_from_the_run_is_escaped(tmp_path):
    from plda.report import write_report

    run = make_run(tmp_path, name="<b>bold</b>")
    evil = "<script>alert(1)</script>"
    (run / "data" / "classes.txt").write_text(f"striped\n{evil}\nringed\n", encoding="utf-8")
    metrics = json.loads((run / "metrics.json").read_text())
    for section in ("seeds", "pseudo", "seg"):
        iou = metrics[section]["val"]["iou"]
        metrics[section]["val"]["iou"] = {(evil if k == "checkered" else k): v
                                          for k, v in iou.items()}
    (run / "metrics.json").write_text(json.dumps(metrics))
    html = write_report(run).read_text(encoding="utf-8")
    assert "<script" not in html and "<b>bold" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert evil in " ".join(parse(html).text)


def test_bad_input_is_refused(tmp_path, full_run):
    from plda.report import write_report

    with pytest.raises(DataError, match="run folder"):
        write_report(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match="gallery split 'test'"):
        write_report(full_run, gallery_split="test")
    with pytest.raises(ConfigError, match="gallery_size"):
        write_report(full_run, gallery_size=-1)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "metrics.json").write_text("{not json")
    with pytest.raises(DataError, match="metrics.json"):
        write_report(broken)
    (broken / "metrics.json").write_text("{}")
    (broken / "logs").mkdir()
    (broken / "logs" / "train.jsonl").write_text('{"step": 1, "loss": 1.0}\n{oops\n')
    with pytest.raises(DataError, match=r"train.jsonl:2"):
        write_report(broken)


def test_cli_prints_the_report_path(full_run, capsys):
    from plda.cli.main import main

    assert main(["report", str(full_run), "--split", "val", "--gallery", "1"]) == 0
    out = capsys.readouterr().out.strip()
    assert out == str(full_run / "report.html")
    assert len(parse(Path(out).read_text(encoding="utf-8")).img_src) == 2 * 6
    assert main(["report", str(full_run), "--split", "nope"]) == 2


def test_charts_are_inline_svg_drawn_by_matplotlib():
    import xml.etree.ElementTree as ET

    from plda.report.charts import grouped_hbar_chart, line_chart

    series = [("a", [1, 2, 3, 4, 5], [1.0, 2.0, None, 3.0, 4.0]),
              ("b", [1, 2, 3], [0.5, float("nan"), 0.7])]
    svg = line_chart(series, marker_x=2, marker_label="x<y", title="loss & lr")
    root = ET.fromstring(svg)  # well-formed markup, inlined as it is
    assert root.tag == "svg" and root.get("class") == "chart"
    assert (root.get("width"), root.get("height")) == ("560", "300")
    # A None or NaN breaks a line: series a in two stretches, b in two lone points.
    ids = [e.get("id") for e in root.iter() if e.get("id")]
    stretches = sorted(i.split("-", 1)[1] for i in ids if re.fullmatch(r"c\w+-[ab]-\d", i))
    assert stretches == ["a-0", "a-1", "b-0", "b-1"]
    assert any(i.endswith("-marker") for i in ids)
    # Text stays text, escaped; no prologue, metadata or namespace URL; ids unique per chart.
    assert "x&lt;y" in svg and "loss &amp; lr" in svg
    assert "<?xml" not in svg and "<metadata" not in svg and "http" not in svg
    assert len(ids) == len(set(ids)) and all(i.startswith(ids[0].split("-")[0]) for i in ids)
    assert line_chart(series, marker_x=2, marker_label="x<y", title="loss & lr") == svg
    other = line_chart([("a", [1, 2], [3.0, 1.0])])
    assert ids[0].split("-")[0] != ET.fromstring(other).find(".//*[@id]").get("id").split("-")[0]
    assert "no values" in line_chart([("a", [1], [None])], title="t")
    log = ET.fromstring(line_chart([("l", [1, 2, 3], [1.0, 0.01, 1e-4])], log_y=True))
    assert any("(log)" in (t.text or "") for t in log.iter("text"))
    bars = grouped_hbar_chart(["c1", "c2"], [("s1", [50.0, None]), ("s2", [100.0, 20.0])],
                              title="split val", unit=" %")
    texts = [t.text for t in ET.fromstring(bars).iter("text")]
    assert {"c1", "c2", "s1", "s2", "50.0", "100.0", "20.0", "—"} <= set(texts)


# ---- the page in a real browser ---------------------------------------------------------------

def _chromium() -> str | None:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None and os.environ.get("PLDA_REQUIRE_BROWSER") == "1":
        pytest.fail("PLDA_REQUIRE_BROWSER=1 but chromium is not installed")
    if path is None:
        pytest.skip("chromium not installed (set PLDA_REQUIRE_BROWSER=1 to require it)")
    return path


def _run_chromium(binary: str, tmp: Path, *args: str) -> subprocess.CompletedProcess:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--hide-scrollbars", f"--user-data-dir={tmp / 'profile'}"]
    return subprocess.run([binary, *flags, *args], capture_output=True, text=True, timeout=120,
                          check=False)


def test_report_in_headless_chromium(full_page, tmp_path):
    from PIL import Image

    binary = _chromium()
    _, html = full_page
    page = tmp_path / "report.html"     # the page as written (other tests rewrite the run's)
    page.write_text(html, encoding="utf-8")
    # The product page has no script; a test copy gets one that records, after load, how many
    # images the browser really decoded, where --dump-dom can read it.
    probe = tmp_path / "probe.html"
    probe.write_text(html.replace(
        "</body>", "<script>window.addEventListener('load', () => { const ok = [...document"
        ".images].filter(i => i.complete && i.naturalWidth > 0).length; document.body"
        ".setAttribute('data-decoded', String(ok)); document.body.setAttribute('data-charts', "
        "String([...document.querySelectorAll('svg.chart')].filter(s => { const r = s"
        ".getBoundingClientRect(); return r.width >= 200 && r.height >= 50 && s"
        ".querySelectorAll('path, text').length > 10; }).length)); });</script></body>"), encoding="utf-8")
    res = _run_chromium(binary, tmp_path, "--virtual-time-budget=5000", "--dump-dom",
                        probe.as_uri())
    assert res.returncode == 0, res.stderr[-2000:]
    dom = parse(res.stdout)
    assert "metric-table" in dom.ids and "class-table" in dom.ids
    assert len(dom.img_src) == 24
    assert 'data-decoded="24"' in res.stdout
    # The charts: matplotlib's inline SVG, every one laid out at its size by the browser.
    charts = html.count('<svg class="chart"')
    assert charts >= 4 and f'data-charts="{charts}"' in res.stdout

    shot = tmp_path / "shot.png"
    res = _run_chromium(binary, tmp_path, "--window-size=1280,2400", f"--screenshot={shot}",
                        page.as_uri())
    assert res.returncode == 0 and shot.is_file(), res.stderr[-2000:]
    with Image.open(shot) as img:
        pixels = np.asarray(img.convert("RGB"))
    assert pixels.shape[:2] == (2400, 1280)
    # A rendered page: many colours (charts, thumbnails), not a blank or error page.
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 500
    assert pixels.std() > 20
