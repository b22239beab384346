"""``plda run``: every pipeline stage of a config, skipping what is already done."""

from __future__ import annotations

import argparse

from plda.cli._common import add_config_arguments, resolve_config

_STAGES = "data, train, cam, seeds, refine, seg_train, seg_eval, report"


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "run", help="run the whole pipeline, skipping stages whose outputs are current",
        description="Run the pipeline stages of a config in its run folder: " + _STAGES + ". "
        "With no CONFIG it generates the built-in synthetic dataset and runs the whole chain on "
        "it. A stage whose settings and inputs are unchanged since it finished is skipped; an "
        "interrupted stage resumes; a stage whose settings changed runs again (its old outputs "
        "are removed), and so do the stages after it. --dry-run shows what would happen.")
    add_config_arguments(p)
    p.add_argument("--from", dest="start", default=None, metavar="STAGE",
                   help=f"first stage ({_STAGES})")
    p.add_argument("--until", default=None, metavar="STAGE", help="last stage")
    p.add_argument("--dry-run", action="store_true",
                   help="print each stage's action (skip / resume / rerun / run) and stop")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from plda.pipeline.run import stage_range, format_metrics, plan, run_pipeline

    cfg = resolve_config(args, write=not args.dry_run)
    if args.dry_run:
        for stage, action in plan(cfg, stage_range(args.start, args.until)).items():
            print(f"{stage:10s} {action}")
        return 0
    metrics = run_pipeline(cfg, start=args.start, until=args.until)
    print(format_metrics(metrics))
    report = Path(cfg.run_dir) / "report.html"
    print(f"run folder: {cfg.run_dir}")
    if report.is_file():
        print(f"report: {report.resolve()} (scores, training curves, best and worst images)")
    if "seg" in metrics:
        print(next_steps(cfg))
    return 0


def next_steps(cfg) -> str:
    """What to do next: segment new images with this run, and train on one's own tagged photos
    with the preset the measured evidence supports (plain CAM: the best baseline of the
    README's verdict; PLDA lowered it there)."""
    return (f"next: segment your own images with 'plda predict {cfg.run_dir} IMAGES --out DIR'; "
            "train on your own tagged photos with 'plda prepare folder PHOTOS --tags tags.csv "
            "--out data/own' then 'plda run own_cam_effnetlite0' (plain CAM, the best baseline "
            "measured; README: Your own photos)")
