"""Typed run configuration: ``load_run_config(preset, overrides)``."""

from __future__ import annotations

from pathlib import Path


def load_run_config(preset: str | Path | None = None, overrides=()):
    """The validated :class:`~plda.config.schema.RunConfig` for a preset plus overrides."""
    from plda.config.loader import load_config
    from plda.config.schema import RunConfig

    return load_config(RunConfig, preset, list(overrides))
