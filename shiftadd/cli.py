"""The ``shiftadd`` command.

Each area of the library contributes its own sub-commands through a module that
defines ``register(subparsers)``; this file only wires them together and turns
user errors into one line on stderr with exit code 2.
"""
from __future__ import annotations

import argparse
import importlib
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
    "shiftadd.kernels.commands",
    "shiftadd.commands.export",
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


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result = args.func(args)
    except UserError as exc:
        print(f"shiftadd {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("shiftadd: interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
