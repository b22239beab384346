"""``plda report RUN_DIR``: write the run's self-contained ``report.html``."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "report",
        help="write RUN_DIR/report.html: scores, curves and a gallery of best / worst images",
        description="Write one self-contained HTML page (no script, no network; opens offline) "
        "for a run folder: the scores of every stage and class, the background-threshold "
        "curve, training curves, and the best and worst images of a split side by side (image, "
        "ground truth, CAM, seed, pseudo mask, segmentation). Stages not run yet are noted.",
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run folder written by 'plda run'")
    p.add_argument("--split", metavar="S",
                   help="gallery split (default: val when it has label maps, else the first "
                   "split that has)")
    p.add_argument("--gallery", type=int, default=4, metavar="N",
                   help="best and worst images shown, N each (default 4; 0: no gallery)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from plda.report import write_report

    print(write_report(args.run_dir, gallery_split=args.split, gallery_size=args.gallery))
    return 0
