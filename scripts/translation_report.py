"""Results table and BLEU-vs-energy plot of finished translation runs (docs/translation.md).

    python scripts/translation_report.py results/runs/mt-* --json docs/translation/results.json \
        --plot docs/translation/bleu_vs_energy.png

For every run folder: the model (preset, sizes, operator families), parameters, the validation BLEU
of every epoch (greedy, the model-selection signal), the test-2016 BLEU the trainer measured once at
the end of the run for the final and the best-validation model (``RUN/results.json``; a run without it
is listed as in progress), training time and tokens/s, and the inference energy of one 30 + 30-token
sentence pair from ``shiftadd energy`` (asic45nm, fp32, data movement at SRAM). Prints a markdown table.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shiftadd.cli import main as shiftadd_main  # noqa: E402
from shiftadd.train.checkpoint import load_checkpoint_meta  # noqa: E402


def sentence_energy(build: Dict[str, Any], tokens: int = 30, fmt: str = "fp32") -> Dict[str, Any]:
    """``shiftadd energy --json`` of the run's model on one ``tokens`` + ``tokens`` sentence pair in
    number format ``fmt`` (fp32, fix8, ...)."""
    argv = ["energy", "--model", build["name"], "--op", build.get("op", "conv"), "--tokens", str(tokens),
            "--format", fmt, "--json"]
    for key, value in sorted(build["options"].items()):
        argv += ["-O", f"{key}={json.dumps(value) if isinstance(value, (list, dict)) else value}"]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = shiftadd_main(argv)
    if rc:
        raise SystemExit(f"shiftadd {' '.join(argv)} failed with exit code {rc}")
    return json.loads(out.getvalue())


def sentence_energy_uj(build: Dict[str, Any], tokens: int = 30, fmt: str = "fp32") -> float:
    """Compute + data-movement energy of one sentence pair in uJ: the unit of the NAS energy budgets
    (``TransformerEnergyLookup``)."""
    e = sentence_energy(build, tokens, fmt)
    return (e["per_sentence_pj"] + e["per_sentence_memory_pj"]) * 1e-6


def describe(options: Dict[str, Any], config: Dict[str, Any]) -> str:
    """Short model description: preset, layers, sizes, FFN/projection families when not the preset's."""
    text = (f"{options.get('preset', 'transformer')}, {options.get('layers', 3)}+{options.get('layers', 3)} layers, "
            f"d {options.get('embed_dim')}, FFN {options.get('ffn_dim')}, {options.get('heads')} heads")
    for key in ("ffn_op", "proj_op"):
        if key in options:
            text += f", {key.replace('_op', '')} {options[key]}"
    if config.get("shift_lr"):
        text += f", shift lr {config['shift_lr']:g}"
    return text


def run_row(path: Path) -> Dict[str, Any]:
    meta = load_checkpoint_meta(str(path))
    config, build, hist = meta["config"], meta["model_build"], meta["history"]
    energy = sentence_energy(build)
    results = json.loads((path / "results.json").read_text()) if (path / "results.json").is_file() else None
    vals = [h["val_bleu"] for h in hist]
    best = max(range(len(vals)), key=lambda i: vals[i])
    return {"run": path.name, "model": describe(build["options"], config), "options": build["options"],
            "params": meta["params"], "epochs_done": meta["epoch"],
            # a finished run's last --resume may have cut the originally planned epochs (its results say when)
            "epochs_planned": results["final"]["epoch"] if results else config["epochs"],
            "val_bleu_by_epoch": vals, "best_val_bleu": vals[best], "best_epoch": best + 1,
            "test_bleu_best_val_model": results["best"]["test_bleu"] if results else None,
            "test_bleu_final_model": results["final"]["test_bleu"] if results else None,
            "test_beam": config.get("beam"), "train_hours": sum(h.get("train_seconds", 0.0) for h in hist) / 3600,
            "tokens_per_second": sorted(h["tokens_per_second"] for h in hist)[len(hist) // 2],
            "energy_uj_per_sentence": energy["per_sentence_pj"] * 1e-6,
            "memory_uj_per_sentence": energy["per_sentence_memory_pj"] * 1e-6,
            "total_uj_per_sentence": (energy["per_sentence_pj"] + energy["per_sentence_memory_pj"]) * 1e-6,
            "multiplications_per_sentence": energy["op_counts"].get("mult", 0)}


def markdown(rows: List[Dict[str, Any]]) -> str:
    out = ["| run | model | parameters | epochs | best val BLEU (epoch, greedy) | **test BLEU** (best-val model) "
           "| energy / sentence (30+30 tokens): compute + memory | train time | tokens/s (median epoch) |",
           "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        epochs = r["epochs_done"] if r["epochs_done"] == r["epochs_planned"] else f"{r['epochs_done']} / {r['epochs_planned']}"
        test = f"**{r['test_bleu_best_val_model']:.2f}** (beam {r['test_beam']})" \
            if r["test_bleu_best_val_model"] is not None else "in progress"
        out.append(f"| {r['run']} | {r['model']} | {r['params'] / 1e6:.2f} M | {epochs} "
                   f"| {r['best_val_bleu']:.2f} ({r['best_epoch']}) | {test} | {r['energy_uj_per_sentence']:.0f} + "
                   f"{r['memory_uj_per_sentence']:.0f} = **{r['total_uj_per_sentence']:.0f} uJ** | {r['train_hours']:.2f} h | {r['tokens_per_second']:.0f} |")
    return "\n".join(out)


def plot(rows: List[Dict[str, Any]], path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for r in rows:
        done = r["test_bleu_best_val_model"] is not None
        y = r["test_bleu_best_val_model"] if done else r["best_val_bleu"]
        ax.scatter(r["total_uj_per_sentence"], y, marker="o" if done else "x")
        ax.annotate(r["run"] + ("" if done else " (val, in progress)"), (r["total_uj_per_sentence"], y),
                    fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("uJ per 30+30-token sentence (asic45nm fp32, compute + memory)", fontsize=9)
    ax.set_ylabel("BLEU, Multi30k En-De test-2016")
    ax.set_title("translation: BLEU vs energy", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", help="translation run folders")
    p.add_argument("--json", default=None, help="write the rows here")
    p.add_argument("--plot", default=None, help="BLEU-vs-energy plot (PNG)")
    a = p.parse_args(argv)
    rows = [run_row(Path(r)) for r in a.runs if (Path(r) / "checkpoint.json").is_file()]
    if not rows:
        raise SystemExit("no translation run (RUN/checkpoint.json) among the given folders")
    print(markdown(rows))
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))
    if a.plot:
        plot(rows, a.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
