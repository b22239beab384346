"""``plda refine irn``: seeds -> pseudo masks (relation labels, boundary net, random walk)."""

from __future__ import annotations

import argparse

from plda.cli._common import add_config_arguments, resolve_config


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "refine", help="refine CAM seeds into pseudo masks (IRN, AffinityNet, CRF, PAMR)",
        description="affinity: psa's AffinityNet trained on the la/ha CRF seeds (<run_dir>/affinity/), then "
        "the walk of each image's CAMs. crf / pamr: each image's seed scores (the chosen background threshold "
        "and its CAMs) refined by the dense CRF or by PAMR into <run_dir>/pseudo/<split>/. "
        "irn: relation labels of the training split from its CAMs "
        "(<run_dir>/irn/relations/), the boundary head trained on them on the frozen stage-1 "
        "backbone (<run_dir>/irn/), then every evaluation split's CAMs walked over the boundary "
        "affinities into <run_dir>/pseudo/<split>/<id>.png, scored in metrics.json. Each step "
        "resumes where it stopped; under torchrun training and the walk are sharded.")
    p.add_argument("method", choices=["irn", "affinity", "crf", "pamr"],
                   help="refinement method (sets refine.method)")
    add_config_arguments(p)
    p.add_argument("--workers", type=int, default=None,
                   help="processes for the relation labels' CRF (default: all CPUs)")
    p.set_defaults(func=run_refine)


def run_refine(args: argparse.Namespace) -> int:
    from plda.pipeline.refine import refine

    args.overrides = [*args.overrides, f"refine.method={args.method}"]
    cfg = resolve_config(args, write=True)
    summary = refine(cfg, workers=args.workers)
    for split, res in summary["pseudo"].items():
        if not isinstance(res, dict):
            continue
        score = f", pseudo-mask mIoU {res['miou']:.1f}" if "miou" in res else ""
        print(f"{split}: {res['written']} written{score}")
    return 0
