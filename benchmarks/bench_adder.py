"""Adder kernels vs nn.Conv2d on ResNet-20 / VGG-small layer shapes (same as ``shiftadd bench``).

    python benchmarks/bench_adder.py                      # ResNet-20 shapes, batch 64, 2 threads
    python benchmarks/bench_adder.py --shapes all --network --markdown --json bench.json

See docs/kernels.md for recorded results.
"""
from __future__ import annotations

import sys

from shiftadd.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
