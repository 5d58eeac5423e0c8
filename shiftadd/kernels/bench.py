"""Speed benchmark of the adder kernels against nn.Conv2d of the same shape, in the same run.

Used by ``shiftadd bench`` and ``benchmarks/bench_adder.py``. Every number is the median of
``repeats`` timed runs after one warm-up run (wall clock, ``time.perf_counter``). Peak extra
memory is the rise of the process's peak resident set size during one run (Linux: reset with
``/proc/self/clear_refs``, read ``VmHWM`` from ``/proc/self/status``); it sees every allocation
(PyTorch's CPU allocator returns large blocks to the OS), unlike tracemalloc.

``device="cuda"`` times on the GPU instead (each run ends with ``torch.cuda.synchronize``; peak
memory is the rise of ``torch.cuda.max_memory_allocated``) against ``nn.Conv2d`` (cuDNN); the
CPU-only methods (C++ kernels, int8) are left out there.
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

# (name, in_channels, out_channels, spatial size, stride); 3x3 kernels, padding 1
RESNET20_SHAPES: List[Tuple[str, int, int, int, int]] = [
    ("r20 16->16 @32", 16, 16, 32, 1),
    ("r20 32->32 @16", 32, 32, 16, 1),
    ("r20 64->64 @8", 64, 64, 8, 1),
    ("r20 16->32 @32 s2", 16, 32, 32, 2),
    ("r20 32->64 @16 s2", 32, 64, 16, 2),
]
# AdderNet's VGG-small (the adder layers; the first conv stays multiplicative)
VGG_SMALL_SHAPES: List[Tuple[str, int, int, int, int]] = [
    ("vgg 128->128 @32", 128, 128, 32, 1),
    ("vgg 128->256 @16", 128, 256, 16, 1),
    ("vgg 256->256 @16", 256, 256, 16, 1),
    ("vgg 256->512 @8", 256, 512, 8, 1),
    ("vgg 512->512 @8", 512, 512, 8, 1),
]
QUICK_SHAPES: List[Tuple[str, int, int, int, int]] = [
    ("quick 8->8 @8", 8, 8, 8, 1),
    ("quick 8->16 @8 s2", 8, 16, 8, 2),
]
SHAPE_SETS = {"resnet20": RESNET20_SHAPES, "vgg": VGG_SMALL_SHAPES, "quick": QUICK_SHAPES,
              "all": RESNET20_SHAPES + VGG_SMALL_SHAPES}


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
_clock = time.perf_counter
_device = torch.device("cpu")


def _sync() -> None:
    if _device.type == "cuda":
        torch.cuda.synchronize(_device)


def use_device(device: str) -> torch.device:
    """Check ``device`` ("cpu", "cuda", "cuda:N") and time on it from now on (synchronising on CUDA)."""
    global _device
    dev = torch.device(device)
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be cpu, cuda or cuda:N, got {device!r}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for, but CUDA is not available here")
    _device = dev
    return dev


def current_clock() -> Callable[[], float]:
    """The clock chosen by :func:`run` (``time.perf_counter`` or ``time.process_time``), in seconds."""
    return _clock


def timings_ms(fn: Callable[[], object], repeats: int) -> Tuple[float, float]:
    """(median, minimum) in milliseconds over ``repeats`` runs, after one warm-up run.

    The clock is wall time by default; ``run(clock="cpu")`` uses the process CPU time, which on a
    machine shared with other jobs is the steadier measure of a single-threaded run (it does not
    count the time the process waits for a core).
    """
    fn()
    _sync()
    times = []
    for _ in range(max(1, repeats)):
        t = _clock()
        fn()
        _sync()
        times.append((_clock() - t) * 1e3)
    return statistics.median(times), min(times)


def _status_bytes(key: str) -> Optional[int]:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def peak_extra_mib(fn: Callable[[], object]) -> Optional[float]:
    """Peak resident memory (GPU memory on CUDA) added while running ``fn`` (MiB), or None where unsupported."""
    if _device.type == "cuda":
        _sync()
        torch.cuda.reset_peak_memory_stats(_device)
        base = torch.cuda.memory_allocated(_device)
        fn()
        _sync()
        return max(0.0, (torch.cuda.max_memory_allocated(_device) - base) / 2 ** 20)
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current RSS
    except OSError:
        return None
    base = _status_bytes("VmRSS:")
    fn()
    hwm = _status_bytes("VmHWM:")
    if base is None or hwm is None:
        return None
    return max(0.0, (hwm - base) / 2 ** 20)


@dataclass
class Row:
    shape: str
    method: str
    fwd_ms: Optional[float] = None       # median
    fwdbwd_ms: Optional[float] = None    # median
    fwd_ratio: Optional[float] = None    # median / median of conv2d
    fwdbwd_ratio: Optional[float] = None
    fwd_min: Optional[float] = None      # fastest run (least disturbed by other processes)
    fwdbwd_min: Optional[float] = None
    fwd_ratio_min: Optional[float] = None
    fwdbwd_ratio_min: Optional[float] = None
    peak_mib: Optional[float] = None
    note: str = ""


@dataclass
class Report:
    rows: List[Row] = field(default_factory=list)
    network: List[Dict[str, object]] = field(default_factory=list)
    env: Dict[str, object] = field(default_factory=dict)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _methods(include_reference: bool, include_int8: bool, device: torch.device = torch.device("cpu")):
    """name -> (forward factory, has backward); the C++ (CPU-only) methods only for ``device`` cpu."""
    from shiftadd.kernels.cpu_backend import cpu_backend, unfold_conv2d
    from shiftadd.ops.adder import adder_conv2d

    def conv(x, w, s):
        return F.conv2d(x, w, None, s, 1)

    def fused(x, w, s):
        return cpu_backend.conv2d(x, w, s, 1, 1, 1, "full")

    def layer(x, w, s):  # what AdderConv2d runs: ops.adder.adder_conv2d, automatic backend
        return adder_conv2d(x, w, None, s, 1, 1, 1, "full")

    def unfold_with(backend: str):
        def run(x, w, s):
            return unfold_conv2d(x, w, s, 1, 1, 1, "full", backend)
        return run

    if device.type == "cpu":
        methods = [("conv2d (oneDNN)", conv, True), ("adder cpu fused", fused, True),
                   ("adder layer (auto)", layer, True), ("adder unfold+cpu mm", unfold_with("cpu"), True),
                   ("adder unfold+cdist", unfold_with("cdist"), False)]
    else:
        methods = [("conv2d (cuDNN)" if device.type == "cuda" else "conv2d", conv, True),
                   ("adder layer (auto)", layer, True), ("adder unfold+cdist", unfold_with("cdist"), False)]
    if include_reference:
        methods.append(("adder reference", unfold_with("reference"), True))
    return methods


# the unfold-based methods (reference, cdist, unfold + mm) are skipped above this many
# |x - w| terms per call (P*K*O) unless all_methods=True: they need minutes on VGG shapes
HEAVY_TERMS = 2e9


def _ratios(row: Row, conv: Optional[Row]) -> None:
    if conv is None:
        return
    div = lambda a, b: a / b if (a is not None and b) else None  # noqa: E731
    row.fwd_ratio, row.fwd_ratio_min = div(row.fwd_ms, conv.fwd_ms), div(row.fwd_min, conv.fwd_min)
    row.fwdbwd_ratio, row.fwdbwd_ratio_min = div(row.fwdbwd_ms, conv.fwdbwd_ms), div(row.fwdbwd_min, conv.fwdbwd_min)


def bench_shapes(shapes: Sequence[Tuple[str, int, int, int, int]], batch: int = 64, repeats: int = 5,
                 backward: bool = True, include_reference: bool = True, include_int8: bool = True,
                 reference_repeats: int = 3, all_methods: bool = False,
                 log: Callable[[str], None] = print, device: str = "cpu") -> List[Row]:
    """Time every method on every shape; ratios are relative to conv2d in the same run."""
    from shiftadd.kernels.integer import int_adder_conv2d

    dev = use_device(device)
    include_int8 = include_int8 and dev.type == "cpu"  # the int8 kernels are CPU kernels
    rows: List[Row] = []
    g = torch.Generator().manual_seed(0)
    for name, cin, cout, size, stride in shapes:
        x = torch.randn(batch, cin, size, size, generator=g).to(dev)
        w = (torch.randn(cout, cin, 3, 3, generator=g) * 0.1).to(dev)
        conv = None
        ho = (size - 1) // stride + 1
        heavy = batch * ho * ho * cin * 9 * cout > HEAVY_TERMS and not all_methods
        for method, fn, has_bwd in _methods(include_reference, include_int8, dev):
            if heavy and "unfold" in method or heavy and method == "adder reference":
                continue
            reps = reference_repeats if method == "adder reference" else repeats
            row = Row(name, method)
            row.fwd_ms, row.fwd_min = timings_ms(lambda: fn(x, w, stride), reps)
            if backward and has_bwd:
                xr = x.clone().requires_grad_(True)
                wr = w.clone().requires_grad_(True)
                dout = torch.randn_like(fn(x, w, stride))

                def step():
                    xr.grad = wr.grad = None
                    fn(xr, wr, stride).backward(dout)

                row.fwdbwd_ms, row.fwdbwd_min = timings_ms(step, reps)
                row.peak_mib = peak_extra_mib(step)
            else:
                row.peak_mib = peak_extra_mib(lambda: fn(x, w, stride))
                row.note = "forward only"
            if method.startswith("conv2d"):
                conv = row
            _ratios(row, conv)
            rows.append(row)
            log(_format_row(row))
        if heavy:
            log(f"{name:<20} (unfold-based methods skipped: {batch * ho * ho * cin * 9 * cout:.1e} terms)")
        if include_int8:
            qx = torch.randint(-127, 128, x.shape, generator=g, dtype=torch.int8)
            qw = torch.randint(-127, 128, w.shape, generator=g, dtype=torch.int8)
            for label, q in (("int8 adder (SAD)", qx),
                             ("int8 adder, NHWC in", qx.contiguous(memory_format=torch.channels_last))):
                row = Row(name, label, note="int8 in, int32 out; ratio vs fp32 conv2d")
                row.fwd_ms, row.fwd_min = timings_ms(lambda: int_adder_conv2d(q, qw, stride, 1), repeats)
                row.peak_mib = peak_extra_mib(lambda: int_adder_conv2d(q, qw, stride, 1))
                _ratios(row, conv)
                rows.append(row)
                log(_format_row(row))
    return rows


def _fmt(v: Optional[float], spec: str = "8.2f") -> str:
    return format(v, spec) if v is not None else " " * (int(spec.split(".")[0]) - 1) + "-"


def _format_row(r: Row) -> str:
    return (f"{r.shape:<18} {r.method:<21} {_fmt(r.fwd_ms, '8.2f')} {_fmt(r.fwd_min, '8.2f')} "
            f"{_fmt(r.fwd_ratio, '6.2f')} {_fmt(r.fwd_ratio_min, '6.2f')}  {_fmt(r.fwdbwd_ms, '8.2f')} "
            f"{_fmt(r.fwdbwd_min, '8.2f')} {_fmt(r.fwdbwd_ratio, '6.2f')} {_fmt(r.fwdbwd_ratio_min, '6.2f')} "
            f"{_fmt(r.peak_mib, '7.1f')}  {r.note}")


HEADER = (f"{'shape':<18} {'method':<21} {'fwd med':>8} {'fwd min':>8} {'x med':>6} {'x min':>6}  "
          f"{'f+b med':>8} {'f+b min':>8} {'x med':>6} {'x min':>6} {'peakMiB':>7}  note\n"
          f"{'':<40}(ms; 'x' = ratio to conv2d of the same shape in this run)")


def markdown_table(rows: Sequence[Row]) -> str:
    lines = ["| shape | method | fwd ms (median / min) | fwd / conv (median / min) | fwd+bwd ms (median / min) "
             "| fwd+bwd / conv (median / min) | peak extra MiB |",
             "|---|---|---:|---:|---:|---:|---:|"]
    f = lambda v, spec=".2f": "-" if v is None else format(v, spec)  # noqa: E731
    for r in rows:
        lines.append(f"| {r.shape} | {r.method} | {f(r.fwd_ms)} / {f(r.fwd_min)} | {f(r.fwd_ratio)} / {f(r.fwd_ratio_min)} | "
                     f"{f(r.fwdbwd_ms)} / {f(r.fwdbwd_min)} | {f(r.fwdbwd_ratio)} / {f(r.fwdbwd_ratio_min)} | "
                     f"{f(r.peak_mib, '.1f')} |")
    return "\n".join(lines)


def network_markdown(rows: Sequence[Dict[str, object]]) -> str:
    """The whole-network rows (``shiftadd.commands.bench.bench_network``) as a markdown table."""
    lines = ["| family | step ms (median / min) | images/s | throughput vs conv | forward ms | backward ms "
             "| optimizer ms |", "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        ph = r["phases_ms"]
        ratio = "-" if r["throughput_vs_conv"] is None else f"{r['throughput_vs_conv']:.2f}x"
        lines.append(f"| {r['family']} | {r['step_ms']:.1f} / {r['step_ms_min']:.1f} | {r['images_per_s']:.1f} | "
                     f"{ratio} | {ph['forward']:.1f} | {ph['backward']:.1f} | {ph['optimizer']:.1f} |")
    return "\n".join(lines)


def environment(threads: int, device: str = "cpu") -> Dict[str, object]:
    from shiftadd.kernels import backends

    info = backends()
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    return {"cpu": _cpu_model(), "logical_cpus": os.cpu_count(), "threads": threads, "torch": torch.__version__,
            "python": platform.python_version(), "in_use": info["in_use"], "load_average": load,
            "cpu_backend": info["backends"].get("cpu", {}).get("detail", ""), "device": str(device),
            "gpu": torch.cuda.get_device_name(device) if torch.device(device).type == "cuda" else None,
            "triton_backend": info["backends"].get("triton", {}).get("detail", "not registered")}


NetworkBench = Callable[[Callable[[str], None]], List[Dict[str, object]]]


def run(shapes: str = "resnet20", batch: int = 64, threads: int = 2, repeats: int = 5, backward: bool = True,
        reference: bool = True, int8: bool = True, network: Optional[NetworkBench] = None,
        json_path: Optional[str] = None, markdown: bool = False, all_methods: bool = False,
        clock: str = "wall", layers: bool = True, log: Callable[[str], None] = print,
        device: str = "cpu") -> Report:
    """The whole benchmark on ``device`` ("cpu", "cuda", "cuda:N"); returns the report (and writes JSON if asked).

    ``network(log)``, if given, times whole networks (``shiftadd bench --network`` passes a ResNet-20
    training step of every operator family); its rows go to ``report.network``. ``layers=False`` skips
    the per-layer timings.
    """
    global _clock
    if shapes not in SHAPE_SETS:
        raise ValueError(f"unknown shape set {shapes!r}; choose one of: {', '.join(SHAPE_SETS)}")
    if clock not in CLOCKS:
        raise ValueError(f"clock must be one of {sorted(CLOCKS)}, got {clock!r}")
    dev = use_device(device)
    _clock = CLOCKS[clock]
    torch.set_num_threads(threads)
    report = Report(env=environment(threads, device))
    report.env["clock"] = clock
    load = report.env["load_average"]
    log(f"CPU: {report.env['cpu']} ({report.env['logical_cpus']} logical CPUs), threads={threads}, "
        f"batch={batch}, torch {torch.__version__}, {repeats} timed runs after a warm-up, {clock} clock; load average "
        f"{'n/a' if load is None else ' '.join(f'{v:.2f}' for v in load)}")
    log(f"adder backend for CPU float32: {report.env['in_use']}; {report.env['cpu_backend']}")
    if dev.type == "cuda":
        log(f"device {dev}: {report.env['gpu']}; triton backend: {report.env['triton_backend']}")
    if layers:
        log(HEADER)
        report.rows = bench_shapes(SHAPE_SETS[shapes], batch, repeats, backward, reference, int8,
                                   all_methods=all_methods, log=log, device=device)
    if network is not None:
        log(f"whole-network training step (SGD + adaptive LR for adder families, random data, batch {batch}, "
            f"{clock} clock, families alternated):")
        report.network = network(log)
    if markdown:
        if report.rows:
            log("")
            log(markdown_table(report.rows))
        if report.network:
            log("")
            log(network_markdown(report.network))
    if json_path:
        with open(json_path, "w") as f:
            json.dump({"env": report.env, "rows": [asdict(r) for r in report.rows], "network": report.network}, f,
                      indent=1)
        log(f"wrote {json_path}")
    return report
