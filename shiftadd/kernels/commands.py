"""``shiftadd bench``: adder kernels vs nn.Conv2d, and ``--backends`` to show what is in use."""
from __future__ import annotations

import argparse

from shiftadd.errors import UserError


def register(subparsers) -> None:
    """Add the ``bench`` sub-command."""
    from shiftadd.kernels.bench import SHAPE_SETS

    p = subparsers.add_parser(
        "bench",
        help="time the adder kernels against nn.Conv2d (same shapes, same run)",
        description="Time the adder kernels against nn.Conv2d of the same shape in the same run "
        "(median of --repeats runs; ratios are adder / conv2d).",
    )
    p.add_argument("--shapes", choices=sorted(SHAPE_SETS), default="resnet20",
                   help="layer shapes: ResNet-20, AdderNet VGG-small, both, or a tiny smoke test (default: resnet20)")
    p.add_argument("--batch", type=int, default=64, help="batch size (default 64)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    p.add_argument("--device", default="cpu",
                   help="cpu (default), cuda or cuda:N: time there, against nn.Conv2d (cuDNN on CUDA)")
    p.add_argument("--repeats", type=int, default=5,
                   help="timed runs per number; median and minimum are reported (default 5)")
    p.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                   help="wall time (default) or process CPU time (steadier for --threads 1 on a busy machine)")
    p.add_argument("--forward-only", action="store_true", help="skip forward+backward timings")
    p.add_argument("--no-reference", action="store_true", help="skip the slow chunked PyTorch reference")
    p.add_argument("--no-int8", action="store_true", help="skip the int8 adder")
    p.add_argument("--all-methods", action="store_true",
                   help="also run the slow unfold-based methods on very large shapes (VGG)")
    p.add_argument("--network", action="store_true", help="also time a ResNet-20 training step (conv vs adder)")
    p.add_argument("--json", metavar="PATH", help="write the results as JSON")
    p.add_argument("--markdown", action="store_true", help="also print a markdown table")
    p.add_argument("--backends", action="store_true", help="only print which adder backends are available and used")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from shiftadd.kernels import backends_report
    from shiftadd.kernels.bench import run, use_device

    if args.backends:
        print(backends_report())
        return 0
    for name in ("batch", "threads", "repeats"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name} must be >= 1, got {getattr(args, name)}")
    try:
        use_device(args.device)
    except (ValueError, RuntimeError) as exc:
        raise UserError(f"--device: {exc}") from None
    run(shapes=args.shapes, batch=args.batch, threads=args.threads, repeats=args.repeats,
        backward=not args.forward_only, reference=not args.no_reference, int8=not args.no_int8,
        network=args.network, json_path=args.json, markdown=args.markdown, all_methods=args.all_methods,
        clock=args.clock, device=args.device)
    return 0
