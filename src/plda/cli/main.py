"""The ``plda`` console command.

Each sub-command lives in its own module of ``plda.cli`` exposing ``register(subparsers)``,
which adds a parser whose default ``func`` is ``run(args) -> int``. Modules import heavy
dependencies (torch, pydensecrf, ...) inside ``run`` so that ``plda --help`` stays fast.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import importlib
import os
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
    "plda.cli.export",
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
    parser.add_argument("--debug", action="store_true",
                        help="show the full traceback of an error (also: PLDA_DEBUG=1)")
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
    debug = args.debug or os.environ.get("PLDA_DEBUG", "") not in ("", "0")
    try:
        from plda.utils.malloc import tune_allocator

        tune_allocator()  # PLDA_MALLOC; before the command allocates anything large
        with contextlib.ExitStack() as stack:  # locks a command takes are released here
            args.exit_stack = stack
            return int(args.func(args) or 0)
    except PldaError as exc:
        if debug:
            raise
        print(f"plda {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"plda {args.command}: interrupted", file=sys.stderr)
        return 130
    except (OSError, MemoryError, UnicodeError) as exc:
        if debug:
            raise
        print(f"plda {args.command}: error: {describe_system_error(exc)}", file=sys.stderr)
        return 2


# What to do about an operating-system error, by errno.
_ADVICE = {
    errno.ENOSPC: "the disk is full: free space (or give another run_dir=) and run the same "
                  "command again; finished outputs are kept and it resumes where it stopped",
    errno.EDQUOT: "the disk quota is exceeded: free space and run the same command again; "
                  "finished outputs are kept and it resumes where it stopped",
    errno.EACCES: "permission denied: choose a folder you can write to",
    errno.EPERM: "operation not permitted: choose a folder you can write to",
    errno.EROFS: "the file system is read-only: choose another folder",
    errno.ENOTDIR: "a part of the path is a file, not a folder: choose another path",
    errno.EEXIST: "a file is in the way where a folder is needed: choose another path",
    errno.EISDIR: "the path is a folder where a file was expected: give a file path",
    errno.ENOENT: "no such file or folder: check the path",
    errno.ENAMETOOLONG: "the file name is too long: choose a shorter path",
}


def describe_system_error(exc: BaseException) -> str:
    """A one-line message for an OS, memory or decoding error: what failed, on which path or
    value, and what to do."""
    if isinstance(exc, MemoryError):
        return ("out of memory; lower the setting that sizes the work (data.crop, "
                "train.batch_size, cam.scales, seg.scales, or the size of the images given) "
                "and run again")
    if isinstance(exc, UnicodeError):
        return f"text that is not valid UTF-8 ({exc}); save the file as UTF-8"
    paths = [p for p in (exc.filename, getattr(exc, "filename2", None)) if p]
    where = " -> ".join(str(p) for p in paths)
    what = exc.strerror or str(exc)
    advice = _ADVICE.get(exc.errno or -1)
    return f"{what}{f': {where}' if where else ''}" + (f" ({advice})" if advice else "")


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
