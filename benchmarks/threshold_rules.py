"""How close does each label-free background-threshold rule land to the mask-tuned threshold?

For each preset and seed: train the stage-1 classifier and make its CAMs (``plda run PRESET
--until cam``, cached in ``--out``), then on each split

- sweep the threshold against the masks (the mask-tuned threshold is the sweep's best on
  train, the protocol ``cam.sweep_split=train`` follows);
- compute every label-free rule's threshold from the train split's CAMs alone
  (``plda.inference.thresholds``);
- score the seeds at every threshold on train and on val.

One JSON per run in ``--results`` (re-scorable: it keeps the whole sweep curve), then a table:
per rule, the threshold gap to the mask-tuned one and the seed mIoU it gives up, mean ± sd
over seeds, per preset. The rule chosen as ``cam.label_free``'s default is the one with the
smallest mean absolute threshold gap on train over all presets and seeds.

    python -m benchmarks.threshold_rules --presets synth_cam,voc12subset_cam_effnetlite0 \
        --seeds 0,1,2 --out runs/threshold_rules --results benchmarks/results/threshold_rules
    python -m benchmarks.threshold_rules --results benchmarks/results/threshold_rules --summary
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

from benchmarks.table import format_table

RULES = ("otsu", "soft_miou", "fixed:0.15", "fixed:0.26")
SWEEP = [round(0.01 * i, 2) for i in range(1, 81)]  # 0.01 .. 0.80


def run_one(preset: str, seed: int, out: Path, results: Path) -> dict:
    from plda.config import load_run_config
    from plda.evaluation.evaluate import evaluate_cams
    from plda.inference.thresholds import all_rule_thresholds, cam_histogram
    from plda.pipeline.run import run_pipeline
    from plda.runfolder import load_layout
    from plda.utils.provenance import git_commit

    target = results / f"{preset}_seed{seed}.json"
    if target.is_file():
        print(f"[{preset} seed {seed}] done already: {target}", flush=True)
        return json.loads(target.read_text())
    commit = git_commit()
    run = out / preset / f"seed{seed}"
    cfg = load_run_config(preset, [f"run_dir={run}", f"train.seed={seed}",
                                   "data.eval_splits=[train,val]"])
    start = time.perf_counter()
    run_pipeline(cfg, until="cam")
    layout = load_layout(cfg, generate=False)
    hist = cam_histogram(run / "cams" / "train", layout.ids("train"))
    rule_t = all_rule_thresholds(hist, RULES)
    thresholds = sorted(set(SWEEP) | set(rule_t.values()))
    row: dict = {"preset": preset, "seed": seed, "commit": commit,
                 "machine": f"{platform.processor() or platform.machine()}, "
                            f"{__import__('os').cpu_count()} cores",
                 "date": time.strftime("%Y-%m-%d"), "rules": rule_t, "splits": {}}
    for split in ("train", "val"):
        ev = evaluate_cams(run / "cams" / split, layout.mask_dir, layout.ids(split),
                           layout.class_names, thresholds)
        curve = {round(p["threshold"], 3): p["miou"] for p in ev["sweep"]}
        tuned = max(SWEEP, key=lambda t: (curve[t], -t))
        row["splits"][split] = {"curve": [[t, curve[t]] for t in thresholds],
                                "tuned": tuned, "tuned_miou": curve[tuned],
                                "rule_miou": {r: curve[round(t, 3)] for r, t in rule_t.items()}}
    row["minutes"] = round((time.perf_counter() - start) / 60, 2)
    results.mkdir(parents=True, exist_ok=True)
    from plda.utils.io import atomic_write_json

    atomic_write_json(target, row)
    print(f"[{preset} seed {seed}] train tuned {row['splits']['train']['tuned']:.2f}; "
          + ", ".join(f"{r} {t:.3f}" for r, t in rule_t.items()), flush=True)
    return row


def _ms(values: list[float]) -> str:
    if not values:
        return "—"
    if len(values) == 1:
        return f"{values[0]:+.3f}" if abs(values[0]) < 1 else f"{values[0]:+.1f}"
    mean, sd = statistics.fmean(values), statistics.stdev(values)
    return f"{mean:+.3f} ± {sd:.3f}" if abs(mean) < 1 and sd < 1 else f"{mean:+.1f} ± {sd:.1f}"


def summarize(rows: list[dict]) -> tuple[str, str]:
    """The table (markdown) and the rule with the smallest mean |threshold gap| on train."""
    presets = list(dict.fromkeys(r["preset"] for r in rows))
    table = []
    gaps: dict[str, list[float]] = {rule: [] for rule in RULES}
    for preset in presets:
        rs = sorted((r for r in rows if r["preset"] == preset), key=lambda r: r["seed"])
        seeds = ",".join(str(r["seed"]) for r in rs)
        tuned = [r["splits"]["train"]["tuned"] for r in rs]
        for rule in RULES:
            d_t = [r["rules"][rule] - r["splits"]["train"]["tuned"] for r in rs]
            gaps[rule] += [abs(d) for d in d_t]
            lost = {s: [r["splits"][s]["tuned_miou"] - r["splits"][s]["rule_miou"][rule]
                        for r in rs] for s in ("train", "val")}
            table.append((preset, seeds, statistics.fmean(tuned), rule,
                          statistics.fmean(r["rules"][rule] for r in rs), _ms(d_t),
                          _ms(lost["train"]), _ms(lost["val"])))
    best = min(RULES, key=lambda rule: statistics.fmean(gaps[rule]) if gaps[rule] else 9.0)
    lines = [format_table(["preset", "seeds", "tuned t (train)", "rule", "rule t", "t − tuned",
                           "mIoU lost, train", "mIoU lost, val"], table,
                          {"tuned t (train)": ".2f", "rule t": ".3f"}, markdown=True), ""]
    lines.append("mean |t − tuned| on train over every preset and seed: " + ", ".join(
        f"{rule} {statistics.fmean(g):.3f}" for rule, g in gaps.items() if g)
        + f"; closest: {best}")
    return "\n".join(lines), best


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--presets", default="synth_cam,voc12subset_cam_effnetlite0")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--out", type=Path, default=Path("runs/threshold_rules"),
                   help="run folders (training and CAMs; cached)")
    p.add_argument("--results", type=Path, default=Path("benchmarks/results/threshold_rules"))
    p.add_argument("--summary", action="store_true", help="only print the table of --results")
    args = p.parse_args(argv)
    if not args.summary:
        for preset in args.presets.split(","):
            for seed in (int(s) for s in args.seeds.split(",")):
                run_one(preset, seed, args.out, args.results)
    rows = [json.loads(f.read_text()) for f in sorted(args.results.glob("*.json"))]
    if not rows:
        print(f"no results in {args.results}", file=sys.stderr)
        return 1
    table, best = summarize(rows)
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
