"""``plda weights``: look inside weights files (MXNet .params, safetensors, torch checkpoints)."""

from __future__ import annotations

import argparse


def register(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "weights", help="inspect weights files",
        description="Inspect MXNet .params, .safetensors and weights-only torch checkpoints.")
    sub = p.add_subparsers(dest="weights_command", metavar="ACTION")
    ins = sub.add_parser(
        "inspect", help="list every array: name, shape, dtype, sum",
        description="Print a table of every array (name, shape, dtype, float64 sum) and the total "
        "parameter count. MXNet names are shown as stored (arg:/aux: prefixes included).")
    ins.add_argument("file", help="a .params, .safetensors, .pth/.pt/.bin/.ckpt file")
    ins.add_argument("--json", metavar="OUT", default=None,
                     help="also write the list as JSON to OUT (atomically)")
    ins.set_defaults(func=run_inspect)
    p.set_defaults(func=run, _weights_parser=p)
    return p


def run(args) -> int:
    """``plda weights`` without an action: show its help."""
    args._weights_parser.print_help()
    return 2


def run_inspect(args) -> int:
    from plda.utils.io import atomic_write_json
    from plda.weights.inspect import format_table, inspect_weights

    entries = inspect_weights(args.file)
    print(format_table(entries))
    if args.json:
        atomic_write_json(args.json, entries)
    return 0
