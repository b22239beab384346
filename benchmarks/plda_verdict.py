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
  (the paper's protocol; default 8, 1,096 steps: the budget sweep's choice, see
  docs/history.md);
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
``--epochs auto:DIR`` then takes the budget from that sweep's folder DIR: for each method the
fewest epochs after which the next step of the sweep adds less than ``--min-gain`` points of
train seed mIoU (13 classes), or the sweep's largest; the verdict uses the largest of these over
the methods swept, so every baseline has stopped rising (``OUT/budget_choice.json`` records it).

``--chain cam,cam_plda`` then carries the scratch runs of those methods (``--seeds``) through
the rest of the chain, IRN pseudo masks on train and the light DeepLab evaluated on val (the
presets' stage 2), in the same run folders with the overrides their ``verdict.json`` records, so
stage 1, the CAMs and the seeds are reused; ``chain.json`` beside it holds the scores and the
summary adds a table of them.

``--grid fine`` runs the fine-grid presets (``voc12subset_fine_<method>_effnetlite0``: a CAM
grid of at least 28 x 28 at the training crop, where the coarse presets have 7 x 7 or 14 x 14);
``--start-from DIR`` takes the continue arm's baselines from ``DIR/scratch/`` instead of
``OUT/scratch/`` (the fine continue arm starts from the coarse scratch baselines: the same
classifier state, K more epochs on the fine grid). Every ``verdict.json`` records ``grid`` and
``cam_grid`` ([h, w] of the CAM at the training crop), and beside it ``seeds_val.npz`` keeps
the run's val seeds (one uint8 label map per image id, key = the id), so ``--rescore`` can
recompute every val score from the repository and the dataset alone.

``--jobs N`` runs N jobs at once, each in its own process (``OUT/logs/<job>.log``), with
``OMP_NUM_THREADS`` = cores / N and, where several GPUs are visible, one GPU per job in turn; a
``continue`` job starts as soon as the scratch run it starts from is finished. For a machine
with many cores or GPUs; the results are the same files as with one job at a time.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
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
CHAIN = "chain.json"
SEED_MAPS = "seeds_val.npz"


def _benchmarks():
    sys.path.insert(0, str(HERE))
    import plda_domains
    import voc12subset

    return voc12subset, plda_domains


def common_overrides(epochs: int, seed: int, amp: str) -> list[str]:
    return [f"train.epochs={epochs}", f"train.seed={seed}", f"train.amp={amp}", f"cam.amp={amp}"]


def baseline_of(method: str) -> str:
    """The baseline a method is (cam, seam) or adds PLDA to (cam_plda -> cam)."""
    return method if method in BASELINES else next(b for b, v in BASELINES.items()
                                                   if v == method)


def job_overrides(arm: str, method: str, seed: int, args) -> tuple[str, list[str]]:
    """(the method run, its overrides) of one job of ``arm``."""
    if arm == "scratch":
        return method, common_overrides(args.epochs, seed, args.amp)
    start = (getattr(args, "start_from", None) or args.out) / "scratch" / f"seed{seed}" / \
        baseline_of(method)
    return method, [*common_overrides(args.continue_epochs, seed, args.amp),
                    f"model.init_from={start}"]


def _stage1(run: Path):
    from plda.config import load_run_folder_config
    from plda.methods.build import load_stage1_model
    from plda.runfolder import load_layout

    cfg = load_run_folder_config(run)
    layout = load_layout(cfg, generate=False)
    return cfg, layout, load_stage1_model(cfg, layout.num_classes, run / "stage1.safetensors")


def cam_grid(model, crop: int) -> list[int]:
    """[h, w] of the CAM (the backbone's final level) for a ``crop`` x ``crop`` training image."""
    import torch

    backbone = model.backbone
    with torch.no_grad():
        levels = backbone.eval()(torch.zeros(1, 3, crop, crop))
    return [int(n) for n in levels[backbone.final_level].shape[-2:]]


def save_seed_maps(run: Path, split: str = "val") -> Path:
    """``run/seeds_<split>.npz``: the run's seeds of ``split`` (``seeds/<split>/<id>.png``), one
    uint8 label map per image id."""
    import numpy as np

    from plda.utils.io import atomic_save_npz
    from plda.data.labels import load_label_png

    folder = run / "seeds" / split
    files = sorted(folder.glob("*.png"))
    if not files:
        raise SystemExit(f"{folder}: no seed maps to keep")
    maps = {f.stem: np.asarray(load_label_png(f), dtype=np.uint8) for f in files}
    path = run / f"seeds_{split}.npz"
    atomic_save_npz(path, **maps)
    return path


def rescore_seed_maps(npz: Path, data: Path, split: str = "val") -> dict:
    """``val_miou_13`` / ``val_miou_present`` / ``val_iou`` (keys named after ``split``)
    recomputed from a ``seeds_<split>.npz`` and the dataset's masks: the numbers a
    ``verdict.json`` holds, from files alone."""
    import numpy as np

    from plda.data.layout import DatasetLayout
    from plda.evaluation.metrics import confusion_matrix, scores
    from plda.data.labels import load_label_png

    voc12subset, _ = _benchmarks()
    layout = DatasetLayout(data)
    names = layout.class_names
    conf = np.zeros((len(names), len(names)), np.int64)
    with np.load(npz) as maps:
        for image_id in maps.files:
            gt = load_label_png(layout.mask_path(image_id))
            pred = maps[image_id]
            if pred.shape != gt.shape:
                raise SystemExit(f"{npz}: {image_id} is {pred.shape}, its mask {gt.shape}")
            conf += confusion_matrix(pred, gt, len(names))
    res = scores(conf, names)
    return {f"{split}_miou_present": res["miou"],
            f"{split}_miou_13": voc12subset._mean(res["iou"].get(c)
                                                  for c in voc12subset.SUPPORTED),
            f"{split}_iou": res["iou"]}


def rescore(out: Path, data: Path) -> list[tuple[Path, float, float]]:
    """(run, recorded val_miou_13, re-scored) of every run under ``out`` that kept its seeds;
    exits with an error naming the runs whose numbers differ."""
    rows, wrong = [], []
    for result in sorted(out.glob(f"*/seed*/*/{RESULT}")):
        npz = result.parent / SEED_MAPS
        if not npz.is_file():
            continue
        recorded = json.loads(result.read_text())["val_miou_13"]
        again = rescore_seed_maps(npz, data)["val_miou_13"]
        rows.append((result.parent, recorded, again))
        print(f"{result.parent.relative_to(out)}: recorded {recorded:.4f}, re-scored "
              f"{again:.4f}", flush=True)
        if abs(recorded - again) > 1e-6:
            wrong.append(str(result.parent))
    if wrong:
        raise SystemExit(f"re-scored val_miou_13 differs from verdict.json: {', '.join(wrong)}")
    return rows


def score_run(run: Path, row: dict, splits: list[str], amp: str, domain_images: int) -> dict:
    """``row`` (voc12subset's results row) plus classification, domain purity and the CAM grid;
    with ``val`` among ``splits`` the val seeds are kept as ``seeds_val.npz``."""
    from plda.evaluation.classification import evaluate_classification

    _, plda_domains = _benchmarks()
    cfg, layout, model = _stage1(run)
    row["cam_grid"] = cam_grid(model, cfg.data.crop)
    if "val" in splits:
        save_seed_maps(run, "val")
    row["classification"] = {s: evaluate_classification(model, layout, s, amp=amp)
                             for s in splits}
    if domain_images:
        start = time.perf_counter()
        counts = plda_domains.run_domains(run, domain_images, 288, None)
        row["domains"] = {"counts": counts, "purity": plda_domains.purity(counts),
                          "seconds": time.perf_counter() - start}
    return row


def _begin(label: str) -> tuple[str | None, float]:
    """Announce a job; the commit it runs (HEAD may move while it trains) and its start."""
    print(f"== {label} ({time.strftime('%Y-%m-%d %H:%M:%S')})", flush=True)
    return _commit(), time.perf_counter()


def _finish(result: Path, row: dict, began: tuple[str | None, float], **fields) -> dict:
    """``row`` with ``fields``, the commit and minutes of ``began`` and the time, written."""
    from plda.utils.io import atomic_write_json

    commit, t0 = began
    row.update({**fields, "minutes": (time.perf_counter() - t0) / 60.0, "commit": commit,
                "finished": time.strftime("%Y-%m-%dT%H:%M:%S")})
    atomic_write_json(result, row)
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
    began = _begin(f"{arm} seed {seed} {method}")
    grid = getattr(args, "grid", "coarse")
    row = voc12subset.run_method(method, folder, args.data, [*overrides, *args.overrides],
                                 refine="none", seg=False, label_free=False, grid=grid)
    row = score_run(run, row, ["train", "val"], args.amp, args.domain_images)
    row = _finish(result, row, began, arm=arm, seed=seed, overrides=overrides, grid=grid)
    keep_result(run, getattr(args, "keep", None), args.out)
    return row


def keep_result(run: Path, keep: Path | None, out: Path) -> None:
    """Copy a finished run's ``verdict.json`` and ``seeds_val.npz`` to the same place under
    ``keep`` (the repository's results folder): what re-scoring and the summary need."""
    if keep is None:
        return
    from plda.utils.io import atomic_write_bytes

    target = keep / run.relative_to(out)
    for name in (RESULT, SEED_MAPS):
        if (run / name).is_file():
            atomic_write_bytes(target / name, (run / name).read_bytes())


def run_chain(method: str, seed: int, args) -> dict:
    """The scratch run of ``method`` and ``seed`` carried on to IRN masks and the DeepLab."""
    voc12subset, _ = _benchmarks()
    folder = args.out / "scratch" / f"seed{seed}"
    run = folder / method
    result = run / CHAIN
    if result.is_file():
        return json.loads(result.read_text())
    if not (run / RESULT).is_file():
        print(f"   (no finished scratch run at {run}: run the verdict first)", flush=True)
        return {}
    # The overrides the run was made with: any other value would change a stage's fingerprint
    # and retrain it.
    overrides = json.loads((run / RESULT).read_text())["overrides"]
    from plda.config import load_run_folder_config
    from plda.pipeline.run import plan

    data = Path(load_run_folder_config(run).data.root)  # as the run spelt it
    _, _, cfg = voc12subset.method_config(method, folder, data, [*overrides, *args.overrides])
    redo = {k: v for k, v in plan(cfg, ["data", "train", "cam", "seeds"]).items() if v != "skip"}
    if redo:
        raise SystemExit(f"{run}: the chain would not reuse the finished stages ({redo}): give "
                         "the overrides the verdict was run with (train.*, cam.*, data.*)")
    began = _begin(f"chain seed {seed} {method}")
    row = voc12subset.run_method(method, folder, data, [*overrides, *args.overrides],
                                 refine="irn", seg=True, label_free=False)
    keep = ("method", "bg_threshold", "train_miou_13", "train_miou_present", "val_miou_13",
            "val_miou_present", "refine", "refine_minutes", "seg_minutes")
    row = {k: v for k, v in row.items() if k in keep or k.startswith(("pseudo_train_",
                                                                          "seg_val_"))}
    return _finish(result, row, began, arm="scratch", seed=seed, overrides=overrides)


def chain_markdown(out: Path) -> str:
    """A table of the finished chains under ``out`` (empty when there are none)."""
    rows: dict[str, dict[int, dict]] = {}
    for path in sorted(out.glob(f"scratch/seed*/*/{CHAIN}")):
        row = json.loads(path.read_text())
        rows.setdefault(row["method"], {})[row["seed"]] = row
    if not rows:
        return ""
    lines = ["", "The whole chain from the scratch runs (mIoU %, 13 classes / present; mean ± sd "
             "over seeds): seeds on val, IRN pseudo masks on train, the DeepLab trained on them "
             "on val.", "",
             "| method | seeds | seeds val | IRN pseudo train | DeepLab val | stage-2 min |",
             "|---|---|---|---|---|---|"]
    for method, by_seed in rows.items():
        r = [by_seed[k] for k in sorted(by_seed)]

        def pair(prefix: str) -> str:
            return (f"{_fmt([x[prefix + '_miou_13'] for x in r])} / "
                    f"{_fmt([x[prefix + '_miou_present'] for x in r])}")

        minutes = [(x.get("refine_minutes") or 0) + (x.get("seg_minutes") or 0) for x in r]
        lines.append(f"| {method} | {','.join(map(str, sorted(by_seed)))} | {pair('val')} "
                     f"| {pair('pseudo_train')} | {pair('seg_val')} | {_fmt(minutes)} |")
    return "\n".join(lines) + "\n"


def _commit() -> str | None:
    """The checkout's commit; where the code is a copy without git, ``PLDA_COMMIT`` names it."""
    from plda.utils.provenance import git_commit

    return git_commit(HERE)


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
             f"{meta}", "",
             "| arm | baseline → +PLDA | seeds | val 13: baseline | val 13: +PLDA "
             "| val 13: Δ | val 13: Δ per seed | val present: baseline / +PLDA "
             "| val present: Δ | train 13: baseline | train 13: +PLDA "
             "| train 13: Δ | val mAP: baseline / +PLDA |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for c in comparisons:
        s = c["scores"]
        n = len(c["seeds"])

        def delta(key: str) -> str:
            return f"{_fmt(s[key]['diff'])} ({s[key]['plda_higher']} of {n})"

        lines.append(
            f"| {c['arm']} | {c['baseline']} → {c['variant']} | {','.join(map(str, c['seeds']))} "
            f"| {_fmt(s['val_miou_13']['baseline'])} | {_fmt(s['val_miou_13']['plda'])} "
            f"| {delta('val_miou_13')} "
            f"| {' / '.join(f'{d:+.1f}' for d in s['val_miou_13']['diff'])} "
            f"| {_fmt(s['val_miou_present']['baseline'])} / {_fmt(s['val_miou_present']['plda'])} "
            f"| {delta('val_miou_present')} "
            f"| {_fmt(s['train_miou_13']['baseline'])} | {_fmt(s['train_miou_13']['plda'])} "
            f"| {delta('train_miou_13')} | {_fmt(c['baseline_val_map'])} / "
            f"{_fmt(c['plda_val_map'])} |")
    classes = sorted({k for c in comparisons for k, v in c["val_class_diff"].items()
                      if v is not None})
    if classes:
        lines += ["", "Per class, val IoU of +PLDA minus the baseline (points, mean over seeds):",
                  "", "| arm | baseline → +PLDA | " + " | ".join(classes) + " |",
                  "|---|---|" + "---|" * len(classes)]
        for c in comparisons:
            diff = c["val_class_diff"]
            lines.append(f"| {c['arm']} | {c['baseline']} → {c['variant']} | " + " | ".join(
                "-" if diff.get(k) is None else f"{diff[k]:+.1f}" for k in classes) + " |")
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
    text = summary_markdown(comparisons, meta) + chain_markdown(out)
    atomic_write_text(out / "summary.md", text)
    print(text)
    return comparisons


# ---- budget -------------------------------------------------------------------------------

def budget(args) -> list[dict]:
    """Each method at each epoch count, one seed, scored on the training split only."""
    voc12subset, _ = _benchmarks()
    seed = args.seeds[0]
    rows = []
    for epochs in args.epochs_list:
        for method in args.methods:
            folder = args.out / f"e{epochs}"
            result = folder / method / "budget.json"
            if result.is_file():
                rows.append(json.loads(result.read_text()))
                continue
            began = _begin(f"budget {method} {epochs} epochs")
            overrides = [f"train.epochs={epochs}", f"train.amp={args.amp}",
                         f"cam.amp={args.amp}", "data.eval_splits=[train]",
                         *([f"train.seed={seed}"] if seed else []), *args.overrides]
            row = voc12subset.run_method(method, folder, args.data, overrides, refine="none",
                                         seg=False, label_free=False,
                                         grid=getattr(args, "grid", "coarse"))
            row = score_run(folder / method, row, ["train"], args.amp, 0)
            rows.append(_finish(result, row, began, epochs=epochs, seed=seed))
    print(f"\n{'method':10s} {'epochs':>6s} {'train 13':>8s} {'train':>6s} {'thr':>5s} "
          f"{'mAP':>6s} {'F1':>5s} {'train min':>9s}")
    for r in rows:
        c = r["classification"]["train"]
        print(f"{r['method']:10s} {r['epochs']:6d} {r['train_miou_13']:8.1f} "
              f"{r['train_miou_present']:6.1f} {r['bg_threshold']:5.2f} {c['map']:6.1f} "
              f"{c['f1']:5.2f} {r['train_minutes']:9.1f}")
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


def _child_argv(args, *, seeds: str, methods: str, arms: str | None, epochs: str,
                budget_mode: bool) -> list[str]:
    argv = [sys.executable, str(Path(__file__).resolve()), "--out", str(args.out), "--data",
            str(args.data), "--seeds", seeds, "--methods", methods, "--epochs", epochs,
            "--amp", args.amp, "--domain-images", str(args.domain_images),
            "--continue-epochs", str(args.continue_epochs), "--no-summary",
            "--grid", args.grid]
    if args.keep is not None:
        argv += ["--keep", str(args.keep)]
    if args.start_from is not None:
        argv += ["--start-from", str(args.start_from)]
    if budget_mode:
        argv.append("--budget")
    if arms:
        argv += ["--arms", arms]
    return argv + ["--", *args.overrides]


def run_parallel(jobs: list[dict], n: int, out: Path) -> list[str]:
    """Run ``jobs`` ({name, argv, after: [names]}) ``n`` at a time; the names of those failed.

    A job starts once every job named in its ``after`` has finished well; one whose prerequisite
    failed is not started (and counts as failed).
    """
    import torch

    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    threads = max(1, (os.cpu_count() or 1) // n)
    pending, running, done, failed = list(jobs), {}, set(), []
    slot = 0
    start = time.perf_counter()
    names = {j["name"] for j in jobs}
    while pending or running:
        for job in list(pending):
            after = [a for a in job.get("after", []) if a in names]
            if any(a in failed for a in after):
                pending.remove(job)
                failed.append(job["name"])
                print(f"   skipped {job['name']}: a job it starts from failed", flush=True)
            elif len(running) < n and all(a in done for a in after):
                pending.remove(job)
                env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1")
                if gpus > 1:
                    env["CUDA_VISIBLE_DEVICES"] = str(slot % gpus)
                slot += 1
                log = open(logs / f"{job['name']}.log", "ab")
                proc = subprocess.Popen(job["argv"], stdout=log, stderr=subprocess.STDOUT,
                                        env=env)
                running[job["name"]] = (proc, log, time.perf_counter())
                print(f"   started {job['name']} ({time.strftime('%H:%M:%S')})", flush=True)
        for name, (proc, log, t0) in list(running.items()):
            code = proc.poll()
            if code is None:
                continue
            log.close()
            del running[name]
            (done.add(name) if code == 0 else failed.append(name))
            finished = len(done) + len(failed)
            elapsed = time.perf_counter() - start
            eta = elapsed / finished * (len(jobs) - finished)
            print(f"   {'finished' if code == 0 else f'FAILED (exit {code})'} {name} in "
                  f"{(time.perf_counter() - t0) / 60:.1f} min; {finished}/{len(jobs)} jobs, "
                  f"{elapsed / 60:.1f} min so far, about {eta / 60:.1f} min left"
                  + ("" if code == 0 else f" (log: {logs / (name + '.log')})"), flush=True)
        time.sleep(1.0)
    return failed


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
    p.add_argument("--epochs", default="8", help="stage-1 epochs from scratch (--budget: a "
                   "comma list; auto:DIR: chosen from the budget sweep in DIR)")
    p.add_argument("--min-gain", type=float, default=1.0, help="with --epochs auto:DIR: the "
                   "train seed mIoU gain below which more epochs count as not rising")
    p.add_argument("--jobs", type=int, default=1, help="jobs run at once (own processes)")
    p.add_argument("--chain", default=None, help="comma list of methods whose scratch runs go "
                   "on to IRN masks and the DeepLab (module doc)")
    p.add_argument("--no-summary", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--continue-epochs", type=int, default=2)
    p.add_argument("--amp", choices=("none", "bf16"), default="bf16")
    p.add_argument("--domain-images", type=int, default=200)
    p.add_argument("--summary", action="store_true", help="only the tables of finished runs")
    p.add_argument("--grid", choices=("coarse", "fine"), default="coarse",
                   help="the CAM grid's presets (module doc)")
    p.add_argument("--start-from", type=Path, default=None, help="continue arm: the folder "
                   "whose scratch/ runs it starts from (default --out)")
    p.add_argument("--keep", type=Path, default=None, help="copy each finished run's "
                   "verdict.json and seeds_val.npz under this folder (the results kept in the "
                   "repository), in the same arm/seed/method layout")
    p.add_argument("--rescore", action="store_true", help="re-score every run's seeds_val.npz "
                   "against the dataset's masks and compare with its verdict.json")
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
    if args.rescore:
        rescore(args.out, args.data)
        return 0
    if args.start_from is not None:
        args.start_from = args.start_from.resolve()
    if args.keep is not None:
        args.keep = args.keep.resolve()
    if args.quick:
        voc12subset, _ = _benchmarks()
        args.data = voc12subset._quick_dataset(args.data, args.out / "quick-data", 64, 32)
        args.overrides = ["train.epochs=null", "train.iterations=12", "train.checkpoint_every=6",
                          *args.overrides]
        args.domain_images = min(args.domain_images, 16)
    if args.jobs < 1:
        raise SystemExit(f"--jobs {args.jobs}: expected at least 1")
    if args.budget:
        args.epochs_list = _ints(args.epochs, "--epochs")
        if args.jobs > 1:
            jobs = [{"name": f"budget-e{e}-{m}",
                     "argv": _child_argv(args, seeds=str(args.seeds[0]), methods=m, arms=None,
                                         epochs=str(e), budget_mode=True)}
                    for e in args.epochs_list for m in args.methods]
            failed = run_parallel(jobs, args.jobs, args.out)
            if failed:
                raise SystemExit(f"failed: {', '.join(failed)}")
        budget(args)
        return 0
    if args.chain is not None:
        chain = [m for m in args.chain.split(",") if m]
        if not chain or set(chain) - set(METHODS):
            raise SystemExit(f"--chain {args.chain!r}: expected methods among {METHODS}")
        for seed in args.seeds:
            for method in chain:
                run_chain(method, seed, args)
        if not args.no_summary:
            summarise(args.out)
        return 0
    if args.epochs.startswith("auto:"):
        from plda.utils.io import atomic_write_json

        choice = choose_budget(read_budget(Path(args.epochs[5:])), args.min_gain)
        print(f"budget from {args.epochs[5:]}: {choice['epochs']} epochs "
              f"({json.dumps(choice['methods'])})", flush=True)
        args.out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(args.out / "budget_choice.json", choice)
        args.epochs = str(choice["epochs"])
    args.epochs = _ints(args.epochs, "--epochs")[0]
    if args.jobs > 1:
        jobs = []
        for arm in arms:
            for seed in args.seeds:
                for method in args.methods:
                    after = []
                    if arm == "continue":
                        after = [f"scratch-seed{seed}-{baseline_of(method)}"]
                    jobs.append({"name": f"{arm}-seed{seed}-{method}", "after": after,
                                 "argv": _child_argv(args, seeds=str(seed), methods=method,
                                                     arms=arm, epochs=str(args.epochs),
                                                     budget_mode=False)})
        failed = run_parallel(jobs, args.jobs, args.out)
        summarise(args.out)
        if failed:
            raise SystemExit(f"failed: {', '.join(failed)}")
        return 0
    for arm in arms:  # every scratch run first: the continue arm starts from them
        for seed in args.seeds:
            for method in args.methods:
                run_job(arm, method, seed, args)
    if not args.no_summary:
        summarise(args.out)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(HERE.parent / "src"))
    raise SystemExit(main())
