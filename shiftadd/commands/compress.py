"""``shiftadd prune`` and ``shiftadd quantize``: compress a trained run and measure what it costs.

* ``prune``: magnitude/random pruning of a run's weights, accuracy before and after, sparsity per
  layer, optional fine-tuning (masks kept) into a new run;
* ``quantize``: post-training shared-scale quantization of the adder layers (one scale for input and
  weight, so the adders work on integers), accuracy at each bit width.

Fixed-point training itself is ``shiftadd train --quant fix8`` (see shiftadd.train.compress).
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Dict

from shiftadd.errors import UserError
from shiftadd.train.commands import _names, _positive_int


def register(subparsers) -> None:
    """Add the ``prune`` and ``quantize`` sub-commands."""
    p = subparsers.add_parser(
        "prune", help="prune a trained run: accuracy before/after and sparsity; optionally fine-tune",
        description="Prune the weights of a trained run (magnitude or random, global or per layer) and report "
                    "test accuracy before and after, and the sparsity per layer. With --finetune-epochs N the "
                    "pruned model is fine-tuned (masks kept) into --out, like `shiftadd train --init-from RUN "
                    "--prune RATIO`.")
    p.add_argument("--checkpoint", required=True, metavar="RUN", help="run directory of the trained model")
    p.add_argument("--ratio", type=float, required=True, help="fraction of the selected weights to prune, in [0, 1)")
    p.add_argument("--method", default="magnitude", help="magnitude (default) or random")
    p.add_argument("--scope", default="global", help="global (one threshold per layer type; default) or layer")
    p.add_argument("--types", type=_names, default=["adder", "shift"], metavar="TYPES",
                   help="layer types to prune, comma-separated (default adder,shift)")
    p.add_argument("--finetune-epochs", dest="finetune_epochs", type=int, default=0, metavar="N",
                   help="fine-tune the pruned model for N epochs (default 0: report only)")
    p.add_argument("--lr", type=float, default=0.01, help="fine-tuning learning rate (default 0.01)")
    p.add_argument("--out", default=None, help="run directory of the fine-tuning run")
    p.add_argument("--data-dir", dest="data_dir", default=None, help="where the data set lives now")
    p.add_argument("--test-subset", dest="test_subset", type=int, default=None, metavar="N",
                   help="evaluate on N test images (0: all; default: what the run used)")
    p.add_argument("--threads", type=_positive_int, default=None, help="torch CPU threads")
    p.add_argument("--layers", action="store_true", help="print the sparsity of every layer")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_cmd_prune)

    p = subparsers.add_parser(
        "quantize", help="post-training shared-scale quantization of a run's adder layers: accuracy per bit width",
        description="Quantize every adder layer of a trained run with one scale shared by input and weight "
                    "(AdderNet hardware paper), calibrated on a few training batches, and report test accuracy "
                    "in float and at each bit width.")
    p.add_argument("--checkpoint", required=True, metavar="RUN", help="run directory of the trained model")
    p.add_argument("--bits", type=_bit_list, default=[16, 8, 6, 4], help="comma-separated widths (default 16,8,6,4)")
    p.add_argument("--scale", default="free", help="free (default) or pow2 (a power-of-two scale: pure integer adders)")
    p.add_argument("--range", dest="range_from", default="folded", choices=("folded", "max", "input", "weight"),
                   help="what the shared scale covers: folded (default: the inputs; weights beyond them folded into "
                        "the output exactly), max (inputs and weights, the paper's), input, weight")
    p.add_argument("--calibration-batches", dest="calibration_batches", type=_positive_int, default=4, metavar="N",
                   help="training batches (of 128, no augmentation) that set the input ranges (default 4)")
    p.add_argument("--data-dir", dest="data_dir", default=None, help="where the data set lives now")
    p.add_argument("--test-subset", dest="test_subset", type=int, default=None, metavar="N",
                   help="evaluate on N test images (0: all; default: what the run used)")
    p.add_argument("--threads", type=_positive_int, default=None, help="torch CPU threads")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_cmd_quantize)


def _bit_list(text: str):
    try:
        bits = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not bits or any(not 2 <= b <= 32 for b in bits):
        raise argparse.ArgumentTypeError(f"bit widths must be in [2, 32], got {text!r}")
    return bits


def _cmd_prune(args) -> int:
    from shiftadd.prune import format_sparsity_report
    from shiftadd.train.loop import TrainingDiverged, train
    from shiftadd.train.runs import checkpoint_config, evaluate_checkpoint
    from shiftadd.train.task import load_data

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.finetune_epochs < 0:
        raise UserError(f"--finetune-epochs must be >= 0, got {args.finetune_epochs}")
    if args.finetune_epochs and not args.out:
        raise UserError("--finetune-epochs needs --out DIR for the fine-tuning run")
    prune = {"ratio": args.ratio, "method": args.method, "scope": args.scope, "layer_types": args.types}
    data = load_data(checkpoint_config(args.checkpoint, args.data_dir, args.test_subset))  # once for both
    before = evaluate_checkpoint(args.checkpoint, data=data)
    after = evaluate_checkpoint(args.checkpoint, data=data, prune=prune)
    res: Dict[str, Any] = {"checkpoint": args.checkpoint, "ratio": args.ratio, "method": args.method,
                           "scope": args.scope, "types": args.types, "acc_before": before["acc"],
                           "acc_pruned": after["acc"], "sparsity": after["sparsity"]}
    if args.finetune_epochs:
        from shiftadd.train.compress import inherited_settings
        from shiftadd.train.config import make_config

        values = inherited_settings(args.checkpoint)
        values.update(init_from=args.checkpoint, prune=args.ratio, prune_method=args.method,
                      prune_scope=args.scope, prune_types=args.types, epochs=args.finetune_epochs, lr=args.lr,
                      progress=sys.stderr.isatty() and not args.json)
        if args.data_dir:
            values["data_dir"] = args.data_dir
        if args.threads:
            values["threads"] = args.threads
        config = make_config(values.pop("recipe", None), values)
        try:
            result = train(config, args.out, log=(lambda *_: None) if args.json else print)
        except TrainingDiverged as exc:
            print(f"shiftadd prune: fine-tuning stopped: {exc}", file=sys.stderr)
            return 1
        res["acc_finetuned"] = result.results["final"]["test_acc"]
        res["out"] = args.out
    if args.json:
        print(json.dumps(res))
        return 0
    report = after["sparsity"]
    if args.layers:
        print(format_sparsity_report(report))
    kinds = ", ".join(f"{k} {100 * v['sparsity']:.1f}% zero" for k, v in report["by_kind"].items())
    print(f"pruned {100 * args.ratio:.0f}% ({args.method}, {args.scope}): {kinds}")
    print(f"test accuracy: {100 * before['acc']:.2f}% before, {100 * after['acc']:.2f}% after pruning"
          + (f", {100 * res['acc_finetuned']:.2f}% after {args.finetune_epochs} fine-tuning epochs (run in "
             f"{args.out})" if args.finetune_epochs else ""))
    return 0


def _cmd_quantize(args) -> int:
    import torch

    from shiftadd.train.runs import shared_scale_sweep

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.scale not in ("free", "pow2"):
        raise UserError(f"--scale must be free or pow2, got {args.scale!r}")
    if args.test_subset is not None and args.test_subset < 0:
        raise UserError(f"--test-subset must be >= 0, got {args.test_subset}")
    res = shared_scale_sweep(args.checkpoint, args.bits, args.scale, args.calibration_batches, args.data_dir,
                             args.test_subset, args.range_from)
    n = res.pop("test_images")
    if args.json:
        print(json.dumps({"checkpoint": args.checkpoint, "scale": args.scale, "range": args.range_from,
                          "test_images": n, "accuracy": res}))
        return 0
    print(f"shared-scale adder quantization ({args.scale} scale, {args.range_from} range) of {args.checkpoint}, "
          f"{n} test images:")
    for k, v in res.items():
        print(f"  {k:>6}: {100 * v:6.2f}%" + ("" if k == "float" else f"  ({100 * (v - res['float']):+.2f})"))
    return 0
