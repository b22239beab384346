"""Typed run configuration: ``load_run_config(preset, overrides)``."""

from __future__ import annotations

from pathlib import Path


def load_run_config(preset: str | Path | None = None, overrides=()):
    """The validated :class:`~plda.config.schema.RunConfig` for a preset plus overrides."""
    from plda.config.loader import load_config
    from plda.config.schema import RunConfig

    return load_config(RunConfig, preset, list(overrides))


RUN_CONFIG = "config.yaml"
# What a run folder's config.yaml stores as run_dir: the folder itself, so that a copied or moved
# run folder is the run wherever it lies.
HERE = "."


def saved_run_dir(path: str | Path) -> str | None:
    """The ``run_dir`` stored in a config file, or None if there is none or it cannot be read."""
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    return data.get("run_dir") if isinstance(data, dict) else None


def run_folder_of(config: str | Path | None) -> Path | None:
    """The run folder a CONFIG argument names: a folder holding ``config.yaml``, or a run's own
    ``config.yaml`` (one whose ``run_dir`` is ``.``); None for a preset."""
    if config is None:
        return None
    path = Path(config)
    if path.is_dir():
        return path
    if path.name == RUN_CONFIG and path.is_file() and saved_run_dir(path) == HERE:
        return path.parent
    return None


def load_run_folder_config(folder: str | Path, overrides=(), *, announce: bool = True):
    """The config of the run in ``folder`` (its ``config.yaml``) with ``run_dir`` = ``folder``:
    the folder named is the run, whatever path its config was written from. An explicit
    ``run_dir=`` override still wins (and, with ``announce``, says so on stderr)."""
    import dataclasses
    import sys

    from plda.errors import ConfigError

    folder = Path(folder)
    path = folder / RUN_CONFIG
    if not path.is_file():
        raise ConfigError(f"{folder} is a folder without {RUN_CONFIG}; expected a run folder "
                          "(made by 'plda train' or 'plda run') or a preset file")
    overrides = list(overrides)
    explicit = any(o.split("=", 1)[0].strip() == "run_dir" for o in overrides)
    cfg = load_run_config(path, overrides)
    if explicit:
        if announce and Path(cfg.run_dir).resolve() != folder.resolve():
            print(f"plda: run_dir={cfg.run_dir} overrides the run folder {folder}: the config "
                  f"is read from {path}, outputs go to {cfg.run_dir}", file=sys.stderr)
        return cfg
    return dataclasses.replace(cfg, run_dir=str(folder))
