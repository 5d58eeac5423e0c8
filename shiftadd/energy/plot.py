"""Stacked bar charts of energy per layer / per model and operation type (matplotlib, Agg)."""
from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

from shiftadd.energy.costs import OPS
from shiftadd.energy.records import WEIGHT_KINDS
from shiftadd.energy.profile import EnergyProfile

_COLORS = {"mult": "#d62728", "add": "#1f77b4", "shift": "#2ca02c", "abs": "#9467bd", "cmp": "#ff7f0e",
           "memory": "#7f7f7f"}
_GROUP_LABELS = {"norm": "all norm layers", "activation": "all activations", "pool": "all pooling",
                 "residual": "all residual adds", "elementwise": "other elementwise", "optimizer": "optimizer",
                 "dropout": "all dropout", "spatial_shift": "all spatial shifts", "other": "other"}


def _segments(p: EnergyProfile) -> "OrderedDict[str, Dict[str, float]]":
    """Bars: one per weight layer, then one per other kind (summed); values in pJ by op (+ memory)."""
    bars: "OrderedDict[str, Dict[str, float]]" = OrderedDict()
    for layer in p.layers:
        key = layer.name if layer.kind in WEIGHT_KINDS else _GROUP_LABELS.get(layer.kind, layer.kind)
        seg = bars.setdefault(key, {})
        for op, e in layer.energy_pj.items():
            seg[op] = seg.get(op, 0.0) + e
        if layer.memory_pj:
            seg["memory"] = seg.get("memory", 0.0) + layer.memory_pj
    # move the grouped bars to the end, in a stable order
    grouped = [k for k in bars if k in _GROUP_LABELS.values()]
    for k in grouped:
        bars.move_to_end(k)
    return bars


def _draw(ax, labels: Sequence[str], bars: Sequence[Dict[str, float]], unit: Tuple[str, float]) -> None:
    ops = [op for op in list(OPS) + ["memory"] if any(b.get(op) for b in bars)]
    ops += sorted({op for b in bars for op in b} - set(ops))
    bottom = [0.0] * len(bars)
    xs = list(range(len(bars)))
    name, scale = unit
    for op in ops:
        vals = [b.get(op, 0.0) / scale for b in bars]
        ax.bar(xs, vals, bottom=bottom, label=op if op != "memory" else "data movement",
               color=_COLORS.get(op), hatch="//" if op == "memory" else None, edgecolor="white", linewidth=0.3)
        bottom = [a + v for a, v in zip(bottom, vals)]
    ax.set_xticks(xs)
    ax.set_xticklabels(labels, rotation=90, fontsize=7)
    ax.set_ylabel(f"energy ({name})")
    ax.legend(fontsize=8)


def _unit(max_pj: float) -> Tuple[str, float]:
    for name, scale in (("J", 1e12), ("mJ", 1e9), ("uJ", 1e6), ("nJ", 1e3)):
        if max_pj >= scale:
            return name, scale
    return "pJ", 1.0


def plot_profile(p: EnergyProfile, path: Union[str, Path], title: Optional[str] = None) -> Path:
    """Write a PNG: energy of each weight layer (and of the other layer kinds, grouped),
    stacked by operation type, data movement hatched. Returns the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bars = _segments(p)
    labels, values = list(bars), list(bars.values())
    unit = _unit(max((sum(v.values()) for v in values), default=1.0))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.22 * len(labels) + 2), 4.5))
    _draw(ax, labels, values, unit)
    scope = "training step" if p.training else "inference"
    ax.set_title(title or f"{p.label or 'model'}: {scope} energy per layer, {p.platform} {p.fmt}", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_comparison(profiles: Sequence[EnergyProfile], path: Union[str, Path], title: str = "") -> Path:
    """Write a PNG with one stacked bar per profile (its label), by operation type."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [p.label or f"#{i}" for i, p in enumerate(profiles)]
    bars: List[Dict[str, float]] = []
    for p in profiles:
        seg = dict(p.op_energy_pj())
        if p.memory_pj:
            seg["memory"] = p.memory_pj
        bars.append(seg)
    unit = _unit(max((sum(b.values()) for b in bars), default=1.0))
    fig, ax = plt.subplots(figsize=(max(5.0, 0.6 * len(labels) + 2), 4.5))
    _draw(ax, labels, bars, unit)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_panels(panels: Sequence[Tuple[str, Sequence[EnergyProfile]]], path: Union[str, Path],
                title: str = "") -> Path:
    """Write a PNG with side-by-side panels, each a :func:`plot_comparison` of its profiles."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(panels)
    width = max(5.0, 0.6 * max(len(p) for _, p in panels) + 2)
    fig, axes = plt.subplots(1, n, figsize=(width * n, 4.8), squeeze=False)
    for ax, (sub, profiles) in zip(axes[0], panels):
        bars: List[Dict[str, float]] = []
        for p in profiles:
            seg = dict(p.op_energy_pj())
            if p.memory_pj:
                seg["memory"] = p.memory_pj
            bars.append(seg)
        unit = _unit(max((sum(b.values()) for b in bars), default=1.0))
        _draw(ax, [p.label or f"#{i}" for i, p in enumerate(profiles)], bars, unit)
        ax.set_title(sub, fontsize=10)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
