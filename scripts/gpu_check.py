"""The GPU check of issue 18 in one short run (< 8 min on an H200), called by scripts/gpu_check.sh.

1. the Triton and CUDA tests (tests/test_triton.py, the CUDA cases of tests/test_device.py);
2. adder conv forward and forward+backward vs nn.Conv2d (cuDNN) on ResNet-20 and VGG-small layer
   shapes at batch 128 (shiftadd.kernels.bench on CUDA);
3. ResNet-20 trained by the library's trainer (``shiftadd.train.train``, what ``shiftadd train`` runs)
   for conv / adder / shift-ps / shiftadd, ``amp`` off and bf16, batch 128 on the embedded CIFAR-10
   subset (2,000 images, 16 steps an epoch): epoch 1 is the warm-up (Triton/cuDNN compilation), the
   images/s of epochs 2-4 (48 steps) are reported; the conv run's GPU checkpoint is then evaluated on
   CPU and on the GPU (cross-device loading);
4. ResNet-20 training-step throughput for the same families on random batches (the data pipeline is
   not timed), with the epoch time it implies;
5. the issue's targets: adder f+b <= 3x cuDNN on ResNet-20 shapes, adder epoch >= 0.3x conv images/s;
6. (GPU only) a small sweep of the Triton tile sizes on two layer shapes, for tuning the defaults.

Stages run in that order while the time budget (``--budget-s``, default 420 s) lasts; a stage or a
training variant that would start after it is skipped and listed as such, so the run ends in time and
keeps what was measured. Writes gpu_check.json and gpu_check.md (and the test log) into --out. Without
a GPU, ``--cpu-dry-run`` runs the tests (Triton in its interpreter) and tiny CPU versions of 2-4 to
check the script before device time is spent.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict
from typing import Any, Dict, List, Optional

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from shiftadd.kernels import bench  # noqa: E402

from shiftadd.commands.bench import bench_network  # noqa: E402

CIFAR10_TRAIN_IMAGES = 50_000
NETWORK_VARIANTS = ("conv", "adder", "shift-ps", "shiftadd")
TARGET_FWDBWD_RATIO = 3.0  # adder f+b time / cuDNN conv f+b time, ResNet-20 shapes
TARGET_EPOCH_RATIO = 0.3  # adder images/s / conv images/s, ResNet-20 training
AMP_MODES = ("off", "bf16")


class Budget:
    """Seconds left of the run's time budget (from the script's start)."""

    def __init__(self, seconds: float) -> None:
        self.seconds, self.start = seconds, time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def left(self) -> float:
        return self.seconds - self.elapsed()


def log(msg: str = "") -> None:
    print(msg, flush=True)


def environment(device: str) -> Dict[str, Any]:
    env: Dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__,
                           "cuda": torch.version.cuda, "device": device}
    try:
        import triton

        env["triton"] = triton.__version__
    except ImportError:
        env["triton"] = None
    if device == "cuda":
        p = torch.cuda.get_device_properties(0)
        env.update(gpu=p.name, gpu_memory_gib=round(p.total_memory / 2 ** 30, 1), sms=p.multi_processor_count,
                   capability=f"{p.major}.{p.minor}", cudnn=torch.backends.cudnn.version())
    return env


def run_tests(out: str, device: str) -> Dict[str, Any]:
    """pytest on the Triton tests and the CUDA cases of the device tests; the log goes to out/tests.log."""
    cmd = [sys.executable, "-m", "pytest", "-rs", "-p", "no:cacheprovider", "tests/test_triton.py"]
    cmd += ["tests/test_device.py", "-k", "cuda"] if device == "cuda" else []
    t = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - t
    with open(os.path.join(out, "tests.log"), "w") as fh:
        fh.write(proc.stdout + proc.stderr)
    summary = (proc.stdout.strip().splitlines() or ["(no output)"])[-1]
    log(f"tests ({' '.join(cmd[3:])}): exit {proc.returncode} in {seconds:.0f} s: {summary}")
    return {"command": " ".join(cmd[1:]), "returncode": proc.returncode, "summary": summary, "seconds": seconds}


def layer_benchmarks(device: str, batch: int, repeats: int, tiny: bool) -> List[Dict[str, Any]]:
    sets = [("quick", bench.QUICK_SHAPES, True)] if tiny else \
        [("resnet20", bench.RESNET20_SHAPES, True), ("vgg", bench.VGG_SMALL_SHAPES, False)]
    rows = []
    log(bench.HEADER)
    for _, shapes, reference in sets:
        for r in bench.bench_shapes(shapes, batch=batch, repeats=repeats, include_reference=reference,
                                    include_int8=False, reference_repeats=2, log=log, device=device):
            rows.append(asdict(r))
    return rows


def trainer_benchmarks(device: str, batch: int, epochs: int, runs_dir: str, tiny: bool, budget: Budget,
                       variants=NETWORK_VARIANTS, amps=AMP_MODES) -> List[Dict[str, Any]]:
    """ResNet-20 trained by ``shiftadd.train.train`` on the embedded CIFAR-10 subset, per variant and amp.

    images/s are over epochs 2..``epochs`` (epoch 1 is the warm-up); evaluation is not timed. A variant
    that would start with the budget spent is recorded as skipped; one that fails records its error.
    """
    from shiftadd.data import load_dataset

    train_ds, test_ds = load_dataset("embedded", subset=32 if tiny else None, seed=0)
    data = (train_ds, test_ds.subset(torch.arange(0, len(test_ds), 50 if tiny else 5)))
    rows: List[Dict[str, Any]] = []
    try:
        _train_variants(rows, device, batch, epochs, runs_dir, tiny, budget, variants, amps, data)
    finally:  # the trainer makes cuDNN deterministic; the benchmarks after it want cudnn.benchmark back
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = True, False
    for r in rows:
        ref = next((c for c in rows if c["variant"] == "conv" and c["amp"] == r["amp"] and "images_per_s" in c), None)
        if "images_per_s" in r and ref is not None:
            r["vs_conv"] = r["images_per_s"] / ref["images_per_s"]
    return rows


def _train_variants(rows, device, batch, epochs, runs_dir, tiny, budget, variants, amps, data) -> None:
    from shiftadd.train import make_config, train

    train_ds = data[0]
    for amp in amps:
        for variant in variants:
            row: Dict[str, Any] = {"variant": variant, "amp": amp, "batch": batch, "epochs": epochs,
                                   "train_images": len(train_ds)}
            rows.append(row)
            if budget.left() <= 0:
                row["skipped"] = f"time budget spent ({budget.elapsed():.0f} s)"
                log(f"  {variant:<9} amp {amp:<4}: skipped, {row['skipped']}")
                continue
            cfg = make_config("cifar-fast", model="resnet20", op=variant, dataset="embedded", epochs=epochs,
                              batch_size=batch, test_batch_size=500, warmup_epochs=0, bn_recalibration=0,
                              progress=False, device=device, amp=amp, seed=0,
                              model_options={"width": 4} if tiny else {})
            run = os.path.join(runs_dir, f"{variant}-{amp}")
            if device == "cuda":
                torch.cuda.reset_peak_memory_stats()
            t = time.perf_counter()
            try:
                res = train(cfg, run, data=data, log=lambda _m: None)
            except Exception as exc:  # one failing variant must not lose the others' numbers
                row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                log(f"  {variant:<9} amp {amp:<4}: FAILED {row['error']}")
                continue
            timed = res.history[1:] or res.history
            seconds = sum(h["train_seconds"] for h in timed)
            row.update(run=run, wall_s=time.perf_counter() - t, warmup_epoch_s=res.history[0]["train_seconds"],
                       images_per_s=len(train_ds) * len(timed) / max(seconds, 1e-9),
                       timed_steps=len(timed) * -(-len(train_ds) // batch),
                       final_train_loss=res.history[-1]["train_loss"], test_acc=res.results["final"]["test_acc"],
                       loss_finite=all(math.isfinite(h["train_loss"]) for h in res.history),
                       peak_mem_mib=(torch.cuda.max_memory_allocated() / 2 ** 20 if device == "cuda" else None))
            log(f"  {variant:<9} amp {amp:<4}: {row['images_per_s']:8.0f} images/s (epochs 2-{epochs}), warm-up "
                f"epoch {row['warmup_epoch_s']:.1f} s, final train loss {row['final_train_loss']:.3f}"
                + (f", peak {row['peak_mem_mib']:.0f} MiB" if row["peak_mem_mib"] is not None else ""))


def cross_device_check(runs: List[Dict[str, Any]], device: str) -> Dict[str, Any]:
    """The first trained run's checkpoint (written on ``device``) evaluated on CPU and on ``device``."""
    from shiftadd.train import evaluate_checkpoint

    done = [r for r in runs if r.get("run")]
    if not done:
        return {"skipped": "no trained run"}
    run = done[0]["run"]
    out: Dict[str, Any] = {"run": run}
    for where in dict.fromkeys(["cpu", device]):
        res = evaluate_checkpoint(run, device=where, test_subset=200)
        out[where] = {"acc": res["acc"], "loss": res["loss"], "n": res["n"]}
        log(f"  {os.path.basename(run)} checkpoint evaluated on {where}: accuracy {100 * res['acc']:.2f}% "
            f"loss {res['loss']:.4f} ({res['n']} images)")
    if device != "cpu":
        out["agree"] = abs(out["cpu"]["acc"] - out[device]["acc"]) <= 1.0 / out["cpu"]["n"] + 1e-12
    return out


def network_benchmarks(device: str, batch: int, steps: int) -> List[Dict[str, Any]]:
    rows = bench_network("resnet20", families=NETWORK_VARIANTS, batch=batch, steps=steps, log=log, device=device)
    for r in rows:
        r["epoch_s_estimate"] = CIFAR10_TRAIN_IMAGES / r["images_per_s"]
    return rows


# (label, P, O, K) of the adder primitive at batch 128: ResNet-20's first stage, a VGG-small middle layer
SWEEP_SHAPES = [("r20 16->16 @32", 128 * 32 * 32, 16, 16 * 9), ("vgg 256->256 @16", 128 * 16 * 16, 256, 256 * 9)]
SWEEP_CONFIGS = [(1024, 8, 32), (512, 8, 32), (2048, 8, 64), (1024, 16, 32), (4096, 4, 64), (256, 16, 16)]


def tile_sweep(device: str = "cuda", shapes=SWEEP_SHAPES, configs=SWEEP_CONFIGS, repeats: int = 10
               ) -> List[Dict[str, Any]]:
    """Forward and HardTanh input-gradient kernel times (median ms) per (tile, step, max side)."""
    import triton

    from shiftadd.kernels import triton_adder as T

    bench.use_device(device)
    rows = []
    for label, P, O, K in shapes:
        g = torch.Generator().manual_seed(0)
        X, W, dY = (torch.randn(1, *s, generator=g).to(device) for s in ((P, K), (O, K), (P, O)))
        Y, dX = torch.empty(1, P, O, device=device), torch.empty(1, P, K, device=device)
        for tile, step, side in configs:
            bp, bo = T.tile_shape(P, O, tile, side)
            bp2, bk = T.tile_shape(P, K, tile, side)
            fwd, _ = bench.timings_ms(lambda: T._fwd_kernel[(triton.cdiv(P, bp), triton.cdiv(O, bo), 1)](
                X, W, Y, P, O, K, BLOCK_P=bp, BLOCK_O=bo, BLOCK_K=step), repeats)
            gin, _ = bench.timings_ms(lambda: T._gin_kernel[(triton.cdiv(P, bp2), triton.cdiv(K, bk), 1)](
                X, W, dY, dX, P, O, K, SIGN=False, BLOCK_P=bp2, BLOCK_K=bk, BLOCK_O=step), repeats)
            ref = T.triton_backend.forward(X, W)
            if not torch.allclose(Y, ref, rtol=1e-5, atol=1e-3):
                raise AssertionError(f"tile sweep: forward with tile {tile}, step {step}, side {side} is wrong")
            row = {"shape": label, "tile": tile, "step": step, "max_side": side, "fwd_ms": fwd, "grad_input_ms": gin,
                   "fwd_tera_terms_per_s": P * O * K / fwd / 1e9}
            rows.append(row)
            log(f"  {label:<18} tile {tile:>4} step {step:>2} side {side:>2}: forward {fwd:7.3f} ms "
                f"({row['fwd_tera_terms_per_s']:.2f} T |x-w|/s), grad_input {gin:7.3f} ms")
    return rows


def targets(layers: List[Dict[str, Any]], network: List[Dict[str, Any]],
            trained: Optional[List[Dict[str, Any]]] = None) -> Dict[str, Any]:
    """The issue's two targets, with by how much each is met or missed (the epoch ratio from the trainer's
    amp-off runs when they exist, else from the random-batch training steps)."""
    r20 = [r for r in layers if r["shape"].startswith("r20") and r["method"] == "adder layer (auto)"]
    ratios = {r["shape"]: r["fwdbwd_ratio"] for r in r20 if r["fwdbwd_ratio"] is not None}
    ips = {r["variant"]: r["images_per_s"] for r in network}
    from_trainer = {r["variant"]: r["images_per_s"] for r in trained or [] if r["amp"] == "off" and "images_per_s" in r}
    source = "random-batch training steps"
    if "conv" in from_trainer and "adder" in from_trainer:
        ips, source = from_trainer, "shiftadd.train on the embedded CIFAR-10 subset, amp off"
    out: Dict[str, Any] = {}
    if ratios:
        worst = max(ratios.values())
        out["resnet20_fwdbwd_vs_cudnn"] = {"per_shape": ratios, "worst": worst, "target": TARGET_FWDBWD_RATIO,
                                           "met": worst <= TARGET_FWDBWD_RATIO}
    if "conv" in ips and "adder" in ips:
        ratio = ips["adder"] / ips["conv"]
        out["resnet20_epoch_adder_vs_conv"] = {"ratio": ratio, "target": TARGET_EPOCH_RATIO,
                                               "met": ratio >= TARGET_EPOCH_RATIO, "source": source}
    return out


def markdown(report: Dict[str, Any]) -> str:
    env = report["env"]
    lines = [f"# GPU check ({env.get('gpu') or 'no GPU: CPU dry run'})", "",
             f"torch {env['torch']} (CUDA {env['cuda']}), Triton {env['triton']}, Python {env['python']}; "
             f"command: `{report['command']}`", "",
             f"tests: `{report['tests']['command']}` -> exit {report['tests']['returncode']}: "
             f"{report['tests']['summary']}", ""]
    if report["layers"]:
        lines += [f"## Layers, batch {report['batch']} (ms; ratio = / conv2d of the same shape)", "",
                  bench.markdown_table([bench.Row(**r) for r in report["layers"]]), ""]
    if report.get("tile_sweep"):
        lines += ["## Triton tile sweep (ms; default tile 1024, step 8, side 32)", "",
                  "| shape | tile | step | max side | forward | grad_input | T terms/s (fwd) |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        lines += [f"| {r['shape']} | {r['tile']} | {r['step']} | {r['max_side']} | {r['fwd_ms']:.3f} | "
                  f"{r['grad_input_ms']:.3f} | {r['fwd_tera_terms_per_s']:.2f} |" for r in report["tile_sweep"]]
        lines.append("")
    if report.get("trained"):
        lines += [f"## ResNet-20 trained by shiftadd.train (embedded CIFAR-10 subset, batch {report['batch']}; "
                  "epoch 1 warm-up, images/s over the later epochs)", "",
                  "| variant | amp | images/s | vs conv (same amp) | warm-up epoch s | final train loss | "
                  "peak MiB | note |", "|---|---|---:|---:|---:|---:|---:|---|"]
        for r in report["trained"]:
            if "images_per_s" in r:
                mem = "-" if r.get("peak_mem_mib") is None else f"{r['peak_mem_mib']:.0f}"
                vs = f"{r['vs_conv']:.2f}" if "vs_conv" in r else "-"
                lines.append(f"| {r['variant']} | {r['amp']} | {r['images_per_s']:.0f} | {vs} | "
                             f"{r['warmup_epoch_s']:.1f} | {r['final_train_loss']:.3f} | {mem} | |")
            else:
                lines.append(f"| {r['variant']} | {r['amp']} | - | - | - | - | - | "
                             f"{r.get('skipped') or r.get('error')} |")
        lines.append("")
    if report.get("cross_device"):
        cd = report["cross_device"]
        lines += ["## A GPU-written checkpoint evaluated on each device", "",
                  "; ".join(f"{k}: accuracy {100 * v['acc']:.2f}% loss {v['loss']:.4f} ({v['n']} images)"
                            for k, v in cd.items() if isinstance(v, dict)) or str(cd.get("skipped")), ""]
    if report.get("skipped_stages"):
        lines += ["skipped (time budget): " + ", ".join(report["skipped_stages"]), ""]
    if report["network"]:
        lines += [f"## ResNet-20 training step, batch {report['batch']}", "",
                  "| variant | step ms (median / min) | images/s | vs conv | epoch s (50k images, estimate) |",
                  "|---|---:|---:|---:|---:|"]
        for r in report["network"]:
            vs = r.get("throughput_vs_conv")
            lines.append(f"| {r['variant']} | {r['step_ms']:.1f} / {r['step_ms_min']:.1f} | {r['images_per_s']:.0f} | "
                         f"{'-' if vs is None else f'{vs:.2f}'} | {r['epoch_s_estimate']:.1f} |")
        lines.append("")
    for name, t in report["targets"].items():
        value = t.get("worst", t.get("ratio"))
        lines.append(f"- target {name}: {value:.2f} (target {t['target']}) -> {'met' if t['met'] else 'NOT met'}")
    return "\n".join(lines) + "\n"


def main(argv: List[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=os.environ.get("OUT") or "/tmp/shiftadd-gpu-check")
    p.add_argument("--cpu-dry-run", "--tiny", dest="tiny", action="store_true",
                   help="tiny sizes on the CPU: checks the whole script before device time is spent")
    p.add_argument("--batch", type=int, default=None, help="batch size (default 128; 2 with --tiny)")
    p.add_argument("--repeats", type=int, default=None, help="timed runs per layer number (default 5)")
    p.add_argument("--steps", type=int, default=None, help="timed training steps per variant (default 20)")
    p.add_argument("--train-epochs", type=int, default=None,
                   help="epochs of each trainer run (default 4; 2 with --cpu-dry-run); epoch 1 is not timed")
    p.add_argument("--budget-s", type=float, default=420.0,
                   help="no stage or training variant starts after this many seconds (default 420)")
    p.add_argument("--skip-tests", action="store_true")
    args = p.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    batch = args.batch or (2 if args.tiny else 128)
    repeats = args.repeats or (1 if args.tiny else 5)
    steps = args.steps or (1 if args.tiny else 20)
    budget = Budget(args.budget_s)
    runs_dir = tempfile.mkdtemp(prefix="gpu-check-runs-")  # run folders (checkpoints) stay out of --out
    train_epochs = args.train_epochs or (2 if args.tiny else 4)
    env = environment(device)
    log(json.dumps(env))
    if device == "cpu":
        log("no CUDA GPU here: the GPU parts are skipped" + ("" if args.tiny else
            " (pass --cpu-dry-run for a CPU dry run of the benchmarks)"))
    report: Dict[str, Any] = {"env": env, "command": " ".join(["scripts/gpu_check.sh", *argv]), "batch": batch,
                              "tests": {"command": "-", "returncode": None, "summary": "skipped"},
                              "layers": [], "trained": [], "network": [], "targets": {}, "skipped_stages": []}
    if not args.skip_tests:
        report["tests"] = run_tests(args.out, device)
    def stage(key: str, title: str, fn) -> None:
        log(f"\n{title}:")
        if budget.left() <= 0:
            log(f"  skipped: the time budget ({args.budget_s:.0f} s) is spent")
            report["skipped_stages"].append(key)
            return
        try:
            report[key] = fn()
        except Exception:  # one failed stage must not lose the others' numbers
            err = traceback.format_exc()
            log(err)
            report.setdefault("errors", {})[key] = err

    if device == "cuda" or args.tiny:
        torch.backends.cudnn.benchmark = True
        stage("layers", f"layer benchmarks on {device}, batch {batch}",
              lambda: layer_benchmarks(device, batch, repeats, args.tiny))
        stage("trained", f"ResNet-20 trained by shiftadd.train on {device}, batch {batch}, {train_epochs} epochs, "
                         f"amp {' and '.join(AMP_MODES)}",
              lambda: trainer_benchmarks(device, batch, train_epochs, runs_dir, args.tiny, budget))
        stage("cross_device", "cross-device checkpoint loading",
              lambda: cross_device_check(report["trained"], device))
        stage("network", f"ResNet-20 training steps on {device}, batch {batch}, {steps} timed steps",
              lambda: network_benchmarks(device, batch, steps))
        if device == "cuda":  # a CPU dry run measures nothing worth comparing
            report["targets"] = targets(report["layers"], report["network"], report["trained"])
            report["backends"] = __import__("shiftadd").backends()
            if report["env"]["triton"]:
                stage("tile_sweep", "Triton tile sweep", tile_sweep)
    report["seconds"] = budget.elapsed()
    with open(os.path.join(args.out, "gpu_check.json"), "w") as fh:
        json.dump(report, fh, indent=1, default=str)
    shutil.rmtree(runs_dir, ignore_errors=True)
    md = markdown(report)
    with open(os.path.join(args.out, "gpu_check.md"), "w") as fh:
        fh.write(md)
    log("\n" + md)
    log(f"wrote {args.out}/gpu_check.json, gpu_check.md, tests.log in {report['seconds']:.0f} s")
    return 0 if report["tests"]["returncode"] in (0, None) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
