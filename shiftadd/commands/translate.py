"""``shiftadd translate``: translate sentences with a trained translation run."""
from __future__ import annotations

import sys
from typing import List


from shiftadd.train.commands import _positive_int


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "translate", help="translate sentences (one per line) with a translation run",
        description="Read one source sentence per line from FILE (or stdin) and print one detokenised "
                    "translation per line (an empty line stays empty).")
    p.add_argument("file", nargs="?", default="-", metavar="FILE", help="input text, UTF-8 (default: stdin)")
    p.add_argument("--checkpoint", required=True, help="run directory of `shiftadd train --task translation`")
    p.add_argument("--beam", type=_positive_int, default=5, help="beam width (1: greedy); default 5")
    p.add_argument("--length-penalty", dest="length_penalty", type=float, default=None,
                   help="score / length ** penalty (default: the run's)")
    p.add_argument("--best", action="store_true", help="use the run's best-validation model")
    p.add_argument("--threads", type=_positive_int, default=None, help="torch CPU threads")
    p.set_defaults(func=_cmd_translate)


def _read(path: str) -> List[str]:
    from shiftadd.errors import UserError

    if path == "-":
        return sys.stdin.read().splitlines()
    try:
        with open(path, "r", encoding="utf-8") as fh:
            return fh.read().splitlines()
    except FileNotFoundError:
        raise UserError(f"input file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read {path}: {exc}") from None


def _cmd_translate(args) -> int:
    from shiftadd.train.runs import best_checkpoint_path
    from shiftadd.train.translation import load_translation_run, translate_lines

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    path = best_checkpoint_path(args.checkpoint) if args.best else args.checkpoint
    load_translation_run(path)  # a bad run fails before stdin is read
    lines = _read(args.file)
    for line in translate_lines(path, lines, beam=args.beam, length_penalty=args.length_penalty):
        print(line)
    return 0
