"""Adder lightweight convolution vs the multiplicative one: forward + backward, same shapes, same run.

    python benchmarks/bench_lightweight.py                       # Transformer-sized shapes, 1 thread
    python benchmarks/bench_lightweight.py --threads 2 --json bench_lightweight.json

Each shape is (batch B, time T, channels C, heads H, kernel K), input (B, C, T), both causal.
Timing: median over ``--repeats`` of the mean of ``--iters`` forward+backward calls (input and
weight gradients), after warm-up. Target (issue 14): adder / multiplicative <= 2.5x.
Results: docs/translation.md.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch

from shiftadd.ops.adder import select_backend
from shiftadd.ops.lightweight import adder_lightweight_conv1d, lightweight_conv1d

SHAPES = [  # B, T, C, H, K  (about 4k tokens per batch; kernels of Wu et al.'s layers)
    (128, 32, 256, 4, 3),
    (128, 32, 256, 4, 7),
    (128, 32, 256, 4, 15),
    (128, 32, 512, 8, 7),
    (128, 32, 512, 8, 31),
]


def _time(fn, x, w, iters: int, repeats: int) -> float:
    for _ in range(2):
        fn(x, w).sum().backward()
    runs = []
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(iters):
            fn(x, w).sum().backward()
        runs.append((time.perf_counter() - t) / iters)
    return statistics.median(runs)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", default=None, help="also write the results to this file")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rows = []
    print(f"adder backend: {select_backend(torch.zeros(1)).name}, threads: {args.threads}")
    print(f"{'B':>4} {'T':>4} {'C':>4} {'H':>3} {'K':>3} {'mult ms':>9} {'adder ms':>9} {'ratio':>6}")
    for B, T, C, H, K in SHAPES:
        x = torch.randn(B, C, T, requires_grad=True)
        w = torch.randn(H, K, requires_grad=True)
        mult = _time(lambda a, b: lightweight_conv1d(a, b, causal=True), x, w, args.iters, args.repeats)
        adder = _time(lambda a, b: adder_lightweight_conv1d(a, b, causal=True), x, w, args.iters, args.repeats)
        rows.append({"B": B, "T": T, "C": C, "H": H, "K": K, "mult_ms": mult * 1e3, "adder_ms": adder * 1e3,
                     "ratio": adder / mult})
        print(f"{B:>4} {T:>4} {C:>4} {H:>3} {K:>3} {mult * 1e3:>9.2f} {adder * 1e3:>9.2f} {adder / mult:>6.2f}")
    worst = max(r["ratio"] for r in rows)
    print(f"worst ratio {worst:.2f} (target <= 2.5)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"threads": args.threads, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
