"""The real-data benchmark: plain CAM, SEAM, and PLDA on each (CAM+PLDA, SEAM+PLDA) on the
1,545-image VOC sample, from image-level labels to a segmentation network.

    python -m benchmarks.voc12subset --out runs/voc12subset            # the whole chain
    python -m benchmarks.voc12subset --out runs/vs --refine none       # seeds only
    python -m benchmarks.voc12subset --out /tmp/vq --quick             # a smoke run, minutes
    python -m benchmarks.voc12subset --suite synth --out runs/synth-methods   # synthetic data
    python -m benchmarks.voc12subset --out runs/vs --refine none --seeds 0,1,2  # run-to-run spread

Each method trains from the pretrained EfficientNet-Lite0 with the same budget, crop and seed
(presets ``voc12subset_<method>_effnetlite0``; the CAM family at output stride 32, where CAMs are
not gridded, the SEAM family at 16, where PCM has a grid to work on), infers CAMs for train and
val, chooses the background threshold by the sweep on train only, writes seeds, refines the
training split into pseudo masks (``--refine``, default IRN), trains the light DeepLab on them and
evaluates it on val (``--no-seg`` stops before). Each method runs as ``plda run`` in
``OUT/<method>/`` (the pipeline's run-folder layout: ``seeds/<split>/``, ``pseudo/train/``,
``seg/val/``, ``metrics.json``, ``report.html``); re-running skips what is complete. The table
gives seed mIoU on train and val over every class present in the split's ground truth and over the
13 classes the sample supports (at least 20 train and 4 val images), the chosen threshold,
training minutes, inference seconds/image, the pseudo masks' train mIoU and the segmentation's val
mIoU. Next to the segmentation it gives the val seeds a label-free predictor would get: CAMs
masked by the stage-1 classifier's own predicted labels (``cam.label_source=predicted``, score
0.5) instead of the ground-truth image labels the seed columns use, at the threshold chosen on
train (``OUT/<method>/label_free/``; ``--no-label-free`` skips it) — the segmentation network sees
no labels, so this is the like-for-like comparison.
``OUT/results.json`` keeps it all, per-class IoU included, and each method's loss terms at the
start and end of training (the first and last logged windows of ``logs/train.jsonl``).
``--seeds 0,1,2`` repeats everything once per ``train.seed`` into ``OUT/seed<k>/`` and ends with
the spread table of ``benchmarks/seed_spread.py`` (per-method mean, sd, min, max; per pair of
methods, on how many seeds the first wins): one run per method can rank them by chance.
``--grid fine`` runs either suite on its fine-grid presets (a CAM grid of 28 x 28 at the training
crop instead of 7 x 7 or 14 x 14).
``--suite synth`` runs the same comparison on the built-in synthetic dataset (presets
``synth_<method>``); with ``--seeds`` its spread table also gives the share of each object's
discriminative part and of the rest of its body that the val seeds cover (from the dataset's
``SegmentationParts/``): whether a method extends the CAM's part to the whole object.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from benchmarks.common import DEFAULT_DATA, preset_methods
from benchmarks.table import print_table
from plda.registry import REFINERS

# Every registered method with a preset of this suite (voc12subset_<method>_effnetlite0).
METHODS = preset_methods("voc12subset_{method}_effnetlite0")
# The classes with at least 20 train and 4 val images in the sample (shared/data/README.md).
SUPPORTED = ("background", "cat", "dog", "person", "horse", "sheep", "cow", "sofa", "chair",
             "pottedplant", "car", "tvmonitor", "diningtable")


def _quick_dataset(source: Path, target: Path, n_train: int, n_val: int) -> Path:
    """A VOC-layout folder with the first ids of each split, linking the sample's files."""
    from plda.data.layout import read_id_list
    from plda.utils.io import atomic_write_text

    for sub in ("JPEGImages", "SegmentationClassAug"):
        link = target / sub
        if not link.exists():
            target.mkdir(parents=True, exist_ok=True)
            link.symlink_to((source / sub).resolve(), target_is_directory=True)
    lists = target / "ImageSets" / "Segmentation"
    lists.mkdir(parents=True, exist_ok=True)
    keep = set()
    for split, n in (("train", n_train), ("val", n_val)):
        ids = read_id_list(source / "ImageSets" / "Segmentation" / f"{split}.txt")[:n]
        atomic_write_text(lists / f"{split}.txt", "".join(f"{i}\n" for i in ids))
        keep.update(ids)
    labels = json.loads((source / "image_labels.json").read_text())
    atomic_write_text(target / "image_labels.json", json.dumps({k: v for k, v in labels.items()
                                                          if k in keep}))
    return target.resolve()  # one spelling of the data root, whichever process reads it


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def _loss_terms(run: Path) -> dict:
    """{term: [first logged value, last logged value]} from the training log."""
    path = run / "logs" / "train.jsonl"
    if not path.is_file():
        return {}
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    records = [r for r in records if "step" in r and "loss" in r and "event" not in r]
    if not records:
        return {}
    first, last = records[0], records[-1]
    return {k: [first[k], last[k]] for k in first
            if k not in ("step", "epoch", "lr", "images_per_s", "wall_time_s")
            and not k.startswith("stat/") and isinstance(first[k], (int, float)) and k in last}


def label_free_seeds(preset: str, location: list[str], overrides: list[str], run: Path,
                     split: str, threshold: float) -> dict:
    """Seed scores on ``split`` from CAMs masked by the classifier's predicted labels (a sub run
    folder ``run/label_free`` reusing ``run``'s stage-1 weights; resumable like ``plda cam``)."""
    from plda.config import load_run_config
    from plda.pipeline.cams import make_cams, make_seeds
    from plda.runfolder import STAGE1_WEIGHTS

    cfg = load_run_config(preset, [*location, *overrides, f"run_dir={run / 'label_free'}",
                                   "cam.label_source=predicted", f"cam.bg_threshold={threshold}"])
    make_cams(cfg, [split], weights=run / STAGE1_WEIGHTS)
    return make_seeds(cfg, [split]).get(split, {})


GRIDS = ("coarse", "fine")


def preset_name(method: str, suite: str = "voc12subset", grid: str = "coarse") -> str:
    """The preset of ``method`` on ``suite`` with the CAM ``grid``: ``coarse`` the suite's own
    presets, ``fine`` those on a CAM grid of at least 28 x 28 at the training crop."""
    if grid not in GRIDS:
        raise SystemExit(f"grid {grid!r}: expected one of {GRIDS}")
    fine = "_fine" if grid == "fine" else ""
    return f"synth{fine}_{method}" if suite == "synth" else \
        f"voc12subset{fine}_{method}_effnetlite0"


def method_config(method: str, out: Path, data: Path | None, overrides: list[str],
                  suite: str = "voc12subset", refine: str = "irn", grid: str = "coarse"):
    """(preset name, location overrides, run config) of ``run_method``'s run."""
    from plda.config import load_run_config

    preset = preset_name(method, suite, grid)
    location = [f"run_dir={out / method}"] + ([] if suite == "synth" else [f"data.root={data}"])
    refine_override = [] if refine == "none" else [f"refine.method={refine}"]
    return preset, location, load_run_config(preset, [*location, *overrides, *refine_override])


def run_method(method: str, out: Path, data: Path | None, overrides: list[str],
               suite: str = "voc12subset", refine: str = "irn", seg: bool = True,
               label_free: bool = True, grid: str = "coarse") -> dict:
    """The method's whole chain through ``plda run`` (each finished stage skipped on a re-run):
    stage 1 -> CAMs -> seeds, then (unless ``refine == "none"``) pseudo masks and (``seg``)
    the light DeepLab trained on them and evaluated on val. One results row."""
    from plda.pipeline.run import run_pipeline

    preset, location, cfg = method_config(method, out, data, overrides, suite, refine, grid)
    until = "seeds" if refine == "none" else "seg_eval" if seg else "refine"
    metrics = run_pipeline(cfg, until=until)
    seeds, cams = metrics["seeds"], metrics.get("cam", {})
    images = sum(s.get("written", 0) for s in cams.values())
    cam_seconds = sum(s.get("seconds_per_image", 0.0) * s.get("written", 0)
                      for s in cams.values())
    row = {"method": method, "bg_threshold": seeds["bg_threshold"],
           "train_minutes": metrics.get("train", {}).get("wall_time_s", 0.0) / 60.0,
           "cam_images_inferred": images,
           "cam_seconds_per_image": cam_seconds / images if images else None,
           "stage_seconds": metrics.get("pipeline", {})}

    def scored(prefix: str, res: dict | None) -> None:
        res = res or {}
        row[f"{prefix}_miou_present"] = res.get("miou")
        row[f"{prefix}_miou_13"] = _mean(res.get("iou", {}).get(c) for c in SUPPORTED) \
            if suite == "voc12subset" and res else None  # the 13 VOC classes mean nothing elsewhere
        row[f"{prefix}_iou"] = res.get("iou")

    for split in ("train", "val"):
        scored(split, seeds.get(split))
    row["loss_terms"] = _loss_terms(out / method)
    if refine != "none":
        row["refine"] = refine
        row["refine_minutes"] = metrics.get("pipeline", {}).get("refine", 0.0) / 60.0
        scored("pseudo_train", metrics.get("pseudo", {}).get(cfg.data.train_split))
    if refine != "none" and seg:
        row["seg_minutes"] = metrics.get("pipeline", {}).get("seg_train", 0.0) / 60.0
        scored("seg_val", metrics.get("seg", {}).get(cfg.data.val_split))
    if label_free:
        scored("label_free_val", label_free_seeds(preset, location, overrides, out / method,
                                                  cfg.data.val_split, seeds["bg_threshold"]))
    return row


def _seed_list(text: str) -> list[int]:
    try:
        seeds = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise SystemExit(f"--seeds: {text!r} is not a comma list of integers") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise SystemExit(f"--seeds: {text!r}: expected distinct integers, e.g. 0,1,2")
    return seeds


def _bench(methods: list[str], out: Path, data: Path, overrides: list[str], args) -> list[dict]:
    """Every method's chain into ``out/<method>/``; ``out/results.json`` and the table."""
    rows = []
    for method in methods:
        print(f"== {method}", flush=True)
        rows.append(run_method(method, out, data, overrides, args.suite, args.refine,
                               seg=not args.no_seg, label_free=not args.no_label_free,
                               grid=args.grid))
    from plda.utils.io import atomic_write_json

    atomic_write_json(out / "results.json", {"suite": args.suite, "data": str(data),
                                             "overrides": overrides, "rows": rows})
    print()
    columns = {"method": "method", "train mIoU": "train_miou_present",
               "val mIoU": "val_miou_present", "train 13": "train_miou_13",
               "val 13": "val_miou_13", "thr": "bg_threshold", "train min": "train_minutes",
               "infer s/img": "cam_seconds_per_image",
               "pseudo train": "pseudo_train_miou_present", "pseudo 13": "pseudo_train_miou_13",
               "refine min": "refine_minutes", "seg val": "seg_val_miou_present",
               "seg val 13": "seg_val_miou_13", "seg min": "seg_minutes",
               "lf val": "label_free_val_miou_present", "lf val 13": "label_free_val_miou_13"}
    print_table(list(columns), [[r.get(key) for key in columns.values()] for r in rows],
                {**dict.fromkeys(columns, ".1f"), "thr": ".2f", "infer s/img": ".3f"})
    print("mIoU: seed mIoU (%) over the classes present in the split / over the 13 supported "
          "classes; threshold chosen on train; pseudo: the refined training masks; seg: the light "
          "DeepLab trained on them, on val; lf: val seeds with the classifier's predicted "
          "labels instead of the true image labels. "
          f"Results: {out / 'results.json'}")
    print("\nloss terms, first -> last logged window:")
    for r in rows:
        terms = ", ".join(f"{k} {a:.3g}->{b:.3g}" for k, (a, b) in r["loss_terms"].items())
        print(f"  {r['method']:10s} {terms}")
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("runs/voc12subset"))
    p.add_argument("--data", type=Path, default=DEFAULT_DATA,
                   help="the VOC-layout sample (default ../shared/data/voc12-subset)")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--suite", choices=("voc12subset", "synth"), default="voc12subset")
    p.add_argument("--grid", choices=GRIDS, default="coarse", help="coarse: the suite's "
                   "presets; fine: those on a CAM grid of at least 28 x 28 (voc12subset_fine_*, "
                   "synth_fine_*)")
    p.add_argument("--refine", choices=(*REFINERS.names(), "none"), default="irn",
                   help="refinement of the training split's seeds into pseudo masks "
                        "(pseudo/train/<id>.png; default irn, the preset's)")
    p.add_argument("--no-seg", action="store_true",
                   help="stop after the pseudo masks (no DeepLab training / evaluation)")
    p.add_argument("--no-label-free", action="store_true",
                   help="skip the val seeds from the classifier's predicted labels")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 64 train / 32 val images, 16 steps per method")
    p.add_argument("--seeds", help="comma list of train.seed values (e.g. 0,1,2): every method "
                   "runs once per seed into OUT/seed<k>/<method>/ and the run-to-run spread is "
                   "printed at the end (benchmarks/seed_spread.py)")
    p.add_argument("overrides", nargs="*", help="key=value config overrides for every method")
    args = p.parse_args(argv)
    if args.suite == "voc12subset" and \
            not (args.data / "ImageSets" / "Segmentation" / "train.txt").is_file():
        raise SystemExit(f"{args.data}: not the VOC sample (no ImageSets/Segmentation/train.txt)")
    methods = [m for m in args.methods.split(",") if m]
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        raise SystemExit(f"--methods: unknown {unknown}; expected a comma list of {METHODS}")
    seeds = None if args.seeds is None else _seed_list(args.seeds)
    data, overrides = args.data.resolve(), list(args.overrides)
    if args.quick:
        if args.suite == "voc12subset":
            data = _quick_dataset(args.data, args.out / "quick-data", 64, 32)
        overrides = ["train.epochs=null", "train.iterations=16", "train.checkpoint_every=8",
                     "refine.irn.train.epochs=1", "refine.affinity.train.epochs=1",
                     "seg.train.iterations=8", *overrides]
    if args.seeds is None:
        _bench(methods, args.out, data, overrides, args)
        return 0
    for seed in seeds:
        print(f"==== train.seed={seed}", flush=True)
        _bench(methods, args.out / f"seed{seed}", data, [*overrides, f"train.seed={seed}"], args)
    from seed_spread import print_table, run_folders, run_row

    print(f"\n==== run-to-run spread over train.seed in {seeds}")
    print_table([run_row(r) for r in run_folders([args.out / f"seed{s}" for s in seeds])])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
