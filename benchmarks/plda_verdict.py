"""Does PLDA improve its baseline? CAM vs CAM+PLDA and SEAM vs SEAM+PLDA on the real VOC sample.

    python -m benchmarks.plda_verdict --out runs/verdict                  # every job, 3 seeds
    python -m benchmarks.plda_verdict --out runs/verdict --arms scratch --seeds 0 --methods cam
    python -m benchmarks.plda_verdict --out runs/verdict --summary        # the tables only
    python -m benchmarks.plda_verdict --budget --out runs/budget --methods cam,seam \\
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
from pathlib import Path

from benchmarks.common import DEFAULT_DATA
from benchmarks.verdict.budget import budget, choose_budget, read_budget
from benchmarks.verdict.jobs import ARMS, METHODS, baseline_of, run_chain, run_job
from benchmarks.verdict.parallel import child_argv, run_parallel
from benchmarks.verdict.seedmaps import rescore
from benchmarks.verdict.summary import summarise


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
        from benchmarks.voc12subset import _quick_dataset

        args.data = _quick_dataset(args.data, args.out / "quick-data", 64, 32)
        args.overrides = ["train.epochs=null", "train.iterations=12", "train.checkpoint_every=6",
                          *args.overrides]
        args.domain_images = min(args.domain_images, 16)
    if args.jobs < 1:
        raise SystemExit(f"--jobs {args.jobs}: expected at least 1")
    if args.budget:
        args.epochs_list = _ints(args.epochs, "--epochs")
        if args.jobs > 1:
            jobs = [{"name": f"budget-e{e}-{m}",
                     "argv": child_argv(args, seeds=str(args.seeds[0]), methods=m, arms=None,
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
                                 "argv": child_argv(args, seeds=str(seed), methods=method,
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
    raise SystemExit(main())
