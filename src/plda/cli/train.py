"""``plda train``: stage-1 classifier training (CAM / SEAM / SEAM+PLDA)."""

from __future__ import annotations

import argparse

from plda.cli._common import add_config_arguments, resolve_config


def register(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "train", help="train the stage-1 classifier (cam, seam, seam_plda)",
        description="Train the stage-1 classifier of a config in its run folder. Runs on CPU, "
        "one GPU, or many under torchrun (DDP): torchrun --nproc_per_node=N -m plda train ...")
    add_config_arguments(p)
    p.add_argument("--resume", action="store_true",
                   help="continue from the latest checkpoint in the run folder")
    p.set_defaults(func=run)
    return p


def run(args) -> int:
    from plda.pipeline.stage1 import train_stage1

    cfg = resolve_config(args, write=True)
    summary = train_stage1(cfg, resume=args.resume)
    if summary["interrupted"]:
        print(f"interrupted at step {summary['steps']}/{summary['total_steps']}; "
              f"continue with: plda train {cfg.run_dir} --resume")
        return 130
    print(f"trained {summary['steps']} steps in {summary['wall_time_s']:.0f} s -> {cfg.run_dir}")
    return 0
