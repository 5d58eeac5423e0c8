"""``shiftadd bench``: adder kernels vs nn.Conv2d, a whole-network training step (``--network``), and
``--backends`` to show what is in use. The kernel timings live in :mod:`shiftadd.kernels.bench`; the
network step needs the model zoo, so it lives here, above the kernels.
"""
from __future__ import annotations

import argparse
import functools
from typing import Callable, Dict, List, Optional, Sequence

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
    p.add_argument("--network", action="store_true",
                   help="also time a whole ResNet-20 training step for every operator family (ratios vs conv)")
    p.add_argument("--network-only", action="store_true", help="only the whole-network step (implies --network)")
    p.add_argument("--families", metavar="A,B", help="comma-separated families for --network (default: all)")
    p.add_argument("--steps", type=int, default=None,
                   help="timed training steps per family for --network (default: --repeats)")
    p.add_argument("--phases", action="store_true",
                   help="print the per-phase breakdown (forward / backward / optimizer) of --network")
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
    for name in ("batch", "threads", "repeats", "steps"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise UserError(f"--{name} must be >= 1, got {value}")
    if args.json:
        from shiftadd.paths import check_output_file

        check_output_file(args.json, "--json")
    try:
        use_device(args.device)
    except (ValueError, RuntimeError) as exc:
        raise UserError(f"--device: {exc}") from None
    families = [f.strip() for f in args.families.split(",") if f.strip()] if args.families else None
    network = None
    if args.network or args.network_only:
        network = functools.partial(_network_rows, batch=args.batch, families=families,
                                    steps=args.steps or args.repeats, phases=args.phases, device=args.device)
    run(shapes=args.shapes, batch=args.batch, threads=args.threads, repeats=args.repeats,
        backward=not args.forward_only, reference=not args.no_reference, int8=not args.no_int8,
        network=network, json_path=args.json, markdown=args.markdown, all_methods=args.all_methods,
        clock=args.clock, layers=not args.network_only, device=args.device)
    return 0


def _network_rows(log: Callable[[str], None], batch: int, families: Optional[Sequence[str]] = None,
                  steps: int = 5, phases: bool = False, device: str = "cpu") -> List[Dict[str, object]]:
    return bench_network("resnet20", families=families, batch=batch, steps=steps, phases=phases, log=log,
                         device=device)


PHASES = ("forward", "backward", "optimizer")


def _training_step(model: torch.nn.Module, has_adder: bool, batch: int, device: torch.device):
    """A training step as the trainer runs it (SGD with momentum and weight decay; AdderNet's adaptive LR
    for families with adder layers); returns step() -> per-phase seconds of the clock in use (CUDA work is
    synchronised at each phase boundary)."""
    from shiftadd.kernels import bench as kbench
    from shiftadd.optim import AdderAdaptiveLR

    model.to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    if has_adder:
        opt = AdderAdaptiveLR(opt, model)
    x = torch.randn(batch, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def step() -> Dict[str, float]:
        base = kbench.current_clock()

        def clock() -> float:
            sync()
            return base()

        t0 = clock()
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        t1 = clock()
        loss.backward()
        t2 = clock()
        opt.step()
        t3 = clock()
        return {"forward": t1 - t0, "backward": t2 - t1, "optimizer": t3 - t2}

    return step


def bench_network(model_name: str = "resnet20", families: Optional[Sequence[str]] = None, batch: int = 64,
                  steps: int = 5, phases: bool = False, log: Callable[[str], None] = print,
                  device: str = "cpu") -> List[Dict[str, object]]:
    """Training-step time of ``create(model_name, op=family)`` for every operator family, on random data.

    All models are built first and the timed steps alternate between families (round r times one
    step of every family), so a change of machine load hits every family alike. Each family gets
    one warm-up step, then ``steps`` timed ones; reported are medians (step and each phase: forward
    incl. the loss, backward, optimizer incl. the adaptive LR) and ``throughput_vs_conv`` =
    conv step / family step (both medians; > 1 means faster than conv).
    """
    import statistics

    try:
        from shiftadd.models import create
    except ImportError as exc:  # models package missing
        log(f"network benchmark skipped: {exc}")
        return []
    from shiftadd.kernels.bench import use_device
    from shiftadd.nn.families import family_names, get_family

    dev = use_device(device)

    names = list(families) if families else list(family_names())
    unknown = [n for n in names if n not in family_names()]
    if unknown:
        raise UserError(f"--families: unknown operator family {', '.join(unknown)}; "
                        f"choose from {', '.join(family_names())}")
    if "conv" in names:  # the reference goes first
        names.remove("conv")
        names.insert(0, "conv")
    runners = {}
    for name in names:
        torch.manual_seed(0)
        runners[name] = _training_step(create(model_name, op=name), get_family(name).has_adder, batch, dev)
        runners[name]()  # warm-up (allocations, kernel selection)
    samples: Dict[str, List[Dict[str, float]]] = {n: [] for n in names}
    for _ in range(max(1, steps)):
        for name in names:
            samples[name].append(runners[name]())
    out: List[Dict[str, object]] = []
    for name in names:
        totals = [sum(s.values()) * 1e3 for s in samples[name]]
        med = statistics.median(totals)
        entry: Dict[str, object] = {
            "model": model_name, "family": name, "variant": name, "device": str(dev), "batch": batch, "steps": len(totals),
            "step_ms": med, "step_ms_min": min(totals), "images_per_s": batch / med * 1e3,
            "phases_ms": {ph: statistics.median(s[ph] for s in samples[name]) * 1e3 for ph in PHASES},
        }
        out.append(entry)
    conv = next((e for e in out if e["family"] == "conv"), None)
    for e in out:
        e["throughput_vs_conv"] = conv["step_ms"] / e["step_ms"] if conv else None
    for e in out:
        ratio = "" if e["throughput_vs_conv"] is None else f"  {e['throughput_vs_conv']:5.2f}x conv throughput"
        line = (f"  {model_name:<10} {e['family']:<15} step median {e['step_ms']:8.1f} ms "
                f"({e['images_per_s']:6.1f} img/s), min {e['step_ms_min']:8.1f} ms{ratio}")
        if phases:
            ph = e["phases_ms"]
            line += "   [" + ", ".join(f"{k} {ph[k]:.1f}" for k in PHASES) + " ms]"
        log(line)
    return out
