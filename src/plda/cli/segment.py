"""``plda segment {train,eval}``: stage 2, the DeepLab network on the pseudo masks."""

from __future__ import annotations

import argparse
from pathlib import Path

from plda.cli._common import add_config_arguments, resolve_config


def register(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "segment", help="train and evaluate the stage-2 segmentation network (DeepLab)",
        description="train: the segmentation network of seg.model trained on the pseudo masks "
        "(seg.mask_dir, default <run_dir>/pseudo/train from 'plda refine') into "
        "<run_dir>/deeplab/ (checkpoints, logs, segmentation.safetensors); under torchrun it "
        "trains with DDP. eval: multi-scale (seg.scales, seg.eval_flip, optional seg.crf) "
        "predictions of seg.eval_splits scored against the ground truth in metrics.json.")
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    train = sub.add_parser("train", help="train on the pseudo masks",
                           description="Train the configured segmentation network on the run's "
                           "pseudo masks; --resume continues from the latest checkpoint.")
    add_config_arguments(train)
    train.add_argument("--resume", action="store_true",
                       help="continue from the latest checkpoint in <run_dir>/deeplab/")
    train.set_defaults(func=run_train)
    ev = sub.add_parser("eval", help="predict and score seg.eval_splits",
                        description="Predict seg.eval_splits with the trained network and "
                        "print the mIoU of each split.")
    add_config_arguments(ev)
    ev.set_defaults(func=run_eval)
    return p


def run_train(args: argparse.Namespace) -> int:
    from plda.pipeline.segment import train_segmentation

    cfg = resolve_config(args, write=True)
    summary = train_segmentation(cfg, resume=args.resume)
    if summary["interrupted"]:
        print(f"interrupted at step {summary['steps']}/{summary['total_steps']}; "
              f"continue with: plda segment train {cfg.run_dir} --resume")
        return 130
    final = summary.get("final", {})
    acc = f", pixel accuracy {final['stat/pixel_acc']:.3f}" if "stat/pixel_acc" in final else ""
    print(f"trained {summary['steps']} steps in {summary['wall_time_s']:.0f} s (final loss "
          f"{final.get('loss', float('nan')):.4f}{acc}) -> "
          f"{Path(cfg.run_dir) / summary['weights']}")
    return 0


def run_eval(args: argparse.Namespace) -> int:
    from plda.pipeline.segment_eval import evaluate_segmentation

    cfg = resolve_config(args, write=True)
    for split, res in evaluate_segmentation(cfg).items():
        if not isinstance(res, dict):
            continue
        score = f"mIoU {res['miou']:.1f}" if "miou" in res else "no ground truth to score"
        print(f"{split}: {res.get('written', 0)} written, {score}")
    return 0
