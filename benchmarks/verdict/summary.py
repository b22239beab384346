"""The verdict's tables: per arm and baseline, each method's mean ± sd over seeds and the paired
difference PLDA − baseline, per-class differences, domain purity, and the chain's scores
(``OUT/summary.json``, ``OUT/summary.md``)."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from benchmarks.table import format_table
from benchmarks.verdict.jobs import ARMS, BASELINES, CHAIN, RESULT

SCORES = ("val_miou_13", "val_miou_present", "train_miou_13", "train_miou_present")
PURITY_KEYS = ("S in c", "T in c", "T in bg", "CPS S in c", "CPS T in c")


def _mean_sd(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def _fmt(values: list[float]) -> str:
    mean, sd = _mean_sd(values)
    if mean is None:
        return "-"
    return f"{mean:.1f} ± {sd:.1f}" if sd is not None else f"{mean:.1f}"


def collect(out: Path) -> dict[tuple[str, str], dict[int, dict]]:
    """{(arm, method): {seed: verdict row}} of every finished run under ``out``."""
    rows: dict[tuple[str, str], dict[int, dict]] = {}
    for path in sorted(out.glob(f"*/seed*/*/{RESULT}")):
        row = json.loads(path.read_text())
        rows.setdefault((row["arm"], row["method"]), {})[row["seed"]] = row
    return rows


def class_differences(base: list[dict], plda: list[dict]) -> dict[str, float | None]:
    """Per class, the mean over seeds of PLDA's val IoU minus the baseline's.

    A class absent from the split's ground truth has IoU None in a row: it is left out of the
    mean (None when no seed has it).
    """
    pairs = [(x.get("val_iou") or {}, y.get("val_iou") or {}) for x, y in zip(base, plda)]
    classes = sorted({c for pair in pairs for iou in pair for c in iou})
    out: dict[str, float | None] = {}
    for c in classes:
        diffs = [y[c] - x[c] for x, y in pairs
                 if x.get(c) is not None and y.get(c) is not None]
        out[c] = statistics.fmean(diffs) if diffs else None
    return out


def compare(rows: dict, arm: str, baseline: str) -> dict | None:
    variant = BASELINES[baseline]
    a, b = rows.get((arm, baseline), {}), rows.get((arm, variant), {})
    seeds = sorted(set(a) & set(b))
    if not seeds:
        return None
    out = {"arm": arm, "baseline": baseline, "variant": variant, "seeds": seeds, "scores": {}}
    for key in SCORES:
        va, vb = [a[s][key] for s in seeds], [b[s][key] for s in seeds]
        diff = [y - x for x, y in zip(va, vb)]
        out["scores"][key] = {"baseline": va, "plda": vb, "diff": diff,
                              "plda_higher": sum(d > 0 for d in diff)}
    out["val_class_diff"] = class_differences([a[s] for s in seeds], [b[s] for s in seeds])
    for name, arm_rows in (("baseline", a), ("plda", b)):
        out[f"{name}_purity"] = {k: statistics.fmean(arm_rows[s]["domains"]["purity"][k]
                                                     for s in seeds)
                                 for k in PURITY_KEYS if all("domains" in arm_rows[s]
                                                             for s in seeds)}
        out[f"{name}_val_map"] = [arm_rows[s]["classification"]["val"]["map"] for s in seeds]
        out[f"{name}_minutes"] = [arm_rows[s].get("minutes") for s in seeds]
    return out


def summary_markdown(comparisons: list[dict], meta: dict) -> str:
    lines = [f"Seed mIoU (%), the 13 supported classes / classes present; mean ± sd over seeds; "
             f"paired difference PLDA − baseline (on how many seeds PLDA is higher). "
             f"{meta}", ""]
    table = []
    for c in comparisons:
        s = c["scores"]
        n = len(c["seeds"])

        def delta(key: str) -> str:
            return f"{_fmt(s[key]['diff'])} ({s[key]['plda_higher']} of {n})"

        table.append((
            c["arm"], f"{c['baseline']} → {c['variant']}", ",".join(map(str, c["seeds"])),
            _fmt(s["val_miou_13"]["baseline"]), _fmt(s["val_miou_13"]["plda"]),
            delta("val_miou_13"), " / ".join(f"{d:+.1f}" for d in s["val_miou_13"]["diff"]),
            f"{_fmt(s['val_miou_present']['baseline'])} / {_fmt(s['val_miou_present']['plda'])}",
            delta("val_miou_present"), _fmt(s["train_miou_13"]["baseline"]),
            _fmt(s["train_miou_13"]["plda"]), delta("train_miou_13"),
            f"{_fmt(c['baseline_val_map'])} / {_fmt(c['plda_val_map'])}"))
    lines.append(format_table(
        ["arm", "baseline → +PLDA", "seeds", "val 13: baseline", "val 13: +PLDA", "val 13: Δ",
         "val 13: Δ per seed", "val present: baseline / +PLDA", "val present: Δ",
         "train 13: baseline", "train 13: +PLDA", "train 13: Δ", "val mAP: baseline / +PLDA"],
        table, markdown=True))
    classes = sorted({k for c in comparisons for k, v in c["val_class_diff"].items()
                      if v is not None})
    if classes:
        lines += ["", "Per class, val IoU of +PLDA minus the baseline (points, mean over seeds):",
                  "", format_table(
                      ["arm", "baseline → +PLDA", *classes],
                      [(c["arm"], f"{c['baseline']} → {c['variant']}",
                        *(c["val_class_diff"].get(k) for k in classes)) for c in comparisons],
                      dict.fromkeys(classes, "+.1f"), markdown=True)]
    lines += ["", "Domain purity (%, 200 training images, means over seeds; for a baseline what "
              "PLDA would be given by its maps):", "",
              format_table(["arm", "method", *PURITY_KEYS],
                           [(c["arm"], method,
                             *((c.get(f"{name}_purity") or {}).get(k) for k in PURITY_KEYS))
                            for c in comparisons
                            for name, method in (("baseline", c["baseline"]),
                                                 ("plda", c["variant"]))],
                           dict.fromkeys(PURITY_KEYS, ".1f"), markdown=True)]
    return "\n".join(lines) + "\n"


def summarise(out: Path) -> list[dict]:
    from plda.utils.io import atomic_write_json, atomic_write_text

    rows = collect(out)
    comparisons = [c for arm in ARMS for base in BASELINES
                   if (c := compare(rows, arm, base)) is not None]
    runs = [r for by_seed in rows.values() for r in by_seed.values()]
    commits = sorted({r.get("commit") or "?" for r in runs})
    meta = f"Runs: {len(runs)}; commits {', '.join(commits)}."
    atomic_write_json(out / "summary.json", {"comparisons": comparisons, "meta": meta})
    text = summary_markdown(comparisons, meta) + chain_markdown(out)
    atomic_write_text(out / "summary.md", text)
    print(text)
    return comparisons


def chain_markdown(out: Path) -> str:
    """A table of the finished chains under ``out`` (empty when there are none)."""
    rows: dict[str, dict[int, dict]] = {}
    for path in sorted(out.glob(f"scratch/seed*/*/{CHAIN}")):
        row = json.loads(path.read_text())
        rows.setdefault(row["method"], {})[row["seed"]] = row
    if not rows:
        return ""
    table = []
    for method, by_seed in rows.items():
        r = [by_seed[k] for k in sorted(by_seed)]

        def pair(prefix: str) -> str:
            return (f"{_fmt([x[prefix + '_miou_13'] for x in r])} / "
                    f"{_fmt([x[prefix + '_miou_present'] for x in r])}")

        minutes = [(x.get("refine_minutes") or 0) + (x.get("seg_minutes") or 0) for x in r]
        table.append((method, ",".join(map(str, sorted(by_seed))), pair("val"),
                      pair("pseudo_train"), pair("seg_val"), _fmt(minutes)))
    return "\n".join(["", "The whole chain from the scratch runs (mIoU %, 13 classes / present; "
                      "mean ± sd over seeds): seeds on val, IRN pseudo masks on train, the "
                      "DeepLab trained on them on val.", "",
                      format_table(["method", "seeds", "seeds val", "IRN pseudo train",
                                    "DeepLab val", "stage-2 min"], table, markdown=True)]) + "\n"
