"""``shiftadd demo``: the main job. Trains conv, adder, shift-ps and shift-add variants of a
small ResNet on the embedded CIFAR-10 subset (ships with the package, nothing to download)
and prints a side-by-side table with a plot."""
from __future__ import annotations

import argparse
import os
import time

from shiftadd.errors import UserError
from shiftadd.paths import check_output_dir


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="train conv/adder/shift/shift-add variants side by side on the embedded data",
                       description=__doc__)
    p.add_argument("--epochs", type=int, default=4, help="epochs per variant (default 4)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--subset", type=int, default=None, help="use only N training images")
    p.add_argument("--ops", default="conv,adder,shift-ps,shiftadd", help="comma-separated operator families")
    p.add_argument("--model", default="resnet8", help="architecture (default resnet8)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/demo", help="folder for checkpoints, metrics, the table and the plot")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from shiftadd.models import OPS, resolve_model_name
    from shiftadd.train.compare import compare, format_table

    ops = [o.strip() for o in args.ops.split(",") if o.strip()]
    bad = [o for o in ops if o not in OPS]
    if bad:
        raise UserError(f"unknown op(s) {bad}; choose from {', '.join(OPS)}")
    try:
        resolve_model_name(args.model)
    except ValueError:
        raise UserError(f"unknown model {args.model!r}; see `shiftadd models`") from None
    if args.epochs < 1 or args.batch_size < 1:
        raise UserError("--epochs and --batch-size must be positive")
    check_output_dir(args.out, "--out")
    os.makedirs(args.out, exist_ok=True)
    plot = os.path.join(args.out, "comparison.png")
    t0 = time.time()
    rows = compare([(args.model, o) for o in ops], dataset="embedded", epochs=args.epochs,
                   batch_size=args.batch_size, subset=args.subset, seed=args.seed, out=args.out,
                   progress=True, plot=plot)
    table = format_table(rows)
    with open(os.path.join(args.out, "comparison.md"), "w") as f:
        f.write(table + "\n")
    print()
    print(f"{args.model} on the embedded CIFAR-10 subset, {args.epochs} epochs each:")
    print(table)
    print(f"\ntotal {time.time() - t0:.0f} s; plot: {plot}; runs: {args.out}/")
    return 0
