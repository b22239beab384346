"""Argument helpers shared by the pipeline sub-commands."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "config", nargs="?", default=None, metavar="CONFIG",
        help="a preset (path or built-in name, see 'plda config list') or a run folder holding "
        "config.yaml; default: the built-in synthetic preset")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="config overrides, e.g. train.lr=0.02 model.backbone=resnet50")


DEFAULT_PRESET = "synth_seam_plda"


def resolve_config(args):
    """The RunConfig for ``CONFIG [key=value ...]``; a run folder means its config.yaml."""
    from plda.cli.config_cmd import split_preset_and_overrides
    from plda.config import load_run_config

    preset, overrides = split_preset_and_overrides(args.config, args.overrides)
    if preset is not None and Path(preset).is_dir():
        preset = str(Path(preset) / "config.yaml")
    return load_run_config(preset if preset is not None else DEFAULT_PRESET, overrides)
