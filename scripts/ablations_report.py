"""Analyse the runs of scripts/ablations.py: accuracy, energy, pruning, shared-scale quantization, weight
statistics. Writes docs/ablations/results.json, docs/ablations/tables.md and the plots in docs/ablations/.

    python scripts/ablations_report.py [--threads 2]

Energy: the 45 nm ASIC table (shiftadd/energy/tables/asic45nm.yaml), compute only and compute + SRAM data
movement; FP32 runs priced in fp32, FIXn runs in fixN forward with fix8 backward (as they were trained).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from ablations import BASE_OPS, FIX_FORMATS, FIX_OPS, PRUNE_OPS, PRUNE_RATIOS, RUNS, finished  # noqa: E402

from shiftadd.energy import profile, training_energy  # noqa: E402
from shiftadd.quant import layer_kind  # noqa: E402
from shiftadd.train import load_trained_model  # noqa: E402
from shiftadd.train.checkpoint import load_checkpoint_meta  # noqa: E402
from shiftadd.train.runs import evaluate_checkpoint  # noqa: E402
from shiftadd.train.task import dataset_shape, load_data  # noqa: E402

OUT = ROOT / "docs" / "ablations"
PLATFORM = "asic45nm"
PTQ_BITS = (16, 8, 6, 4)


def run_info(name: str) -> Optional[Dict[str, Any]]:
    """Final/best accuracy, time and configuration of a finished run (None if it is not finished)."""
    run = RUNS / name
    if not finished(run):
        return None
    meta = load_checkpoint_meta(str(run))
    h = meta["history"]
    return {"name": name, "test_acc": h[-1]["test_acc"], "best_acc": max(r["test_acc"] for r in h),
            "train_acc": h[-1]["train_acc"], "epochs": meta["epoch"], "train_seconds": sum(r["train_seconds"] for r in h),
            "train_size": meta["dataset"]["train_size"], "config": meta["config"]}


def energy(model: torch.nn.Module, cfg: Any, info: Dict[str, Any]) -> Dict[str, float]:
    """Inference energy per image and training energy of the whole run (compute only / + SRAM), in joules."""
    fmt = cfg.quant or "fp32"
    grad = "fix8" if cfg.quant else None
    shape = (1, 3, 32, 32)
    out = {}
    for mem, key in ((None, "compute"), ("sram", "sram")):
        inf = profile(model, shape, PLATFORM, fmt, memory=mem)
        out[f"inference_{key}_uj"] = inf.total_pj * 1e-6
        run = training_energy(model, (cfg.batch_size, 3, 32, 32), info["epochs"] * info["train_size"], PLATFORM,
                              fmt, memory=mem, grad_fmt=grad)
        out[f"training_{key}_j"] = run.total_j
    return out


def shift_weights_changed(model: torch.nn.Module, cfg: Any) -> Optional[float]:
    """Fraction of the bit-shift layers' effective weights that differ from their initial values
    (the initial model is rebuilt exactly as the trainer built it), or None without shift layers."""
    from shiftadd.nn import SHIFT_TYPES
    from shiftadd.train.build import build_model, seed_everything

    shifts = [m for m in model.modules() if isinstance(m, SHIFT_TYPES)]
    if not shifts:
        return None
    # the trainer's exact path: seed, load the data, build with the data-derived options
    seed_everything(cfg.seed)
    train_ds, _ = load_data(cfg)
    num_classes, channels, size = dataset_shape(train_ds)
    init, _ = build_model(cfg.model, cfg.op, num_classes, cfg.model_options, channels, size)
    before = [m for m in init.modules() if isinstance(m, SHIFT_TYPES)]
    changed = sum(int((a.weight != b.weight).sum()) for a, b in zip(shifts, before))
    return changed / sum(a.weight.numel() for a in shifts)


# --------------------------------------------------------------------------- experiments
def base_and_fix() -> Dict[str, Dict[str, Any]]:
    rows = {}
    names = ([f"base-{op}" for op in BASE_OPS] + ["base-shift-ps-shiftlr10", "base-shiftadd-shiftlr10"]
             + [f"{f}-{op}" for f in FIX_FORMATS for op in FIX_OPS])
    for n in names:
        info = run_info(n)
        if info is None:
            print(f"  {n}: not finished, skipped")
            continue
        model, cfg, _ = load_trained_model(str(RUNS / n))
        info.update(energy(model, cfg, info))
        info["shift_weights_changed"] = shift_weights_changed(model, cfg)
        rows[n] = info
        print(f"  {n}: {100 * info['test_acc']:.2f}%  inference {info['inference_compute_uj']:.2f} uJ  "
              f"training {info['training_compute_j']:.3f} J", flush=True)
    return rows


def pruning() -> Dict[str, Dict[str, Any]]:
    rows = {}
    for op in PRUNE_OPS:
        base = RUNS / f"base-{op}"
        if not finished(base):
            continue
        for r in PRUNE_RATIOS:
            n = f"prune{int(100 * r)}-{op}"
            row: Dict[str, Any] = {"op": op, "ratio": r}
            ev = evaluate_checkpoint(str(base), device="cpu", prune={"ratio": r, "layer_types": ["adder"]})
            row["acc_pruned"] = ev["acc"]
            info = run_info(n)
            if info is not None:
                row["acc_finetuned"] = info["test_acc"]
                row.update(energy(*load_trained_model(str(RUNS / n))[:2], info))
            rows[n] = row
            print(f"  {n}: pruned {100 * row['acc_pruned']:.2f}%  fine-tuned "
                  f"{100 * row.get('acc_finetuned', float('nan')):.2f}%", flush=True)
    return rows


def shared_scale_ptq() -> Dict[str, Dict[str, Any]]:
    """Post-training shared-scale quantization of the trained adder / shift-add networks."""
    from shiftadd.train.runs import shared_scale_sweep

    rows = {}
    for op in ("adder", "shiftadd", "shiftadd-fixed"):
        name = f"base-{op}"
        if not finished(RUNS / name):
            continue
        for scale in ("free", "pow2"):
            res = shared_scale_sweep(str(RUNS / name), PTQ_BITS, scale)
            res.pop("test_images")
            rows[f"{op}-{scale}"] = {"op": op, "scale": scale, **res}
            print(f"  {op} {scale}: " + "  ".join(f"{k} {100 * v:.2f}%" for k, v in res.items()), flush=True)
    return rows


def _layer_weights(model: torch.nn.Module, kind: str, skip_first_last: bool = True) -> List[Tuple[str, np.ndarray]]:
    from shiftadd.prune import effective_weight

    out = [(n, effective_weight(m).flatten().double().numpy()) for n, m in model.named_modules() if layer_kind(m) == kind]
    if kind == "conv" and skip_first_last:
        out = out[1:]  # the first (RGB) layer stays a convolution in every variant
    return out


def fit_stats(w: np.ndarray) -> Dict[str, float]:
    """Excess kurtosis and mean log-likelihood of the maximum-likelihood Gaussian and Laplace fits."""
    mu, sd = w.mean(), w.std()
    med = np.median(w)
    b = np.abs(w - med).mean()
    ll_gauss = -0.5 * math.log(2 * math.pi * sd * sd) - 0.5
    ll_laplace = -math.log(2 * b) - 1.0
    kurt = float(((w - mu) ** 4).mean() / sd ** 4 - 3)
    return {"kurtosis": kurt, "ll_gauss": ll_gauss, "ll_laplace": ll_laplace, "laplace_better": ll_laplace > ll_gauss}


def weight_statistics() -> Dict[str, Any]:
    """Gaussian vs Laplace fits of conv and adder weights (trained and at initialisation), and the
    dynamic range of the surviving adder weights after 50 % pruning."""
    from shiftadd.models import create

    out: Dict[str, Any] = {"fits": {}, "range": {}}
    sources = {"conv (conv ResNet-20)": ("base-conv", "conv"), "adder (AdderNet ResNet-20)": ("base-adder", "adder"),
               "adder (ShiftAddNet ResNet-20)": ("base-shiftadd", "adder")}
    hist = {}
    for label, (name, kind) in sources.items():
        if not finished(RUNS / name):
            continue
        model, cfg, _ = load_trained_model(str(RUNS / name))
        torch.manual_seed(cfg.seed)
        init = create(cfg.model, op=cfg.op, num_classes=10)
        for when, m in (("trained", model), ("init", init)):
            layers = _layer_weights(m, kind)
            stats = [fit_stats(w) for _, w in layers]
            out["fits"][f"{label}, {when}"] = {
                "layers": len(stats), "laplace_better": sum(s["laplace_better"] for s in stats),
                "median_kurtosis": float(np.median([s["kurtosis"] for s in stats])),
                "mean_ll_gain": float(np.mean([s["ll_laplace"] - s["ll_gauss"] for s in stats]))}
            if when == "trained":
                hist[label] = np.concatenate([(w - w.mean()) / w.std() for _, w in layers])
    for op in PRUNE_OPS:
        name = f"prune50-{op}"
        if not finished(RUNS / name):
            continue
        model, _, _ = load_trained_model(str(RUNS / name))
        layers = _layer_weights(model, "adder")
        w = np.concatenate([w for _, w in layers])
        nz = np.abs(w[w != 0])
        per_layer = [np.log2(np.percentile(np.abs(v[v != 0]), 99) / np.percentile(np.abs(v[v != 0]), 1))
                     for _, v in layers]
        out["range"][op] = {"nonzero": int(nz.size), "zero_fraction": float((w == 0).mean()),
                            "log2_p99_over_p1": float(np.log2(np.percentile(nz, 99) / np.percentile(nz, 1))),
                            "layer_median_log2_p99_over_p1": float(np.median(per_layer)),
                            "log2_max_over_min": float(np.log2(nz.max() / nz.min())),
                            "std": float(w.std())}
        hist[f"pruned50 {op}"] = w
    out["_hist"] = hist
    return out


# --------------------------------------------------------------------------- plots and tables
def plots(results: Dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = results["runs"]
    if rows:
        fig, ax = plt.subplots(figsize=(6.5, 4.2))
        for n, r in rows.items():
            ax.scatter(r["training_compute_j"], 100 * r["test_acc"], s=30)
            ax.annotate(n, (r["training_compute_j"], 100 * r["test_acc"]), fontsize=7, xytext=(3, 3),
                        textcoords="offset points")
        ax.set_xscale("log")
        ax.set_xlabel("estimated training energy of the run, compute only (J, 45 nm ASIC)")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title("ResNet-20, CIFAR-10 8k subset, 5 epochs")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(OUT / "accuracy_energy.png", dpi=120)
        plt.close(fig)
    if any(n.startswith("fix") for n in rows):
        fig, ax = plt.subplots(figsize=(6.5, 4))
        formats = ("fp32",) + FIX_FORMATS
        width = 0.8 / len(FIX_OPS)
        for i, op in enumerate(FIX_OPS):
            accs = [rows.get(f"base-{op}" if f == "fp32" else f"{f}-{op}", {}).get("test_acc", float("nan"))
                    for f in formats]
            ax.bar(np.arange(len(formats)) + (i - (len(FIX_OPS) - 1) / 2) * width, [100 * a for a in accs], width,
                   label=op)
        ax.set_xticks(np.arange(len(formats)), ["FP32"] + [f"{f.upper()} fwd / FIX8 bwd" for f in FIX_FORMATS],
                      fontsize=8)
        ax.set_ylabel("test accuracy (%)")
        ax.set_title("fixed-point training, ResNet-20, same budget")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3, axis="y")
        fig.tight_layout()
        fig.savefig(OUT / "fixed_point.png", dpi=120)
        plt.close(fig)
    pq = results["ptq"]
    if pq:
        fig, ax = plt.subplots(figsize=(6, 4))
        for r in pq.values():
            xs = ["float"] + [f"int{b}" for b in PTQ_BITS]
            ax.plot(xs, [100 * r[x] for x in xs], "o-", label=f"{r['op']}, {r['scale']} scale")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title("post-training shared-scale quantization of the adder layers")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(OUT / "shared_scale.png", dpi=120)
        plt.close(fig)
    pr = results["pruning"]
    if pr:
        fig, ax = plt.subplots(figsize=(6, 4))
        for op, style in (("adder", "o-"), ("shiftadd", "s-")):
            pts = sorted((r["ratio"], r) for r in pr.values() if r["op"] == op)
            base = rows.get(f"base-{op}")
            xs = ([0.0] if base else []) + [100 * x for x, _ in pts]
            for key, ls in (("acc_finetuned", style), ("acc_pruned", style.replace("-", ":"))):
                ys = ([100 * base["test_acc"]] if base else []) + [100 * r.get(key, float("nan")) for _, r in pts]
                ax.plot(xs, ys, ls, label=f"{op}, {'fine-tuned 3 epochs' if key == 'acc_finetuned' else 'no fine-tuning'}")
        ax.set_xlabel("adder-layer weights pruned (%)")
        ax.set_ylabel("test accuracy (%)")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(OUT / "pruning.png", dpi=120)
        plt.close(fig)
    hist = results["weights"].get("_hist", {})
    if hist:
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        grid = np.linspace(-5, 5, 201)
        for label, w in hist.items():
            if label.startswith("pruned"):
                continue
            axes[0].hist(w, bins=grid, density=True, histtype="step", label=label)
        axes[0].plot(grid, np.exp(-grid ** 2 / 2) / math.sqrt(2 * math.pi), "k--", lw=0.8, label="Gaussian")
        axes[0].plot(grid, np.exp(-np.abs(grid) * math.sqrt(2)) / math.sqrt(2), "k:", lw=0.8, label="Laplace")
        axes[0].set_yscale("log")
        axes[0].set_ylim(1e-4, 2)
        axes[0].set_xlabel("weight, standardised per layer")
        axes[0].set_title("trained layer weights (first conv excluded)")
        axes[0].legend(fontsize=7)
        for label, w in hist.items():
            if label.startswith("pruned"):
                axes[1].hist(w, bins=120, density=True, histtype="step", label=label.replace("pruned50", "50% pruned"))
        axes[1].set_yscale("log")
        axes[1].set_xlabel("adder-layer weight (zeros included)")
        axes[1].set_title("adder weights after 50% pruning + fine-tuning")
        axes[1].legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(OUT / "weights.png", dpi=120)
        plt.close(fig)


def pct(x: Optional[float]) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.2f}"


def tables(results: Dict[str, Any]) -> str:
    rows = results["runs"]
    lines = ["### 1-2. Operators and fixed-point training", "",
             "| run | test acc. (%) | best (%) | train time (s) | shift weights changed (%) | "
             "inference µJ/image (compute / +SRAM) | training J/run (compute / +SRAM) |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for n, r in rows.items():
        lines.append(f"| {n} | {pct(r['test_acc'])} | {pct(r['best_acc'])} | {r['train_seconds']:.0f} | "
                     f"{pct(r.get('shift_weights_changed'))} | "
                     f"{r['inference_compute_uj']:.2f} / {r['inference_sram_uj']:.2f} | "
                     f"{r['training_compute_j']:.3f} / {r['training_sram_j']:.3f} |")
    ref = rows.get("base-adder")
    if ref:
        lines += ["", "Against FP32 AdderNet (accuracy difference in points, energy saving in %, compute only):", "",
                  "| run | Δ acc. vs FP32 adder | inference saving | training saving |", "|---|---:|---:|---:|"]
        for n, r in rows.items():
            if n.startswith("fix"):
                lines.append(f"| {n} | {100 * (r['test_acc'] - ref['test_acc']):+.2f} | "
                             f"{100 * (1 - r['inference_compute_uj'] / ref['inference_compute_uj']):.1f} | "
                             f"{100 * (1 - r['training_compute_j'] / ref['training_compute_j']):.1f} |")
    pr = results["pruning"]
    if pr:
        lines += ["", "### 3. Pruning adder-layer weights", "",
                  "| ratio | adder: pruned | adder: fine-tuned | shiftadd: pruned | shiftadd: fine-tuned |",
                  "|---:|---:|---:|---:|---:|"]
        for r in PRUNE_RATIOS:
            a, s = pr.get(f"prune{int(100 * r)}-adder", {}), pr.get(f"prune{int(100 * r)}-shiftadd", {})
            lines.append(f"| {int(100 * r)}% | {pct(a.get('acc_pruned'))} | {pct(a.get('acc_finetuned'))} | "
                         f"{pct(s.get('acc_pruned'))} | {pct(s.get('acc_finetuned'))} |")
    pq = results["ptq"]
    if pq:
        lines += ["", "### 4. Post-training shared-scale quantization of the adder layers", "",
                  "| network | scale | float | " + " | ".join(f"int{b}" for b in PTQ_BITS) + " |",
                  "|---|---|---:|" + "---:|" * len(PTQ_BITS)]
        for r in pq.values():
            lines.append(f"| {r['op']} | {r['scale']} | {pct(r['float'])} | "
                         + " | ".join(pct(r[f'int{b}']) for b in PTQ_BITS) + " |")
    wf = results["weights"].get("fits", {})
    if wf:
        lines += ["", "### 5. Weight distributions", "",
                  "| layers | count | Laplace fits better | median excess kurtosis | mean log-lik. gain of Laplace |",
                  "|---|---:|---:|---:|---:|"]
        for k, v in wf.items():
            lines.append(f"| {k} | {v['layers']} | {v['laplace_better']} | {v['median_kurtosis']:.2f} | "
                         f"{v['mean_ll_gain']:+.3f} |")
    rg = results["weights"].get("range", {})
    if rg:
        lines += ["", "| 50% pruned + fine-tuned | zero fraction | log2(p99/p1) of nonzero abs, pooled | "
                      "same, median over layers | log2(max/min) of nonzero abs | std |", "|---|---:|---:|---:|---:|---:|"]
        for op, v in rg.items():
            lines.append(f"| {op} | {v['zero_fraction']:.3f} | {v['log2_p99_over_p1']:.2f} | "
                         f"{v['layer_median_log2_p99_over_p1']:.2f} | "
                         f"{v['log2_max_over_min']:.2f} | {v['std']:.3f} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--skip", default="", help="comma-separated parts to skip: runs, pruning, ptq, weights")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    skip = set(a.skip.split(","))
    OUT.mkdir(parents=True, exist_ok=True)
    results: Dict[str, Any] = {}
    for key, fn in (("runs", base_and_fix), ("pruning", pruning), ("ptq", shared_scale_ptq),
                    ("weights", weight_statistics)):
        print(f"{key}:", flush=True)
        results[key] = {} if key in skip else fn()
    plots(results)
    results["weights"].pop("_hist", None)
    (OUT / "results.json").write_text(json.dumps(results, indent=1, default=float))
    text = tables(results)
    (OUT / "tables.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
