"""The ``shiftadd`` command.

Each area of the library contributes its own sub-commands through a module that
defines ``register(subparsers)``; this file only wires them together and turns
user errors into one line on stderr with exit code 2. Output piped into a program that
stops reading (``shiftadd models | head -1``) ends quietly with exit code 141, as Unix tools
killed by SIGPIPE do.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import List, Optional

from shiftadd.errors import UserError

# Modules that define ``register(subparsers)``; a module that is missing is skipped.
COMMAND_MODULES = [
    "shiftadd.commands.demo",
    "shiftadd.data.commands",
    "shiftadd.train.commands",
    "shiftadd.commands.compress",
    "shiftadd.energy.commands",
    "shiftadd.commands.bench",
    "shiftadd.nas.commands",
    "shiftadd.commands.export",
    "shiftadd.commands.translate",
]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse's own errors: one line, exit 2
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="shiftadd", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name and name.startswith(exc.name):
                continue
            raise
        module.register(sub)
    return parser


#: Exit code when stdout is a pipe whose reader has gone: 128 + SIGPIPE, what the shell reports
#: for a Unix tool stopped by the signal (e.g. ``seq 100000 | head -1`` under ``set -o pipefail``).
BROKEN_PIPE_EXIT = 141


def _discard_stdout() -> None:
    """Point stdout at /dev/null, so the flush at interpreter exit cannot fail on the closed pipe."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # replaced by an object without a file descriptor
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)


def _flushed_stdout() -> bool:
    """Flush stdout now (a reader that went away shows here, not at interpreter exit); False if it
    has gone, stdout then discarded."""
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        _discard_stdout()
        return False
    return True


def _check_environment() -> None:
    """Settings from the environment that would otherwise fail mid-run."""
    forced = os.environ.get("SHIFTADD_BACKEND")
    if forced:
        from shiftadd.ops.adder import _BACKENDS, _load_kernels

        _load_kernels()
        if forced not in _BACKENDS:
            raise UserError(f"SHIFTADD_BACKEND={forced!r} is not a known adder backend; choose one of: "
                            f"{', '.join(_BACKENDS)} (or unset it)")


def main(argv: Optional[List[str]] = None) -> int:
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        try:
            _check_environment()
            result = args.func(args)
        except UserError as exc:
            print(f"shiftadd {args.command}: error: {exc}", file=sys.stderr)
            return 2
    except BrokenPipeError:
        _discard_stdout()
        return BROKEN_PIPE_EXIT
    except SystemExit:  # argparse's --help, --version and usage errors
        if not _flushed_stdout():
            raise SystemExit(BROKEN_PIPE_EXIT) from None
        raise
    except KeyboardInterrupt:
        print("shiftadd: interrupted", file=sys.stderr)
        return 130
    return int(result or 0) if _flushed_stdout() else BROKEN_PIPE_EXIT


if __name__ == "__main__":
    sys.exit(main())
