"""``plda refine METHOD``: seeds -> pseudo masks with a registered refiner."""

from __future__ import annotations

import argparse

from plda.cli._common import add_config_arguments, resolve_config


class _Refiners:
    """argparse choices read from ``plda.registry.REFINERS`` when the command is parsed or its
    help shown, so that building the parser imports no refiner."""

    def __contains__(self, name: object) -> bool:
        from plda.registry import REFINERS

        return name in REFINERS

    def __iter__(self):
        from plda.registry import REFINERS

        return iter(REFINERS.names())


def _refiner_list() -> str:
    from plda.registry import REFINERS

    lines = [f"  {name}: {REFINERS.meta(name).get('description', '')}"
             for name in REFINERS.names()]
    return "\nrefiners:\n" + "\n".join(lines) + "\n"


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "refine", help="refine CAM seeds into pseudo masks (IRN, AffinityNet, CRF, PAMR, or a "
        "registered refiner of one's own)",
        description="Each image's pseudo mask goes to <run_dir>/pseudo/<split>/<id>.png, "
        "scored in metrics.json where the dataset has masks. A refiner that trains writes its "
        "labels and network into its own folder of the run first. Each step resumes where it "
        "stopped; under torchrun network training and walks are sharded.")
    p.add_argument("method", choices=_Refiners(), metavar="METHOD",
                   help="refinement method (sets refine.method; the list below)")
    add_config_arguments(p)
    p.add_argument("--workers", type=int, default=None,
                   help="processes for the CRF and other per-image work (default: all CPUs)")
    p.set_defaults(func=run_refine)
    p.format_help = lambda: argparse.ArgumentParser.format_help(p) + _refiner_list()


def run_refine(args: argparse.Namespace) -> int:
    from plda.pipeline.refine import refine

    args.overrides = [*args.overrides, f"refine.method={args.method}"]
    cfg = resolve_config(args, write=True)
    summary = refine(cfg, workers=args.workers)
    for split, res in summary["pseudo"].items():
        if not isinstance(res, dict):
            continue
        score = f", pseudo-mask mIoU {res['miou']:.1f}" if res.get("miou") is not None else ""
        print(f"{split}: {res['written']} written{score}")
    return 0
