"""Training-curve and comparison plots (matplotlib, Agg backend: no display needed)."""
from __future__ import annotations

import os
from typing import Any, Dict, List, Sequence


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str, title: str = "") -> str:
    """Title, lay out and write ``fig`` atomically to ``path``, then close it; returns ``path``."""
    import matplotlib.pyplot as plt

    if title:
        fig.suptitle(title)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}.png"
    fig.savefig(tmp, dpi=110)
    os.replace(tmp, path)
    plt.close(fig)
    return path


def plot_curves(history: Sequence[Dict[str, Any]], path: str, title: str = "") -> str:
    """Loss and accuracy per epoch (train and validation, or test without a validation split) from
    metrics rows; returns ``path``."""
    plt = _pyplot()
    epochs = [h["epoch"] for h in history]
    split = "val" if history and "val_loss" in history[0] else "test"
    # the task's metric: accuracy (shown in %) or e.g. BLEU (shown as is)
    metric = "acc" if not history or f"{split}_acc" in history[0] else next(
        k[len(split) + 1:] for k in history[0] if k.startswith(f"{split}_") and k != f"{split}_loss")
    scale, unit = (100, "accuracy (%)") if metric == "acc" else (1, metric.upper())
    label = "validation" if split == "val" else "test"
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    ax1.plot(epochs, [h["train_loss"] for h in history], "o-", label="train")
    ax1.plot(epochs, [h[f"{split}_loss"] for h in history], "s-", label=label)
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("cross-entropy loss")
    ax1.legend()
    ax1.grid(alpha=0.3)
    if metric == "acc":
        ax2.plot(epochs, [100 * h["train_acc"] for h in history], "o-", label="train")
    ax2.plot(epochs, [scale * h[f"{split}_{metric}"] for h in history], "s-", label=label)
    ax2.set_xlabel("epoch")
    ax2.set_ylabel(unit)
    ax2.legend()
    ax2.grid(alpha=0.3)
    return _save(fig, path, title)


def plot_comparison(rows: List[Dict[str, Any]], path: str, title: str = "") -> str:
    """Test accuracy per epoch for each row of :func:`shiftadd.train.compare`, plus final accuracy bars."""
    plt = _pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    labels = []
    for row in rows:
        label = f"{row['model']} / {row['op']}"
        labels.append(label)
        hist = row.get("history") or []
        ax1.plot([h["epoch"] for h in hist], [100 * h["test_acc"] for h in hist], "o-", label=label)
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("test accuracy (%)")
    ax1.grid(alpha=0.3)
    ax1.legend(fontsize=8)
    accs = [100 * r["test_acc"] for r in rows]
    bars = ax2.bar(range(len(rows)), accs, color=[f"C{i}" for i in range(len(rows))])
    for b, r in zip(bars, rows):
        ax2.text(b.get_x() + b.get_width() / 2, b.get_height(), f"{100 * r['test_acc']:.1f}%\n{r['train_seconds']:.0f}s",
                 ha="center", va="bottom", fontsize=8)
    ax2.set_xticks(range(len(rows)))
    ax2.set_xticklabels([r["op"] for r in rows], rotation=20)
    ax2.set_ylabel("final test accuracy (%)")
    ax2.set_ylim(0, max(accs + [1]) * 1.25)
    return _save(fig, path, title)
