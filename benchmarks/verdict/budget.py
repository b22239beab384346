"""The budget sweep: each method at each epoch count, one seed, scored on the training split
only, and the epochs at which train seed mIoU stops rising (choose the budget on train)."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.table import print_table
from benchmarks.verdict import jobs


def budget(args) -> list[dict]:
    """Each method at each epoch count, one seed, scored on the training split only."""
    seed = args.seeds[0]
    rows = []
    for epochs in args.epochs_list:
        for method in args.methods:
            folder = args.out / f"e{epochs}"
            result = folder / method / "budget.json"
            if result.is_file():
                rows.append(json.loads(result.read_text()))
                continue
            began = jobs._begin(f"budget {method} {epochs} epochs")
            overrides = [f"train.epochs={epochs}", f"train.amp={args.amp}",
                         f"cam.amp={args.amp}", "data.eval_splits=[train]",
                         *([f"train.seed={seed}"] if seed else []), *args.overrides]
            row = jobs.voc12subset.run_method(method, folder, args.data, overrides, refine="none",
                                         seg=False, label_free=False,
                                         grid=getattr(args, "grid", "coarse"))
            row = jobs.score_run(folder / method, row, ["train"], args.amp, 0)
            rows.append(jobs._finish(result, row, began, epochs=epochs, seed=seed))
    print()
    print_table(["method", "epochs", "train 13", "train", "thr", "mAP", "F1", "train min"],
                [(r["method"], r["epochs"], r["train_miou_13"], r["train_miou_present"],
                  r["bg_threshold"], r["classification"]["train"]["map"],
                  r["classification"]["train"]["f1"], r["train_minutes"]) for r in rows],
                {"train 13": ".1f", "train": ".1f", "thr": ".2f", "mAP": ".1f", "F1": ".2f",
                 "train min": ".1f"})
    print("Training split only: seed mIoU (13 supported classes / present), threshold chosen on "
          "train, classification mAP and F1 at 0.5 of the classifier's own scores.")
    if not args.no_summary:
        choice = choose_budget(read_budget(args.out), args.min_gain)
        print(f"Stops rising (next gain < {args.min_gain:g}): " + ", ".join(
            f"{m} at {c['epochs']}" for m, c in choice["methods"].items())
            + f"; budget {choice['epochs']} epochs.")
    return rows


def read_budget(folder: Path) -> list[dict]:
    """The finished rows of a budget sweep's folder (``e<epochs>/<method>/budget.json``)."""
    return [json.loads(p.read_text()) for p in sorted(folder.glob("e*/*/budget.json"))]


def choose_budget(rows: list[dict], min_gain: float = 1.0) -> dict:
    """The epochs at which train seed mIoU (13 classes) stops rising, per method and overall.

    For each method, with its swept epochs in order, the first count whose successor adds less
    than ``min_gain`` points (the successor may also be lower), or the largest swept. The overall
    budget is the largest of the methods' so that none is cut off while still rising.
    """
    by_method: dict[str, dict[int, float]] = {}
    for row in rows:
        by_method.setdefault(row["method"], {})[int(row["epochs"])] = float(row["train_miou_13"])
    if not by_method:
        raise SystemExit("the budget sweep has no finished runs (no e*/<method>/budget.json)")
    chosen = {}
    for method, scores in by_method.items():
        epochs = sorted(scores)
        pick = epochs[-1]
        for here, after in zip(epochs, epochs[1:]):
            if scores[after] - scores[here] < min_gain:
                pick = here
                break
        chosen[method] = {"epochs": pick, "train_miou_13": {str(e): scores[e] for e in epochs}}
    return {"epochs": max(c["epochs"] for c in chosen.values()), "min_gain": min_gain,
            "methods": chosen}
