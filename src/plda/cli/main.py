"""The ``plda`` console command.

Each sub-command lives in its own module of ``plda.cli`` exposing ``register(subparsers)``,
which adds a parser whose default ``func`` is ``run(args) -> int``. Modules import heavy
dependencies (torch, pydensecrf, ...) inside ``run`` so that ``plda --help`` stays fast.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import sys

from plda import __version__
from plda.errors import PldaError

# Order here is the order in ``plda --help``: the pipeline order.
COMMAND_MODULES = (
    "plda.cli.synth",
    "plda.cli.prepare",
    "plda.cli.config_cmd",
    "plda.cli.run",
    "plda.cli.train",
    "plda.cli.cam",
    "plda.cli.refine",
    "plda.cli.segment",
    "plda.cli.predict",
    "plda.cli.eval",
    "plda.cli.report",
    "plda.cli.weights",
    "plda.cli.convert_weights",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="plda",
        description="Weakly supervised semantic segmentation from image-level tags "
        "(CAM / SEAM / SEAM+PLDA).",
    )
    parser.add_argument("--version", action="version", version=f"plda-wsss {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # key=value overrides after an option ('plda train RUN --resume train.lr=0.1') are left over
    # by argparse once the positionals are filled: they belong to the overrides all the same.
    if extra:
        overrides = [a for a in extra if "=" in a and not a.startswith("-")]
        unknown = [a for a in extra if a not in overrides or not hasattr(args, "overrides")]
        if unknown:
            parser.error(f"unrecognized arguments: {' '.join(unknown)}")
        args.overrides = [*(args.overrides or []), *overrides]
    if not getattr(args, "func", None):
        parser.print_help()
        return 0 if args.command is None else 2
    try:
        with contextlib.ExitStack() as stack:  # locks a command takes are released here
            args.exit_stack = stack
            return int(args.func(args) or 0)
    except PldaError as exc:
        print(f"plda {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"plda {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
