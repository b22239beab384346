"""``plda eval``: score label maps, or CAM seeds over background thresholds, against ground truth."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

from plda.errors import ConfigError

_ABSENT = "—  (absent from GT and prediction, excluded from mIoU)"


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "eval",
        help="score label maps or CAM seeds against ground-truth masks (mIoU)",
        description="Score label PNGs (--pred) or the seeds of CAM files (--cams, at one "
        "background threshold or a sweep of them, all in one pass) against ground-truth PNGs. "
        "mIoU averages the classes present in the ground truth or the prediction.",
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--pred", metavar="DIR", help="folder of predicted label PNGs <id>.png")
    source.add_argument("--cams", metavar="DIR", help="folder of CAM files <id>.npz")
    p.add_argument("--gt", required=True, metavar="DIR", help="folder of ground-truth PNGs")
    p.add_argument("--list", metavar="FILE",
                   help="image ids, one per line (default: every file in --pred / --cams)")
    p.add_argument("--classes", metavar="FILE",
                   help="foreground class names, one per line (default: the classes.txt in "
                   "--gt or in the dataset folder above it, else the 20 VOC classes)")
    threshold = p.add_mutually_exclusive_group()
    threshold.add_argument("--bg-threshold", type=_threshold, metavar="T",
                           help="with --cams: background threshold (SEAM's default is 0.26)")
    threshold.add_argument("--sweep", metavar="START:STOP:STEP",
                           help="with --cams: thresholds START, START+STEP, ... below STOP "
                           "(e.g. 0.20:0.60:0.01 is 0.20..0.59)")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    p.add_argument("--skip-bad", action="store_true",
                   help="leave out an image whose prediction, CAM file or ground truth is "
                   "missing, unreadable or does not fit (size, classes), with a warning; the "
                   "skipped ids and reasons go to the JSON output under 'skipped'")
    p.add_argument("--workers", type=int, metavar="N",
                   help="decoding processes (default: CPU count, at most 8; 0 = none)")
    p.set_defaults(func=run)


def find_classes_file(gt_dir: str) -> Path | None:
    """The ``classes.txt`` of the dataset whose masks are in ``gt_dir``: in that folder, or in
    the dataset folder holding it (VOC layout: ``ROOT/SegmentationClass*/``)."""
    gt = Path(gt_dir)
    for candidate in (gt / "classes.txt", gt.parent / "classes.txt"):
        if candidate.is_file():
            return candidate
    return None


def _threshold(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (math.isfinite(value) and 0 <= value <= 1):
        raise argparse.ArgumentTypeError(f"{text!r}: expected a number in [0, 1]")
    return value


MAX_SWEEP = 1000  # thresholds of one sweep: each costs a pass over every pixel's scores


def parse_sweep(spec: str) -> list[float]:
    """``"START:STOP:STEP"`` to thresholds ``START + i * STEP < STOP`` (STOP excluded)."""
    try:
        start, stop, step = (float(x) for x in spec.split(":"))
    except ValueError:
        raise ConfigError(f"--sweep {spec!r}: expected START:STOP:STEP, e.g. 0.20:0.60:0.01")
    if not all(math.isfinite(v) for v in (start, stop, step)):
        raise ConfigError(f"--sweep {spec!r}: expected finite numbers, e.g. 0.20:0.60:0.01")
    if not (step > 0 and stop > start):
        raise ConfigError(f"--sweep {spec!r}: need STEP > 0 and STOP > START")
    count = math.ceil((stop - start) / step - 1e-9)
    if count > MAX_SWEEP:
        raise ConfigError(f"--sweep {spec!r}: {count} thresholds; at most {MAX_SWEEP} "
                          "(raise STEP)")
    # Rounding keeps 0.2 + 6 * 0.01 equal to the literal 0.26.
    return [round(start + i * step, 10) for i in range(count)]


def _fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}"


def format_table(result: dict[str, Any]) -> str:
    """The per-class table (IoU, precision, recall) and the summary line."""
    names = list(result["iou"])
    width = max(len("class"), *(len(n) for n in names)) + 2
    lines = [f"{'class':<{width}}{'IoU':>8}{'precision':>11}{'recall':>9}"]
    for name in names:
        iou = result["iou"][name]
        if iou is None:
            lines.append(f"{name:<{width}}    {_ABSENT}")
        else:
            lines.append(f"{name:<{width}}{iou:>8.2f}{_fmt(result['precision'][name]):>11}"
                         f"{_fmt(result['recall'][name]):>9}")
    lines.append("-" * (width + 28))
    lines.append(f"mIoU {_fmt(result['miou'])} over {result['classes_in_miou']} classes | "
                 f"pixel accuracy {_fmt(result['pixel_accuracy'])} | {result['images']} images")
    return "\n".join(lines)


def format_sweep(result: dict[str, Any], bar_width: int = 40) -> str:
    """The mIoU-versus-threshold curve as text bars, the best threshold marked."""
    mious = [s["miou"] or 0.0 for s in result["sweep"]]
    low, high = min(mious), max(mious)
    lines = [f"{'threshold':>9}  {'mIoU':>6}"]
    for step, miou in zip(result["sweep"], mious):
        filled = bar_width if high == low else round(bar_width * (miou - low) / (high - low))
        mark = "  <- best" if step["threshold"] == result["best_threshold"] else ""
        lines.append(f"{step['threshold']:>9.3f}  {miou:>6.2f}  {'#' * max(filled, 1)}{mark}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from plda.evaluation.evaluate import (evaluate_cams, evaluate_labels, find_ids,
                                          read_class_names, read_id_list)
    from plda.utils.io import atomic_write_json, check_output_file

    # Arguments first: a bad one must not cost a pass over the data.
    if args.json:
        check_output_file(args.json, "--json")
    if args.pred is not None and (args.bg_threshold is not None or args.sweep is not None):
        raise ConfigError("--bg-threshold and --sweep apply to --cams only")
    if args.cams is not None and args.bg_threshold is None and args.sweep is None:
        raise ConfigError("--cams needs --bg-threshold T or --sweep START:STOP:STEP")
    thresholds = None if args.sweep is None else parse_sweep(args.sweep)
    classes_file = args.classes if args.classes is not None else find_classes_file(args.gt)
    class_names = read_class_names(classes_file)
    print(f"classes: {len(class_names) - 1} + background, from "
          + (str(classes_file) if classes_file is not None else
             "VOC's 20 (no classes.txt in --gt or the folder above it; --classes FILE)"))
    folder = args.pred if args.pred is not None else args.cams
    ids = read_id_list(args.list) if args.list else find_ids(
        folder, ".png" if args.pred is not None else ".npz")
    if args.pred is not None:
        result = evaluate_labels(args.pred, args.gt, ids, class_names, num_workers=args.workers,
                                 skip_bad=args.skip_bad)
    else:
        thresholds = [args.bg_threshold] if thresholds is None else thresholds
        result = evaluate_cams(args.cams, args.gt, ids, class_names, thresholds,
                               num_workers=args.workers, skip_bad=args.skip_bad)
    if "sweep" in result:
        print(format_sweep(result))
        print()
    if "threshold" in result:
        print(f"background threshold {result['threshold']:g}")
    print(format_table(result))
    skipped = result.get("skipped") or []
    if skipped:
        print(f"plda eval: warning: skipped {len(skipped)} of {len(ids)} images (--skip-bad):",
              file=sys.stderr)
        for item in skipped:
            print(f"  {item['id']}: {item['reason']}", file=sys.stderr)
    if args.json:
        atomic_write_json(args.json, result)
        print(f"wrote {args.json}")
    return 0
