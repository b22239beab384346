"""The real-data seed benchmark: plain CAM, SEAM and SEAM+PLDA on the 1,545-image VOC sample.

    python benchmarks/voc12subset.py --out runs/voc12subset            # about 60 min, 2 cores
    python benchmarks/voc12subset.py --out /tmp/vq --quick             # a smoke run, minutes
    python benchmarks/voc12subset.py --suite synth --out runs/synth-methods   # synthetic data

Each method trains from the pretrained EfficientNet-Lite0 with the same budget, crop and seed
(presets ``voc12subset_<method>_effnetlite0``), infers CAMs for train and val, chooses the
background threshold by the sweep on train only, and writes seeds. Every method's run folder is
``OUT/<method>/`` in the pipeline's layout (``seeds/<split>/<id>.png``, ``metrics.json``, ...);
re-running skips what is complete. The table gives seed mIoU on train and val over every class
present in the split's ground truth and over the 13 classes the sample supports (at least 20
train and 4 val images), the chosen threshold, training minutes and inference seconds/image.
``OUT/results.json`` keeps it all, per-class IoU included, and each method's loss terms at the
start and end of training (the first and last logged windows of ``logs/train.jsonl``).
``--suite synth`` runs the same comparison on the built-in synthetic dataset (presets
``synth_<method>``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

METHODS = ("cam", "seam", "seam_plda")
# The classes with at least 20 train and 4 val images in the sample (shared/data/README.md).
SUPPORTED = ("background", "cat", "dog", "person", "horse", "sheep", "cow", "sofa", "chair",
             "pottedplant", "car", "tvmonitor", "diningtable")
DEFAULT_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "voc12-subset"


def _quick_dataset(source: Path, target: Path, n_train: int, n_val: int) -> Path:
    """A VOC-layout folder with the first ids of each split, linking the sample's files."""
    from plda.data.layout import read_id_list

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
        (lists / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))
        keep.update(ids)
    labels = json.loads((source / "image_labels.json").read_text())
    (target / "image_labels.json").write_text(json.dumps({k: v for k, v in labels.items()
                                                          if k in keep}))
    return target


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


def run_method(method: str, out: Path, data: Path | None, overrides: list[str],
               suite: str = "voc12subset", refine: str = "none") -> dict:
    from plda.config import load_run_config
    from plda.pipeline.cams import make_cams, make_seeds
    from plda.pipeline.run import run_pipeline

    preset = f"synth_{method}" if suite == "synth" else f"voc12subset_{method}_effnetlite0"
    location = [f"run_dir={out / method}"] + ([] if suite == "synth" else [f"data.root={data}"])
    refine_override = [] if refine == "none" else [f"refine.method={refine}"]
    cfg = load_run_config(preset, [*location, *overrides, *refine_override])
    t0 = time.perf_counter()
    run_pipeline(cfg, until="train")
    train_wall = time.perf_counter() - t0
    cams = make_cams(cfg)
    seeds = make_seeds(cfg)
    metrics = json.loads((out / method / "metrics.json").read_text())
    images = sum(s.get("written", 0) for s in cams.values())
    cam_seconds = sum(s.get("seconds", 0.0) for s in cams.values())
    row = {"method": method, "bg_threshold": seeds["bg_threshold"],
           "train_minutes": metrics.get("train", {}).get("wall_time_s", train_wall) / 60.0,
           "cam_images_inferred": images,
           "cam_seconds_per_image": cam_seconds / images if images else None}
    for split in ("train", "val"):
        res = seeds.get(split, {})
        row[f"{split}_miou_present"] = res.get("miou")
        row[f"{split}_miou_13"] = _mean(res.get("iou", {}).get(c) for c in SUPPORTED) \
            if suite == "voc12subset" else None  # the 13 VOC classes mean nothing elsewhere
        row[f"{split}_iou"] = res.get("iou")
    row["loss_terms"] = _loss_terms(out / method)
    if refine != "none":
        from plda.pipeline.refine import refine as run_refine

        t0 = time.perf_counter()
        pseudo = run_refine(cfg, splits=[cfg.data.train_split])["pseudo"]
        row["refine"] = refine
        row["refine_minutes"] = (time.perf_counter() - t0) / 60.0
        res = pseudo.get(cfg.data.train_split, {})
        row["pseudo_train_miou_present"] = res.get("miou")
        row["pseudo_train_miou_13"] = _mean(res.get("iou", {}).get(c) for c in SUPPORTED) \
            if suite == "voc12subset" else None
        row["pseudo_train_iou"] = res.get("iou")
    return row


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("runs/voc12subset"))
    p.add_argument("--data", type=Path, default=DEFAULT_DATA,
                   help="the VOC-layout sample (default ../shared/data/voc12-subset)")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--suite", choices=("voc12subset", "synth"), default="voc12subset")
    p.add_argument("--refine", choices=("irn", "affinity", "crf", "pamr", "none"), default="irn",
                   help="refinement of the training split's seeds into pseudo masks "
                        "(pseudo/train/<id>.png; default irn, the preset's)")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 64 train / 32 val images, 16 steps per method")
    p.add_argument("overrides", nargs="*", help="key=value config overrides for every method")
    args = p.parse_args(argv)
    if args.suite == "voc12subset" and \
            not (args.data / "ImageSets" / "Segmentation" / "train.txt").is_file():
        raise SystemExit(f"{args.data}: not the VOC sample (no ImageSets/Segmentation/train.txt)")
    methods = [m for m in args.methods.split(",") if m]
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        raise SystemExit(f"--methods: unknown {unknown}; expected a comma list of {METHODS}")
    data, overrides = args.data.resolve(), list(args.overrides)
    if args.quick:
        if args.suite == "voc12subset":
            data = _quick_dataset(args.data, args.out / "quick-data", 64, 32)
        overrides = ["train.epochs=null", "train.iterations=16", "train.checkpoint_every=8",
                     *overrides]
    rows = []
    for method in methods:
        print(f"== {method}", flush=True)
        rows.append(run_method(method, args.out, data, overrides, args.suite, args.refine))
    from plda.utils.io import atomic_write_json

    atomic_write_json(args.out / "results.json", {"suite": args.suite, "data": str(data),
                                                  "overrides": overrides, "rows": rows})
    print(f"\n{'method':10s} {'train mIoU':>10s} {'val mIoU':>9s} {'train 13':>9s} "
          f"{'val 13':>7s} {'thr':>5s} {'train min':>9s} {'infer s/img':>11s} "
          f"{'pseudo train':>12s} {'pseudo 13':>9s} {'refine min':>10s}")
    for r in rows:
        print(f"{r['method']:10s} {_fmt(r['train_miou_present'], '10.1f')} "
              f"{_fmt(r['val_miou_present'], '9.1f')} {_fmt(r['train_miou_13'], '9.1f')} "
              f"{_fmt(r['val_miou_13'], '7.1f')} {r['bg_threshold']:5.2f} "
              f"{r['train_minutes']:9.1f} {_fmt(r['cam_seconds_per_image'], '11.3f')} "
              f"{_fmt(r.get('pseudo_train_miou_present'), '12.1f')} "
              f"{_fmt(r.get('pseudo_train_miou_13'), '9.1f')} "
              f"{_fmt(r.get('refine_minutes'), '10.1f')}")
    print("mIoU: seed mIoU (%) over the classes present in the split / over the 13 supported "
          "classes; threshold chosen on train; pseudo: the refined training masks. "
          f"Results: {args.out / 'results.json'}")
    print("\nloss terms, first -> last logged window:")
    for r in rows:
        terms = ", ".join(f"{k} {a:.3g}->{b:.3g}" for k, (a, b) in r["loss_terms"].items())
        print(f"  {r['method']:10s} {terms}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    raise SystemExit(main())
