"""``shiftadd bench``: adder kernels vs nn.Conv2d, a whole-network training step (``--network``), and
``--backends`` to show what is in use. The kernel timings live in :mod:`shiftadd.kernels.bench`; the
network step needs the model zoo, so it lives here, above the kernels.
"""
from __future__ import annotations

import argparse
import functools
from typing import Callable, Dict, List, Sequence

import torch
import torch.nn.functional as F

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
    if args.json:
        from shiftadd.paths import check_output_file

        check_output_file(args.json, "--json")
    try:
        use_device(args.device)
    except (ValueError, RuntimeError) as exc:
        raise UserError(f"--device: {exc}") from None
    network = functools.partial(_network_rows, batch=args.batch, device=args.device) if args.network else None
    run(shapes=args.shapes, batch=args.batch, threads=args.threads, repeats=args.repeats,
        backward=not args.forward_only, reference=not args.no_reference, int8=not args.no_int8,
        network=network, json_path=args.json, markdown=args.markdown, all_methods=args.all_methods,
        clock=args.clock, device=args.device)
    return 0


def _network_rows(log: Callable[[str], None], batch: int, device: str = "cpu") -> List[Dict[str, object]]:
    return bench_network("resnet20", batch=batch, log=log, device=device)


def _fused_adder_conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, grad_mode="full"):
    """adder_conv2d through the fused C++ conv (what AdderConv2d would run with the conv2d hook)."""
    from shiftadd.kernels.cpu_backend import cpu_backend

    out = cpu_backend.conv2d(x, weight, stride, padding, dilation, groups, grad_mode)
    return out if bias is None else out + bias.view(1, -1, 1, 1)


def bench_network(model_name: str = "resnet20", variants: Sequence[str] = ("conv", "adder", "adder-fused"),
                  batch: int = 64, steps: int = 5, log: Callable[[str], None] = print,
                  device: str = "cpu") -> List[Dict[str, object]]:
    """Training throughput (images/s) of shiftadd.models.create(model_name, op=...) on random data.

    ``adder`` runs the adder layers as shipped (shiftadd.ops.adder.adder_conv2d with its automatically
    selected backend); ``adder-fused`` routes AdderConv1d/2d through the fused C++ convolution for the
    duration of the measurement (shiftadd.nn.adder.adder_conv2d is patched in this process only; CPU only).
    Any other variant is an ``op`` of :func:`shiftadd.models.create` (``shift-ps``, ``shiftadd``, ...).
    """
    import shiftadd.nn.adder as nn_adder
    from shiftadd.kernels.bench import timings_ms, use_device
    from shiftadd.models import create
    from shiftadd.ops.adder import select_backend

    dev = use_device(device)
    out = []
    for variant in variants:
        if variant == "adder-fused" and dev.type != "cpu":
            log(f"  {model_name:<10} {variant:<12} skipped: the fused C++ convolution is CPU only")
            continue
        op = "adder" if variant.startswith("adder") else variant
        torch.manual_seed(0)
        model = create(model_name, op=op).to(dev)
        model.train()
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        x = torch.randn(batch, 3, 32, 32, device=dev)
        y = torch.randint(0, 10, (batch,), device=dev)

        def step():
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            opt.step()

        original = nn_adder.adder_conv2d
        if variant == "adder-fused":
            nn_adder.adder_conv2d = _fused_adder_conv2d
        try:
            med, best = timings_ms(step, steps)
        finally:
            nn_adder.adder_conv2d = original
        has_adder = any(isinstance(m, nn_adder.ADDER_TYPES) for m in model.modules())
        backend = ("cpu fused conv" if variant == "adder-fused" else
                   select_backend(x, record=False).name + " (unfold + mm)" if has_adder else "-")
        entry = {"model": model_name, "variant": variant, "device": str(dev), "batch": batch, "step_ms": med,
                 "step_ms_min": best,
                 "images_per_s": batch / med * 1e3, "images_per_s_best": batch / best * 1e3, "adder_backend": backend}
        out.append(entry)
        log(f"  {model_name:<10} {variant:<12} step median {med:8.1f} ms ({entry['images_per_s']:6.1f} img/s), "
            f"min {best:8.1f} ms ({entry['images_per_s_best']:6.1f} img/s)   adder: {backend}")
    return out
