"""``plda config``: list the built-in presets and show a resolved configuration."""

from __future__ import annotations

import argparse


def register(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "config", help="list presets or print a resolved config",
        description="Print the configuration a run would use: the preset with everything it "
        "extends, merged, plus key=value overrides, validated against the schema.")
    sub = p.add_subparsers(dest="config_command", metavar="ACTION")
    show = sub.add_parser("show", help="print the resolved config as YAML")
    show.add_argument("preset", nargs="?", default=None,
                      help="a preset path or built-in name (default: the schema defaults)")
    show.add_argument("overrides", nargs="*", metavar="key=value")
    show.set_defaults(func=run_show)
    lst = sub.add_parser("list", help="list the built-in presets")
    lst.set_defaults(func=run_list)
    p.set_defaults(func=lambda args: (p.print_help(), 0)[1])
    return p


def split_preset_and_overrides(preset: str | None, overrides: list[str]) -> tuple[str | None, list[str]]:
    """Allow ``plda X key=value`` with no preset: a first positional holding '=' is an override."""
    if preset is not None and "=" in preset:
        return None, [preset, *overrides]
    return preset, list(overrides)


def run_show(args) -> int:
    from plda.config import load_run_config
    from plda.config.loader import dump_config

    preset, overrides = split_preset_and_overrides(args.preset, args.overrides)
    cfg = load_run_config(preset, overrides)
    print(dump_config(cfg), end="")
    return 0


def run_list(args) -> int:
    from plda.config.loader import PRESET_DIR, list_presets, load_yaml_with_extends

    for name in list_presets():
        data = load_yaml_with_extends(PRESET_DIR / f"{name}.yaml")
        desc = data.get("description", "") if isinstance(data, dict) else ""
        print(f"{name:40s} {desc}")
    return 0
