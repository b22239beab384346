"""Does PLDA improve its baseline? CAM vs CAM+PLDA and SEAM vs SEAM+PLDA on the real VOC sample.

    python benchmarks/plda_verdict.py --out runs/verdict                  # every job, 3 seeds
    python benchmarks/plda_verdict.py --out runs/verdict --arms scratch --seeds 0 --methods cam
    python benchmarks/plda_verdict.py --out runs/verdict --summary        # the tables only
    python benchmarks/plda_verdict.py --budget --out runs/budget --methods cam,seam \\
        --epochs 1,2,4,8                                                  # choose the budget

Two arms, each over ``--seeds`` (``train.seed``), with the real-sample presets
(``voc12subset_<method>_effnetlite0``: EfficientNet-Lite0, CAM family at output stride 32, SEAM
family at 16), bf16 where the CPU has it (``train.amp`` / ``cam.amp``; fp32 with a warning
elsewhere), CAMs for train and val at one scale + flip, seeds with the background threshold
chosen on train:

- ``scratch``: each of cam, cam_plda, seam, seam_plda trained from ImageNet for ``--epochs``
  (the paper's protocol);
- ``continue``: each scratch baseline run of the same seed trained ``--continue-epochs`` more,
  with its own losses only (cam -> cam, seam -> seam) or with PLDA added (cam -> cam_plda,
  seam -> seam_plda) through ``model.init_from``: the same classifier state, the same extra
  steps; only PLDA differs.

Every run is a ``plda run`` folder ``OUT/<arm>/seed<k>/<method>/`` (``seeds/<split>/<id>.png``
kept, so the scores can be re-computed independently) with ``verdict.json``: seed mIoU on train
and val (over the 13 classes the sample supports and over the classes present; per-class IoU),
the threshold, image-level classification mAP / F1 (``plda.evaluation.classification``), the
purity of PLDA's source and target domains and of CPS's pseudo labels against the ground truth
(``benchmarks/plda_domains.py``, 200 training images; for a baseline: what PLDA would be given),
the first and last logged loss terms and the minutes of each stage. A run with its
``verdict.json`` is skipped; an interrupted one resumes (the pipeline's stage cache and training
checkpoints), so the jobs can run in several sittings. Two processes on one run are refused by
the run folder's lock.

``OUT/summary.json`` and ``OUT/summary.md``: per arm and baseline, each method's mean ± sd and
the paired per-seed difference PLDA - baseline (mean ± sd, on how many seeds PLDA is higher),
per-class mean differences on val, and the domain purity.

``--budget`` trains each of ``--methods`` for each of ``--epochs`` (one seed) and scores the
training split only (seeds and classification mAP): choose the budget on train, never on val.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = HERE.parent / ".." / "shared" / "data" / "voc12-subset"
BASELINES = {"cam": "cam_plda", "seam": "seam_plda"}
METHODS = ("cam", "cam_plda", "seam", "seam_plda")
ARMS = ("scratch", "continue")
SCORES = ("val_miou_13", "val_miou_present", "train_miou_13", "train_miou_present")
PURITY_KEYS = ("S in c", "T in c", "T in bg", "CPS S in c", "CPS T in c")
RESULT = "verdict.json"


def _benchmarks():
    sys.path.insert(0, str(HERE))
    import plda_domains
    import voc12subset

    return voc12subset, plda_domains


def common_overrides(epochs: int, seed: int, amp: str) -> list[str]:
    return [f"train.epochs={epochs}", f"train.seed={seed}", f"train.amp={amp}", f"cam.amp={amp}"]


def job_overrides(arm: str, method: str, seed: int, args) -> tuple[str, list[str]]:
    """(the method run, its overrides) of one job of ``arm``."""
    if arm == "scratch":
        return method, common_overrides(args.epochs, seed, args.amp)
    baseline = method if method in BASELINES else next(b for b, v in BASELINES.items()
                                                       if v == method)
    start = args.out / "scratch" / f"seed{seed}" / baseline
    return method, [*common_overrides(args.continue_epochs, seed, args.amp),
                    f"model.init_from={start}"]


def _stage1(run: Path):
    from plda.config import load_run_folder_config
    from plda.pipeline.common import load_layout, load_stage1_model

    cfg = load_run_folder_config(run)
    layout = load_layout(cfg, generate=False)
    return cfg, layout, load_stage1_model(cfg, layout.num_classes, run / "stage1.safetensors")


def score_run(run: Path, row: dict, splits: list[str], amp: str, domain_images: int) -> dict:
    """``row`` (voc12subset's results row) plus classification and domain purity."""
    from plda.evaluation.classification import evaluate_classification

    _, plda_domains = _benchmarks()
    cfg, layout, model = _stage1(run)
    row["classification"] = {s: evaluate_classification(model, layout, s, amp=amp)
                             for s in splits}
    if domain_images:
        start = time.perf_counter()
        counts = plda_domains.run_domains(run, domain_images, 288, None)
        row["domains"] = {"counts": counts, "purity": plda_domains.purity(counts),
                          "seconds": time.perf_counter() - start}
    return row


def run_job(arm: str, method: str, seed: int, args) -> dict:
    """One run (skipped when its verdict.json exists); its verdict row."""
    voc12subset, _ = _benchmarks()
    folder = args.out / arm / f"seed{seed}"
    run = folder / method
    result = run / RESULT
    if result.is_file():
        return json.loads(result.read_text())
    method, overrides = job_overrides(arm, method, seed, args)
    if arm == "continue":
        start = Path(overrides[-1].split("=", 1)[1])
        if not (start / "stage1.safetensors").is_file():
            print(f"   (waiting for {start}: its scratch run is not finished)", flush=True)
            return {}
    print(f"== {arm} seed {seed} {method} ({time.strftime('%Y-%m-%d %H:%M:%S')})", flush=True)
    t0 = time.perf_counter()
    row = voc12subset.run_method(method, folder, args.data, [*overrides, *args.overrides],
                                 refine="none", seg=False, label_free=False)
    row = score_run(run, row, ["train", "val"], args.amp, args.domain_images)
    row.update({"arm": arm, "seed": seed, "overrides": overrides,
                "minutes": (time.perf_counter() - t0) / 60.0, "commit": _commit(),
                "finished": time.strftime("%Y-%m-%dT%H:%M:%S")})
    from plda.utils.io import atomic_write_json

    atomic_write_json(result, row)
    return row


def _commit() -> str | None:
    import subprocess

    out = subprocess.run(["git", "-C", str(HERE), "rev-parse", "--short", "HEAD"],
                         capture_output=True, text=True)
    return out.stdout.strip() or None


# ---- summary --------------------------------------------------------------------------------

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
    classes = sorted(a[seeds[0]].get("val_iou") or {})
    out["val_class_diff"] = {c: statistics.fmean((b[s]["val_iou"] or {}).get(c, 0.0)
                                                 - (a[s]["val_iou"] or {}).get(c, 0.0)
                                                 for s in seeds) for c in classes}
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
             f"{meta}", "",
             "| arm | baseline → +PLDA | seeds | val 13: baseline | val 13: +PLDA "
             "| val 13: Δ | val present: Δ | train 13: baseline | train 13: +PLDA "
             "| train 13: Δ | val mAP: baseline / +PLDA |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for c in comparisons:
        s = c["scores"]
        n = len(c["seeds"])

        def delta(key: str) -> str:
            return f"{_fmt(s[key]['diff'])} ({s[key]['plda_higher']} of {n})"

        lines.append(
            f"| {c['arm']} | {c['baseline']} → {c['variant']} | {','.join(map(str, c['seeds']))} "
            f"| {_fmt(s['val_miou_13']['baseline'])} | {_fmt(s['val_miou_13']['plda'])} "
            f"| {delta('val_miou_13')} | {delta('val_miou_present')} "
            f"| {_fmt(s['train_miou_13']['baseline'])} | {_fmt(s['train_miou_13']['plda'])} "
            f"| {delta('train_miou_13')} | {_fmt(c['baseline_val_map'])} / "
            f"{_fmt(c['plda_val_map'])} |")
    lines += ["", "Domain purity (%, 200 training images, means over seeds; for a baseline what "
              "PLDA would be given by its maps):", "",
              "| arm | method | " + " | ".join(PURITY_KEYS) + " |",
              "|---|---|" + "---|" * len(PURITY_KEYS)]
    for c in comparisons:
        for name, method in (("baseline", c["baseline"]), ("plda", c["variant"])):
            purity = c.get(f"{name}_purity") or {}
            lines.append(f"| {c['arm']} | {method} | " + " | ".join(
                f"{purity[k]:.1f}" if k in purity else "-" for k in PURITY_KEYS) + " |")
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
    text = summary_markdown(comparisons, meta)
    atomic_write_text(out / "summary.md", text)
    print(text)
    return comparisons


# ---- budget -------------------------------------------------------------------------------

def budget(args) -> list[dict]:
    """Each method at each epoch count, one seed, scored on the training split only."""
    voc12subset, _ = _benchmarks()
    from plda.utils.io import atomic_write_json

    seed = args.seeds[0]
    rows = []
    for epochs in args.epochs_list:
        for method in args.methods:
            folder = args.out / f"e{epochs}"
            result = folder / method / "budget.json"
            if result.is_file():
                rows.append(json.loads(result.read_text()))
                continue
            print(f"== budget {method} {epochs} epochs ({time.strftime('%H:%M:%S')})", flush=True)
            overrides = [f"train.epochs={epochs}", f"train.amp={args.amp}",
                         f"cam.amp={args.amp}", "data.eval_splits=[train]",
                         *([f"train.seed={seed}"] if seed else []), *args.overrides]
            row = voc12subset.run_method(method, folder, args.data, overrides, refine="none",
                                         seg=False, label_free=False)
            row = score_run(folder / method, row, ["train"], args.amp, 0)
            row.update({"epochs": epochs, "seed": seed, "commit": _commit()})
            atomic_write_json(result, row)
            rows.append(row)
    print(f"\n{'method':10s} {'epochs':>6s} {'train 13':>8s} {'train':>6s} {'thr':>5s} "
          f"{'mAP':>6s} {'F1':>5s} {'train min':>9s}")
    for r in rows:
        c = r["classification"]["train"]
        print(f"{r['method']:10s} {r['epochs']:6d} {r['train_miou_13']:8.1f} "
              f"{r['train_miou_present']:6.1f} {r['bg_threshold']:5.2f} {c['map']:6.1f} "
              f"{c['f1']:5.2f} {r['train_minutes']:9.1f}")
    print("Training split only: seed mIoU (13 supported classes / present), threshold chosen on "
          "train, classification mAP and F1 at 0.5 of the classifier's own scores.")
    return rows


def _ints(text: str, what: str) -> list[int]:
    try:
        values = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise SystemExit(f"{what}: {text!r} is not a comma list of integers") from None
    if not values or len(set(values)) != len(values) or min(values) < 0:
        raise SystemExit(f"{what}: {text!r}: expected distinct non-negative integers")
    return values


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--arms", default=",".join(ARMS))
    p.add_argument("--epochs", default="4", help="stage-1 epochs from scratch (--budget: a "
                   "comma list)")
    p.add_argument("--continue-epochs", type=int, default=2)
    p.add_argument("--amp", choices=("none", "bf16"), default="bf16")
    p.add_argument("--domain-images", type=int, default=200)
    p.add_argument("--summary", action="store_true", help="only the tables of finished runs")
    p.add_argument("--quick", action="store_true", help="smoke run: 64 train / 32 val images, "
                   "12 steps per run, 16 images for the domains")
    p.add_argument("--budget", action="store_true", help="the budget sweep (module doc)")
    p.add_argument("overrides", nargs="*", help="key=value config overrides for every run")
    args = p.parse_args(argv)
    args.seeds = _ints(args.seeds, "--seeds")
    args.methods = [m for m in args.methods.split(",") if m]
    arms = [a for a in args.arms.split(",") if a]
    bad = sorted(set(args.methods) - set(METHODS)) + sorted(set(arms) - set(ARMS))
    if bad:
        raise SystemExit(f"unknown methods/arms {bad}; methods {METHODS}, arms {ARMS}")
    if args.summary:
        summarise(args.out)
        return 0
    args.data = args.data.resolve()
    if not (args.data / "ImageSets" / "Segmentation" / "train.txt").is_file():
        raise SystemExit(f"{args.data}: not the VOC sample (no ImageSets/Segmentation/train.txt)")
    if args.quick:
        voc12subset, _ = _benchmarks()
        args.data = voc12subset._quick_dataset(args.data, args.out / "quick-data", 64, 32)
        args.overrides = ["train.epochs=null", "train.iterations=12", "train.checkpoint_every=6",
                          *args.overrides]
        args.domain_images = min(args.domain_images, 16)
    if args.budget:
        args.epochs_list = _ints(args.epochs, "--epochs")
        budget(args)
        return 0
    args.epochs = _ints(args.epochs, "--epochs")[0]
    for arm in arms:  # every scratch run first: the continue arm starts from them
        for seed in args.seeds:
            for method in args.methods:
                run_job(arm, method, seed, args)
    summarise(args.out)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(HERE.parent / "src"))
    raise SystemExit(main())
