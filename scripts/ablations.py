"""ShiftAddNet / AdderNet ablations on CIFAR-10 at a CPU budget (docs/ablations.md).

Every run is an ordinary ``shiftadd train`` command (so each has its checkpoint, metrics.jsonl and
curves.png under ``runs/ablations/<name>``); this script only lists them, runs them N at a time
(one thread each), resumes unfinished ones, and keeps each run's log in ``docs/ablations/logs``.

    python scripts/ablations.py run --data ../shared/data/cifar10-jpeg.tar.gz --jobs 2 [--only base,fix,prune]
    python scripts/ablations.py list

The analyses (energy, shared-scale quantization, histograms, tables, plots) are in
``scripts/ablations_report.py``.

Budget (the same for every variant): ResNet-20, a class-balanced 8,000-image subset of the CIFAR-10
training set, 5 epochs, batch 128 (315 steps), recipe shiftaddnet (SGD 0.9, lr 0.1, x0.1 at 50 % and
75 % of the epochs, weight decay 1e-4), evaluated on a class-balanced 2,000-image subset of the test
set. Pruning: the trained base models pruned and fine-tuned 3 epochs at lr 0.01 (x0.1 halfway).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, List, Tuple

ROOT = Path(__file__).resolve().parents[1]
RUNS = ROOT / "runs" / "ablations"
LOGS = ROOT / "docs" / "ablations" / "logs"

BUDGET = ["--model", "resnet20", "--dataset", "cifar10", "--subset", "8000", "--test-subset", "2000",
          "--epochs", "5", "--batch-size", "128", "--recipe", "shiftaddnet", "--seed", "0", "--threads", "1",
          "--no-progress"]
FINETUNE = ["--epochs", "3", "--lr", "0.01", "--milestones", "0.5", "--threads", "1", "--no-progress"]

BASE_OPS = ("conv", "adder", "shift-ps", "shiftadd", "shiftadd-fixed")
FIX_OPS = ("adder", "shiftadd", "shiftadd-fixed")
FIX_FORMATS = ("fix32", "fix16", "fix8")
PRUNE_OPS = ("adder", "shiftadd")
PRUNE_RATIOS = (0.3, 0.5, 0.7, 0.9)


def jobs(data: str) -> Dict[str, Tuple[str, List[str]]]:
    """``{run name: (group, shiftadd train arguments)}`` in the order they should run."""
    out: Dict[str, Tuple[str, List[str]]] = {}
    for op in BASE_OPS:  # 1. operator families at full precision
        out[f"base-{op}"] = ("base", BUDGET + ["--data-dir", data, "--op", op])
    # the learnable shift barely moves at the recipe's lr (see docs/ablations.md): one run with a 100x shift lr
    for op in ("shift-ps", "shiftadd"):
        out[f"base-{op}-shiftlr10"] = ("base", BUDGET + ["--data-dir", data, "--op", op, "--shift-lr", "10"])
    for op in PRUNE_OPS:  # 3. pruning (adder-layer weights) + fine-tuning, from the trained base models
        for r in PRUNE_RATIOS:
            out[f"prune{int(100 * r)}-{op}"] = ("prune", ["--init-from", str(RUNS / f"base-{op}"), "--prune", str(r),
                                                          "--prune-types", "adder", "--data-dir", data] + FINETUNE)
    for fmt in FIX_FORMATS:  # 2. fixed-point training: FIXn forward, 8-bit backward
        for op in FIX_OPS:
            out[f"{fmt}-{op}"] = ("fix", BUDGET + ["--data-dir", data, "--op", op, "--quant", fmt])
    return out


def finished(run: Path) -> bool:
    """True when the run's checkpoint says all its epochs are done."""
    import json

    meta = run / "checkpoint.json"
    if not meta.is_file():
        return False
    m = json.loads(meta.read_text())
    return m["epoch"] >= m["config"]["epochs"]


def run_one(name: str, args: List[str]) -> Tuple[str, int, float]:
    run = RUNS / name
    LOGS.mkdir(parents=True, exist_ok=True)
    if finished(run):
        return name, 0, 0.0
    if (run / "checkpoint.json").is_file():
        argv = ["--resume", str(run), "--threads", "1", "--no-progress"]
    else:
        argv = args + ["--out", str(run)]
    cmd = [sys.executable, "-m", "shiftadd.cli", "train"] + argv
    t0 = time.time()
    with open(LOGS / f"{name}.log", "a", encoding="utf-8") as log:
        log.write("$ shiftadd train " + " ".join(argv) + "\n")
        log.flush()
        env = dict(os.environ, OMP_NUM_THREADS="1")
        rc = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
    return name, rc, time.time() - t0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("action", choices=("run", "list"))
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"))
    p.add_argument("--jobs", type=int, default=2, help="runs in parallel (one thread each)")
    p.add_argument("--only", default="base,prune,fix", help="comma-separated groups: base, prune, fix")
    a = p.parse_args()
    groups = set(a.only.split(","))
    todo = [(n, args) for n, (g, args) in jobs(a.data).items() if g in groups]
    if a.action == "list":
        for n, args in todo:
            print(f"{n:<24} {'done' if finished(RUNS / n) else 'todo'}  shiftadd train {' '.join(args)}")
        return 0
    RUNS.mkdir(parents=True, exist_ok=True)
    # pruning runs start from the base models: run groups in dependency order
    order = ["base", "prune", "fix"]
    failed = 0
    for g in order:
        batch = [(n, args) for n, args in todo if jobs(a.data)[n][0] == g]
        with ThreadPoolExecutor(max_workers=a.jobs) as pool:
            for name, rc, secs in pool.map(lambda t: run_one(*t), batch):
                print(f"{name:<24} rc={rc} {secs:7.0f} s", flush=True)
                failed += rc != 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
