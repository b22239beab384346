"""Argument helpers shared by the pipeline sub-commands."""

from __future__ import annotations

import argparse


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "config", nargs="?", default=None, metavar="CONFIG",
        help="a preset (path or built-in name, see 'plda config list') or a run folder holding "
        "config.yaml; default: the built-in synthetic preset")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="config overrides, e.g. train.lr=0.02 model.backbone=resnet50")


DEFAULT_PRESET = "synth_seam_plda"


def resolve_config(args, write: bool = False):
    """The RunConfig for ``CONFIG [key=value ...]``; a run folder means its config.yaml.
    ``write``: the command writes into the run folder, so it takes the folder's lock
    (:mod:`plda.utils.runlock`) for the rest of the command (``plda.cli.main`` releases it)."""
    cfg = _resolve(args)
    if write:
        from plda.utils.runlock import run_lock

        stack = getattr(args, "exit_stack", None)
        if stack is not None:
            stack.enter_context(run_lock(cfg.run_dir))
    return cfg


def _resolve(args):
    from plda.cli.config_cmd import split_preset_and_overrides
    from plda.config import load_run_config

    from plda.config import load_run_folder_config, run_folder_of

    preset, overrides = split_preset_and_overrides(args.config, args.overrides)
    folder = run_folder_of(preset)
    if folder is not None:  # the folder named is the run (config.yaml's run_dir is ".")
        return load_run_folder_config(folder, overrides)
    return load_run_config(preset if preset is not None else DEFAULT_PRESET, overrides)
