"""``plda run``: every pipeline stage of a config, skipping what is already done."""

from __future__ import annotations

import argparse

from plda.cli._common import add_config_arguments, resolve_config


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "run", help="run the pipeline (train -> cam -> seeds), skipping finished stages",
        description="Run the pipeline stages of a config in its run folder. With no CONFIG it "
        "generates the built-in synthetic dataset and runs on it. Finished stages are skipped; "
        "an interrupted stage resumes.")
    add_config_arguments(p)
    p.add_argument("--from", dest="start", default=None, metavar="STAGE",
                   help="first stage (train, cam, seeds)")
    p.add_argument("--until", default=None, metavar="STAGE", help="last stage")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from plda.pipeline.run import format_metrics, run_pipeline

    cfg = resolve_config(args)
    metrics = run_pipeline(cfg, start=args.start, until=args.until)
    print(format_metrics(metrics))
    print(f"run folder: {cfg.run_dir}")
    return 0
