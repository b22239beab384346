"""Run-to-run spread of the real-data benchmark: the same methods trained with different seeds.

    python -m benchmarks.seed_spread runs/s0 runs/s1 runs/s2         # benchmark --out folders
    python -m benchmarks.seed_spread runs/s0/cam runs/s1/seam_plda   # or single run folders

On the 1,545-image sample with 274 training steps a single run's seed mIoU moves by several points
with ``train.seed`` alone, so an ordering of methods read off one run per method may be noise.
This reads finished runs (``config.yaml`` and the ``seeds`` entry of ``metrics.json`` of each
``plda run`` folder; a benchmark ``--out`` folder stands for its method sub-folders) and prints

- one row per run: method, training seed, output stride, chosen threshold, seed mIoU on train
  and val (classes present / the 13 supported classes), background IoU on val, and, on a dataset
  with part masks (the built-in synthetic one), the share of each object's discriminative part
  and of the rest of its body that the val seeds cover (``plda.evaluation.parts``);
- per method: the mean, sample standard deviation, minimum and maximum over its runs;
- per pair of methods: on how many of the seeds both were trained with the first beats the
  second on val (13 classes; classes present on another dataset), and the mean difference.

``benchmarks/voc12subset.py --seeds 0,1,2`` runs the seeds and prints this table at the end.
"""

from __future__ import annotations

import argparse
import json
import math
from itertools import combinations
from pathlib import Path

from benchmarks.table import print_table
from benchmarks.voc12subset import METHODS, SUPPORTED, _mean

SCORES = ("train", "train_13", "val", "val_13", "val_part", "val_body")


def part_body(run: Path, cfg) -> dict:
    """{"<split>_part": %, "<split>_body": %}: the share of each object's discriminative part and
    of the rest of its body that the run's seeds cover (``plda.evaluation.parts``), on datasets
    with part masks (the built-in synthetic one); empty elsewhere."""
    from plda.data.layout import DatasetLayout
    from plda.evaluation.parts import PARTS_DIR, part_body_coverage
    from plda.runfolder import dataset_root

    from plda.errors import DataError

    try:
        root = dataset_root(cfg, generate=False)
    except DataError:  # the dataset is gone: the seed scores in metrics.json still stand
        return {}
    if not (root / PARTS_DIR).is_dir():
        return {}
    layout = DatasetLayout(root)
    out = {}
    for split in ("train", "val"):
        seeds = run / "seeds" / split
        if seeds.is_dir():
            cov = part_body_coverage(seeds, layout.mask_dir, root / PARTS_DIR, layout.ids(split),
                                     layout.class_names)
            out[f"{split}_part"], out[f"{split}_body"] = cov["part"], cov["body"]
    return out


def run_folders(paths: list[Path]) -> list[Path]:
    """Each path itself if it is a run folder (has ``metrics.json``), else its method sub-folders
    that are; an error naming the path when it holds neither."""
    runs = []
    for path in paths:
        if (path / "metrics.json").is_file():
            runs.append(path)
            continue
        found = [path / m for m in METHODS if (path / m / "metrics.json").is_file()]
        if not found:
            raise SystemExit(f"{path}: neither a run folder (no metrics.json) nor a benchmark "
                             f"--out folder (no {'/, '.join(METHODS)}/ with a metrics.json)")
        runs.extend(found)
    return runs


def run_row(run: Path) -> dict:
    """Method, seed, stride, threshold and seed scores of one finished run folder."""
    from plda.config import load_run_folder_config

    cfg = load_run_folder_config(run)
    metrics = json.loads((run / "metrics.json").read_text())
    seeds = metrics.get("seeds")
    if not seeds or "train" not in seeds or "val" not in seeds:
        raise SystemExit(f"{run / 'metrics.json'}: no seed scores for train and val "
                         "(run the pipeline through its seeds stage first)")
    row = {"run": str(run), "method": cfg.method.name, "seed": cfg.train.seed,
           "stride": cfg.model.output_stride, "threshold": seeds["bg_threshold"]}
    for split in ("train", "val"):
        iou = seeds[split]["iou"]
        row[split] = seeds[split]["miou"]
        # the 13 supported VOC classes mean nothing on a dataset with other class names
        row[f"{split}_13"] = (_mean(iou[c] for c in SUPPORTED)
                              if set(SUPPORTED) <= set(iou) else None)
    row["val_background"] = seeds["val"]["iou"].get("background")
    row.update({"train_part": None, "train_body": None, "val_part": None, "val_body": None})
    row.update(part_body(run, cfg))
    return row


def summarize(rows: list[dict]) -> dict:
    """{"methods": {method: {score: {n, mean, sd, min, max}}},
        "pairs": [{a, b, seeds, a_wins, mean_diff}], "pair_score": key} over the given run rows;
    pairs compare val mIoU over the 13 supported classes, or over the classes present where a
    run has no 13-class score (another dataset)."""
    methods: dict[str, list[dict]] = {}
    for r in rows:
        methods.setdefault(r["method"], []).append(r)
    stats = {}
    for method, runs in methods.items():
        stats[method] = {}
        for key in SCORES:
            values = [r[key] for r in runs if r.get(key) is not None]
            if not values:
                continue
            mean = sum(values) / len(values)
            sd = (math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
                  if len(values) > 1 else None)
            stats[method][key] = {"n": len(values), "mean": mean, "sd": sd,
                                  "min": min(values), "max": max(values)}
    key = "val_13" if all(r["val_13"] is not None for r in rows) else "val"
    pairs = []
    order = [m for m in METHODS if m in methods] + sorted(set(methods) - set(METHODS))
    for a, b in combinations(order, 2):
        # one run per (method, seed): the last one given wins if a seed was passed twice
        by_seed_a = {r["seed"]: r[key] for r in methods[a]}
        by_seed_b = {r["seed"]: r[key] for r in methods[b]}
        common = sorted(s for s in by_seed_a.keys() & by_seed_b.keys()
                        if by_seed_a[s] is not None and by_seed_b[s] is not None)
        if not common:
            continue
        diffs = [by_seed_a[s] - by_seed_b[s] for s in common]
        pairs.append({"a": a, "b": b, "seeds": common,
                      "a_wins": sum(d > 0 for d in diffs),
                      "mean_diff": sum(diffs) / len(diffs)})
    return {"methods": stats, "pairs": pairs, "pair_score": key}


def print_spread(rows: list[dict]) -> dict:
    summary = summarize(rows)
    one = ".1f"
    print_table(["method", "seed", "stride", "thr", "train", "tr 13", "val", "val 13", "val bg",
                 "part", "body", "run"],
                [(r["method"], r["seed"], r["stride"], r["threshold"], r["train"], r["train_13"],
                  r["val"], r["val_13"], r["val_background"], r.get("val_part"),
                  r.get("val_body"), r["run"])
                 for r in sorted(rows, key=lambda r: (r["method"], r["seed"]))],
                {"thr": ".2f", **dict.fromkeys(["train", "tr 13", "val", "val 13", "val bg",
                                                "part", "body"], one)})
    print()
    print_table(["method", "score", "n", "mean", "sd", "min", "max"],
                [(method, key, s["n"], s["mean"], s["sd"], s["min"], s["max"])
                 for method, scores in summary["methods"].items()
                 for key, s in scores.items()],
                dict.fromkeys(["mean", "sd", "min", "max"], one))
    if summary["pairs"]:
        over = "the 13 classes" if summary["pair_score"] == "val_13" else "the classes present"
        print(f"\nval mIoU over {over}, per pair on the seeds both ran:")
        for p in summary["pairs"]:
            print(f"  {p['a']} > {p['b']} on {p['a_wins']} of {len(p['seeds'])} seeds "
                  f"{p['seeds']}, mean difference {p['mean_diff']:+.1f}")
    return summary


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", type=Path,
                   help="finished run folders or benchmark --out folders")
    p.add_argument("--json", type=Path, help="also write the rows and summary here")
    args = p.parse_args(argv)
    rows = [run_row(run) for run in run_folders(args.runs)]
    summary = print_spread(rows)
    if args.json:
        from plda.utils.io import atomic_write_json

        atomic_write_json(args.json, {"rows": rows, **summary})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
