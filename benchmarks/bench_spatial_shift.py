"""Spatial shift operators against a 3x3 depthwise convolution of the same shape: time and memory.

For each shape (the inner maps of ShiftResNet-20 at expansion 9 by default) it times the forward
pass and forward+backward of

* ``dwconv3x3``     nn.Conv2d(C, C, 3, padding=1, groups=C) -- what a shift replaces
* ``shift``         grouped 3x3 shift (Wu et al.), slice copies
* ``shift-sorted``  the same shift through the general path (channels sorted by offset first)
* ``sparse-90``     sparse shift layer with 90 % of the channels unshifted (forward: integer shift)
* ``sparse-rand``   sparse shift layer with random shifts in [-1.5, 1.5] (most channels shifted)
* ``active``        active shift (bilinear interpolation)
* ``address``       AddressNet address shift: one copy into the buffer, 4 direction groups as views
* ``chshift`` / ``chshuffle``  channel shift against channel shuffle (4 groups)

and reports the memory each keeps for the backward pass (bytes of the tensors autograd saves,
counted with saved-tensor hooks; on CUDA also the peak allocation of one forward+backward).

    python benchmarks/bench_spatial_shift.py                # CPU, 1 thread, batch 32
    python benchmarks/bench_spatial_shift.py --threads 2 --batch 64 --out bench.md
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shiftadd.nn.spatial_shift import ActiveShift2d, SparseShift2d, SpatialShift2d  # noqa: E402
from shiftadd.ops import spatial_shift as S  # noqa: E402

SHAPES = ((144, 32, 32), (288, 16, 16), (576, 8, 8))  # ShiftResNet-20, e = 9: (C, H, W) of each stage


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _time(fn: Callable[[], object], device: torch.device, repeat: int, min_time: float = 0.2) -> float:
    """Median seconds of ``fn`` over ``repeat`` rounds (each round runs it enough times to last ``min_time``)."""
    fn()
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    once = max(time.perf_counter() - t0, 1e-6)
    inner = max(1, int(min_time / once))
    rounds = []
    for _ in range(repeat):
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        _sync(device)
        rounds.append((time.perf_counter() - t0) / inner)
    return statistics.median(rounds)


def _saved_bytes(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> int:
    """Bytes of the distinct storages autograd keeps for backward (the input included when it is kept)."""
    seen: Dict[int, int] = {}

    def pack(t: torch.Tensor):
        st = t.untyped_storage()
        seen[st.data_ptr()] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(x)
    return sum(seen.values())


def _peak_cuda(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> int:
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    y = fn(x)
    y = torch.cat(y, 1) if isinstance(y, list) else y
    y.backward(torch.ones_like(y))
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base


def candidates(C: int, device: torch.device) -> List[Tuple[str, Callable[[torch.Tensor], torch.Tensor], int]]:
    """(name, function of x, number of parameters)."""
    torch.manual_seed(0)
    dw = nn.Conv2d(C, C, 3, padding=1, groups=C, bias=False).to(device)
    shift = SpatialShift2d(C).to(device)
    offs = shift._offs

    def shift_sorted(x):
        old = S.MAX_SLICE_RUNS
        S.MAX_SLICE_RUNS = 0
        try:
            return S._ShiftFn.apply(x, offs, (1, 1), 1, (2, 3))
        finally:
            S.MAX_SLICE_RUNS = old

    sparse90 = SparseShift2d(C, init_range=0.0).to(device)
    with torch.no_grad():
        k = C // 10
        sparse90.shift[:k] = torch.randint(-1, 2, (k, 2), device=device).float()
    sparse_rand = SparseShift2d(C, init_range=1.5).to(device)
    active = ActiveShift2d(C, init_range=1.0).to(device)

    def address(x):
        return S.address_shift_groups(x, ("left", "up", "right", "down"))

    return [
        ("dwconv3x3", dw, sum(p.numel() for p in dw.parameters())),
        ("shift", shift, 0),
        ("shift-sorted", shift_sorted, 0),
        ("sparse-90", sparse90, 2 * C),
        ("sparse-rand", sparse_rand, 2 * C),
        ("active", active, 2 * C),
        ("address", address, 0),
        ("chshift", lambda x: S.channel_shift(x, C // 8), 0),
        ("chshuffle", lambda x: S.channel_shuffle(x, 4), 0),
    ]


def run(batch: int, shapes, device: torch.device, repeat: int) -> List[Dict[str, object]]:
    rows = []
    for C, H, W in shapes:
        x = torch.randn(batch, C, H, W, device=device)
        xg = x.clone().requires_grad_(True)
        for name, fn, params in candidates(C, device):
            def fwd():
                with torch.no_grad():
                    return fn(x)

            def fwd_bwd():
                y = fn(xg)
                y = torch.cat(y, 1) if isinstance(y, list) else y
                y.backward(torch.ones_like(y))
                xg.grad = None

            if isinstance(fn, nn.Module):
                fn.zero_grad(set_to_none=True)
            row = {"shape": f"{batch}x{C}x{H}x{W}", "op": name, "params": params,
                   "fwd_ms": 1e3 * _time(fwd, device, repeat),
                   "fwdbwd_ms": 1e3 * _time(fwd_bwd, device, repeat),
                   "saved_MiB": _saved_bytes(fn, xg) / 2 ** 20,
                   "out_MiB": x.numel() * x.element_size() / 2 ** 20}
            if device.type == "cuda":
                row["peak_MiB"] = _peak_cuda(fn, xg) / 2 ** 20
            rows.append(row)
            print(f"  {row['shape']:>16} {name:>12}: fwd {row['fwd_ms']:8.3f} ms, fwd+bwd {row['fwdbwd_ms']:8.3f} ms",
                  file=sys.stderr)
    return rows


def to_markdown(rows: List[Dict[str, object]], header: str) -> str:
    cuda = "peak_MiB" in rows[0]
    cols = ["shape", "op", "params", "fwd ms", "x dwconv", "fwd+bwd ms", "x dwconv", "saved for bwd MiB"]
    if cuda:
        cols.append("peak fwd+bwd MiB")
    lines = [header, "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    ref = {r["shape"]: r for r in rows if r["op"] == "dwconv3x3"}
    for r in rows:
        b = ref[r["shape"]]
        cells = [r["shape"], r["op"], str(r["params"]), f"{r['fwd_ms']:.3f}", f"{r['fwd_ms'] / b['fwd_ms']:.2f}",
                 f"{r['fwdbwd_ms']:.3f}", f"{r['fwdbwd_ms'] / b['fwdbwd_ms']:.2f}", f"{r['saved_MiB']:.2f}"]
        if cuda:
            cells.append(f"{r['peak_MiB']:.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--threads", type=int, default=1, help="CPU threads (default 1)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--shapes", default=None, help="C,H,W;C,H,W;... (default: ShiftResNet-20 e=9 stages)")
    p.add_argument("--out", type=Path, default=None, help="also write the markdown table here")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    shapes = SHAPES if a.shapes is None else [tuple(int(v) for v in s.split(",")) for s in a.shapes.split(";")]
    rows = run(a.batch, shapes, device, a.repeat)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {a.threads} thread(s)"
    md = to_markdown(rows, f"Spatial shift vs 3x3 depthwise conv, float32, {where}, torch {torch.__version__}, "
                           f"median of {a.repeat} rounds")
    print(md)
    if a.out:
        a.out.write_text(md + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
