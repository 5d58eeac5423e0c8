"""The GPU check of issue 18 in one short run (< 8 min on an H200), called by scripts/gpu_check.sh.

1. the Triton and CUDA tests (tests/test_triton.py, the CUDA cases of tests/test_device.py);
2. adder conv forward and forward+backward vs nn.Conv2d (cuDNN) on ResNet-20 and VGG-small layer
   shapes at batch 128 (shiftadd.kernels.bench on CUDA);
3. ResNet-20 training-step throughput for conv / adder / shift-ps / shiftadd at batch 128 on
   CIFAR-10-sized random batches (the data pipeline is not timed), with the epoch time it implies;
4. the issue's targets: adder f+b <= 3x cuDNN on ResNet-20 shapes, adder epoch >= 0.3x conv images/s;
5. (GPU only) a small sweep of the Triton tile sizes on two layer shapes, for tuning the defaults.

Writes gpu_check.json and gpu_check.md (and the test log) into --out. Without a GPU it runs the
tests (Triton in its interpreter) and a tiny CPU version of 2-3 (``--tiny``) to check the script.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
import traceback
from dataclasses import asdict
from typing import Any, Dict, List

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from shiftadd.kernels import bench  # noqa: E402

from shiftadd.commands.bench import bench_network  # noqa: E402

CIFAR10_TRAIN_IMAGES = 50_000
NETWORK_VARIANTS = ("conv", "adder", "shift-ps", "shiftadd")
TARGET_FWDBWD_RATIO = 3.0  # adder f+b time / cuDNN conv f+b time, ResNet-20 shapes
TARGET_EPOCH_RATIO = 0.3  # adder images/s / conv images/s, ResNet-20 training


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


def targets(layers: List[Dict[str, Any]], network: List[Dict[str, Any]]) -> Dict[str, Any]:
    """The issue's two targets, with by how much each is met or missed."""
    r20 = [r for r in layers if r["shape"].startswith("r20") and r["method"] == "adder layer (auto)"]
    ratios = {r["shape"]: r["fwdbwd_ratio"] for r in r20 if r["fwdbwd_ratio"] is not None}
    ips = {r["variant"]: r["images_per_s"] for r in network}
    out: Dict[str, Any] = {}
    if ratios:
        worst = max(ratios.values())
        out["resnet20_fwdbwd_vs_cudnn"] = {"per_shape": ratios, "worst": worst, "target": TARGET_FWDBWD_RATIO,
                                           "met": worst <= TARGET_FWDBWD_RATIO}
    if "conv" in ips and "adder" in ips:
        ratio = ips["adder"] / ips["conv"]
        out["resnet20_epoch_adder_vs_conv"] = {"ratio": ratio, "target": TARGET_EPOCH_RATIO,
                                               "met": ratio >= TARGET_EPOCH_RATIO}
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
    if report["network"]:
        lines += [f"## ResNet-20 training step, batch {report['batch']}", "",
                  "| variant | step ms (median / min) | images/s | epoch s (50k images, estimate) | adder backend |",
                  "|---|---:|---:|---:|---|"]
        for r in report["network"]:
            lines.append(f"| {r['variant']} | {r['step_ms']:.1f} / {r['step_ms_min']:.1f} | {r['images_per_s']:.0f} | "
                         f"{r['epoch_s_estimate']:.1f} | {r['adder_backend']} |")
        lines.append("")
    for name, t in report["targets"].items():
        value = t.get("worst", t.get("ratio"))
        lines.append(f"- target {name}: {value:.2f} (target {t['target']}) -> {'met' if t['met'] else 'NOT met'}")
    return "\n".join(lines) + "\n"


def main(argv: List[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=os.environ.get("OUT") or "/tmp/shiftadd-gpu-check")
    p.add_argument("--tiny", action="store_true", help="tiny sizes (a CPU dry run of the whole script)")
    p.add_argument("--batch", type=int, default=None, help="batch size (default 128; 2 with --tiny)")
    p.add_argument("--repeats", type=int, default=None, help="timed runs per layer number (default 5)")
    p.add_argument("--steps", type=int, default=None, help="timed training steps per variant (default 20)")
    p.add_argument("--skip-tests", action="store_true")
    args = p.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    batch = args.batch or (2 if args.tiny else 128)
    repeats = args.repeats or (1 if args.tiny else 5)
    steps = args.steps or (1 if args.tiny else 20)
    env = environment(device)
    log(json.dumps(env))
    if device == "cpu":
        log("no CUDA GPU here: the GPU parts are skipped" + ("" if args.tiny else
            " (pass --tiny for a CPU dry run of the benchmarks)"))
    report: Dict[str, Any] = {"env": env, "command": " ".join(["scripts/gpu_check.sh", *argv]), "batch": batch,
                              "tests": {"command": "-", "returncode": None, "summary": "skipped"},
                              "layers": [], "network": [], "targets": {}}
    if not args.skip_tests:
        report["tests"] = run_tests(args.out, device)
    def stage(key: str, title: str, fn) -> None:
        log(f"\n{title}:")
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
        stage("network", f"ResNet-20 training steps on {device}, batch {batch}, {steps} timed steps",
              lambda: network_benchmarks(device, batch, steps))
        if device == "cuda":  # a CPU dry run measures nothing worth comparing
            report["targets"] = targets(report["layers"], report["network"])
            report["backends"] = __import__("shiftadd").backends()
            if report["env"]["triton"]:
                stage("tile_sweep", "Triton tile sweep", tile_sweep)
    with open(os.path.join(args.out, "gpu_check.json"), "w") as fh:
        json.dump(report, fh, indent=1, default=str)
    md = markdown(report)
    with open(os.path.join(args.out, "gpu_check.md"), "w") as fh:
        fh.write(md)
    log("\n" + md)
    log(f"wrote {args.out}/gpu_check.json, gpu_check.md, tests.log")
    return 0 if report["tests"]["returncode"] in (0, None) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
