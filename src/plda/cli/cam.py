"""``plda cam`` (multi-scale CAMs of a trained run) and ``plda seeds`` (threshold + seeds)."""

from __future__ import annotations

import argparse

from plda.cli._common import add_config_arguments, resolve_config


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "cam", help="infer multi-scale CAMs of a trained stage-1 run",
        description="Write <run_dir>/cams/<split>/<id>.npz (float16, classes present) with the "
        "configured scales and flip. Re-running skips complete files; under torchrun the "
        "images are sharded across ranks.")
    add_config_arguments(p)
    p.add_argument("--split", action="append", default=None,
                   help="split to process (repeatable; default: data.eval_splits)")
    p.add_argument("--weights", default=None,
                   help="stage-1 weights to use instead of the run's own (ours or a SEAM / "
                   "usr922/plda reference checkpoint)")
    p.set_defaults(func=run_cam)

    s = subparsers.add_parser(
        "seeds", help="choose the background threshold and write seed label maps",
        description="Sweep the background threshold on cam.sweep_split (unless "
        "cam.bg_threshold is set), evaluate the seeds of every split in one pass over the CAM "
        "files and write <run_dir>/seeds/<split>/<id>.png.")
    add_config_arguments(s)
    s.add_argument("--split", action="append", default=None)
    s.add_argument("--workers", type=int, default=None, help="decoding processes")
    s.set_defaults(func=run_seeds)


def run_cam(args: argparse.Namespace) -> int:
    from plda.pipeline.cams import make_cams

    cfg = resolve_config(args, write=True)
    for split, res in make_cams(cfg, args.split, weights=args.weights).items():
        print(f"{split}: {res.get('written', 0)} written, {res.get('skipped', 0)} skipped, "
              f"{res['wall_time_s']:.1f} s")
    return 0


def run_seeds(args: argparse.Namespace) -> int:
    from plda.pipeline.cams import make_seeds

    cfg = resolve_config(args, write=True)
    res = make_seeds(cfg, args.split, workers=args.workers)
    print(f"background threshold: {res['bg_threshold']:.2f}")
    for split in args.split or cfg.data.eval_splits:
        if split in res:
            print(f"{split}: seed mIoU {res[split]['miou']:.1f} ({res[split]['images']} images)")
    return 0
