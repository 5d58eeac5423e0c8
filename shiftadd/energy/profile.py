"""Turn operation counts into energy for one platform and number format.

:func:`profile` counts a model and prices it; :func:`evaluate` prices existing counts (so
one count serves many platforms and formats); :func:`training_energy` estimates the energy
of a training run from the number of samples it saw.

Data movement is reported apart from compute. Its model is deliberately simple: only the
weight layers (conv, linear, adder, shift) and the counted element moves of spatial-shift
layers (op ``move``: one element read or written, at the width of the phase's format) touch
memory, at one chosen level (``rf``, ``sram`` or ``dram``); BatchNorm, activations, pooling
and residual adds are assumed fused. Per inference of a batch of N: every weight is read once (a shift weight at its
``weight_bits``, others at the format's width) and every weight layer's input and output
activations are read and written once per sample. Per training step: the forward's traffic,
then in the backward the weights are read again, each saved input activation and each
output gradient is read, each input gradient written, each weight gradient written once;
the update reads weight, gradient and momentum and writes weight and momentum (all at the
gradient format's width).
"""
from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch.nn as nn

from shiftadd.energy.costs import OPS, EnergyTable, load_table
from shiftadd.energy.recorder import count_ops
from shiftadd.energy.records import MEMORY_OPS, LayerOps, OpCounts
from shiftadd.errors import UserError

MEMORY_LEVELS = ("rf", "sram", "dram")
PJ_PER_J = 1e12


@dataclass
class LayerEnergy:
    """Counts and energy of one layer for a batch (inference) or one step (training)."""

    name: str
    kind: str
    counts: Dict[str, int]
    energy_pj: Dict[str, float]          # compute energy by operation
    memory_pj: float = 0.0
    memory_bits: int = 0
    params: int = 0
    by_role_pj: Dict[str, float] = field(default_factory=dict)

    @property
    def compute_pj(self) -> float:
        return float(sum(self.energy_pj.values()))

    @property
    def total_pj(self) -> float:
        return self.compute_pj + self.memory_pj

    def as_dict(self) -> Dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "params": self.params, "counts": dict(self.counts),
                "energy_pj": dict(self.energy_pj), "compute_pj": self.compute_pj,
                "memory_pj": self.memory_pj, "memory_bits": self.memory_bits, "total_pj": self.total_pj,
                "by_role_pj": dict(self.by_role_pj)}


@dataclass
class EnergyProfile:
    """Energy of one forward pass of a batch (``training=False``) or of one training step."""

    platform: str
    fmt: str
    grad_fmt: str
    bits: int
    training: bool
    batch_size: int
    memory_level: Optional[str]
    layers: List[LayerEnergy]
    counts: OpCounts
    table: EnergyTable
    label: str = ""

    # ---- totals
    @property
    def compute_pj(self) -> float:
        return float(sum(layer.compute_pj for layer in self.layers))

    @property
    def memory_pj(self) -> float:
        return float(sum(layer.memory_pj for layer in self.layers))

    @property
    def total_pj(self) -> float:
        return self.compute_pj + self.memory_pj

    def op_counts(self) -> Dict[str, int]:
        out: Dict[str, int] = defaultdict(int)
        for layer in self.layers:
            for op, n in layer.counts.items():
                out[op] += n
        return dict(out)

    def op_energy_pj(self) -> Dict[str, float]:
        out: Dict[str, float] = defaultdict(float)
        for layer in self.layers:
            for op, e in layer.energy_pj.items():
                out[op] += e
        return dict(out)

    def kind_energy_pj(self) -> Dict[str, float]:
        """Compute energy by layer kind (conv, adder, shift, norm, activation, pool, residual, ...)."""
        out: Dict[str, float] = defaultdict(float)
        for layer in self.layers:
            out[layer.kind] += layer.compute_pj
        return dict(out)

    def role_energy_pj(self) -> Dict[str, float]:
        """Compute energy by role (main, bias, act_quant, weight_quant, quant_*, adaptive_lr, optimizer)."""
        out: Dict[str, float] = defaultdict(float)
        for layer in self.layers:
            for r, e in layer.by_role_pj.items():
                out[r] += e
        return dict(out)

    def saving(self, baseline: "EnergyProfile", include_memory: bool = False) -> float:
        """Fraction of ``baseline``'s energy saved: 1 - self / baseline (compute only by default)."""
        mine = self.total_pj if include_memory else self.compute_pj
        theirs = baseline.total_pj if include_memory else baseline.compute_pj
        if theirs <= 0:
            return 0.0
        return 1.0 - mine / theirs

    def estimates_used(self) -> List[str]:
        """The table entries marked as estimates that contributed to this profile."""
        used = set()
        for op, n in self.op_counts().items():
            if n and op not in MEMORY_OPS:
                for f in {self.fmt, self.grad_fmt} if self.training else {self.fmt}:
                    e = self.table.entry(op, f)
                    if e.estimate:
                        used.add(f"{op}/{f}: {e.value_pj} pJ ({e.source})")
        if self.memory_level and self.memory_pj > 0:
            e = self.table.memory[self.memory_level]
            if e.estimate:
                used.add(f"memory/{self.memory_level}: {e.value_pj} pJ per {e.word_bits} bits ({e.source})")
        return sorted(used)

    def as_dict(self) -> Dict[str, Any]:
        return {
            "label": self.label, "platform": self.platform, "format": self.fmt, "grad_format": self.grad_fmt,
            "bits": self.bits, "training": self.training, "batch_size": self.batch_size,
            "scope": "one training step" if self.training else "one forward pass",
            "input_shape": list(self.counts.input_shape), "memory_level": self.memory_level,
            "params": self.counts.params,
            "total_pj": self.total_pj, "compute_pj": self.compute_pj, "memory_pj": self.memory_pj,
            "op_counts": self.op_counts(), "op_energy_pj": self.op_energy_pj(),
            "kind_energy_pj": self.kind_energy_pj(), "role_energy_pj": self.role_energy_pj(),
            "layers": [layer.as_dict() for layer in self.layers],
            "estimates_used": self.estimates_used(), "uncounted": list(self.counts.uncounted),
        }

    def format_table(self, baseline: Optional["EnergyProfile"] = None, min_share: float = 0.0) -> str:
        """A per-layer text table with totals (and the saving against ``baseline``)."""
        return format_profile(self, baseline, min_share)


# --------------------------------------------------------------------------- evaluation

def _price(table: EnergyTable, counts: Dict[str, int], fmt: str, scale: float) -> Dict[str, float]:
    """Compute energy (pJ) by operation; data-movement ops are priced by :func:`_moved_bits`."""
    return {op: n * scale * table.energy(op, fmt) for op, n in counts.items() if n and op not in MEMORY_OPS}


def _moved_bits(counts: Dict[str, int], bits: int, scale: float) -> int:
    """Bits of the counted element moves (each one element read or written at ``bits``)."""
    return int(sum(counts.get(op, 0) for op in MEMORY_OPS) * scale * bits)


def _layer_memory_bits(layer: LayerOps, training: bool, batch: int, bits: int, grad_bits: int) -> int:
    if not layer.moves_data:
        return 0
    if training:  # the trained (latent) parameters, at the training format's width
        weights = layer.params * bits
    else:  # the stored weights (a shift weight at its weight_bits) and the bias
        weights = layer.weight_elems * (layer.weight_bits or bits) + layer.bias_elems * bits
    acts = batch * (layer.input_numel + layer.output_numel) * bits
    if not training:
        return weights + acts  # read weights once, read the input, write the output
    total = weights + acts
    total += layer.params * grad_bits                       # weights read again for the backward
    total += batch * (layer.input_numel + layer.output_numel) * grad_bits  # saved input, output grad
    total += batch * layer.input_numel * grad_bits          # input gradient written
    total += layer.trainable_params * grad_bits             # weight gradient written
    total += 5 * layer.trainable_params * grad_bits         # update: read w, g, v; write w, v
    return total


def evaluate(counts: OpCounts, platform: Union[str, EnergyTable] = "asic45nm", fmt: str = "fp32",
             training: bool = False, memory: Optional[str] = "sram", grad_fmt: Optional[str] = None,
             batch_size: Optional[int] = None, label: str = "") -> EnergyProfile:
    """Price ``counts`` on ``platform`` in number format ``fmt``.

    ``training``: one training step (forward, both gradients, update) instead of one
    forward pass; backward and update run in ``grad_fmt`` (default: ``fmt``).
    ``memory``: memory level of the data-movement estimate, or None for none.
    ``batch_size`` overrides the batch of ``counts``.
    """
    table = load_table(platform)
    fmt = table.format(fmt)
    gfmt = table.format(grad_fmt) if grad_fmt else fmt
    if memory is not None and str(memory).lower() in ("none", "off", ""):
        memory = None
    mem_pj_bit = table.memory_pj_per_bit(memory) if memory is not None else 0.0
    batch = int(batch_size or counts.batch_size)
    if batch < 1:
        raise UserError(f"batch_size must be positive, got {batch}")
    bits, gbits = table.bits(fmt), table.bits(gfmt)
    layers: List[LayerEnergy] = []
    for layer in counts.layers:
        agg: Dict[str, int] = defaultdict(int)
        energy: Dict[str, float] = defaultdict(float)
        roles: Dict[str, float] = defaultdict(float)
        if training:
            plan: Sequence[Tuple[str, str, float]] = (
                ("train_forward", fmt, batch), ("grad_input", gfmt, batch),
                ("grad_weight", gfmt, batch), ("update", gfmt, 1))
        else:
            plan = (("forward", fmt, batch),)
        mbits = _layer_memory_bits(layer, training, batch, bits, gbits)
        for phase, f, scale in plan:
            for role, ops in layer.roles(phase).items():
                priced = _price(table, ops, f, scale)
                for op, n in ops.items():
                    agg[op] += int(n * scale)
                for op, e in priced.items():
                    energy[op] += e
                    roles[role] += e
                mbits += _moved_bits(ops, table.bits(f), scale)
        if not agg and not mbits and not layer.params:
            continue
        layers.append(LayerEnergy(layer.name, layer.kind, dict(agg), dict(energy), mbits * mem_pj_bit, mbits,
                                  layer.params, dict(roles)))
    return EnergyProfile(table.name, fmt, gfmt, bits, bool(training), batch, memory, layers, counts, table,
                         label)


def profile(model: nn.Module, input_shape: Sequence[int], platform: Union[str, EnergyTable] = "asic45nm",
            fmt: str = "fp32", training: bool = False, memory: Optional[str] = "sram",
            grad_fmt: Optional[str] = None, optimizer: Optional[str] = "sgd", label: str = "") -> EnergyProfile:
    """Count ``model``'s operations on inputs of ``input_shape`` = (batch, ...) and price them.

    Returns the energy of one forward pass of the batch, or (``training=True``) of one
    training step on it, per layer and per operation, with data movement apart.
    """
    counts = count_ops(model, input_shape, optimizer=optimizer)
    return evaluate(counts, platform, fmt, training, memory, grad_fmt, label=label)


@dataclass
class RunEnergy:
    """Estimated energy of a training run."""

    samples: int
    steps: int
    batch_size: int
    platform: str
    fmt: str
    per_sample_pj: float     # forward + backward of one sample (compute)
    per_step_pj: float       # update work of one step (compute)
    compute_pj: float
    memory_pj: float
    memory_level: Optional[str]

    @property
    def total_pj(self) -> float:
        return self.compute_pj + self.memory_pj

    @property
    def total_j(self) -> float:
        return self.total_pj / PJ_PER_J

    def summary(self) -> str:
        mem = (f" + {format_energy(self.memory_pj)} data movement ({self.memory_level})"
               if self.memory_level else "")
        return (f"estimated training energy on {self.platform}/{self.fmt}: {format_energy(self.compute_pj)} compute"
                f"{mem} for {self.samples} samples in {self.steps} steps of {self.batch_size}")

    def as_dict(self) -> Dict[str, Any]:
        return {"samples": self.samples, "steps": self.steps, "batch_size": self.batch_size,
                "platform": self.platform, "format": self.fmt, "per_sample_pj": self.per_sample_pj,
                "per_step_pj": self.per_step_pj, "compute_pj": self.compute_pj, "memory_pj": self.memory_pj,
                "memory_level": self.memory_level, "total_pj": self.total_pj, "total_j": self.total_j}


def training_energy(model: nn.Module, input_shape: Sequence[int], num_samples_seen: int,
                    platform: Union[str, EnergyTable] = "asic45nm", fmt: str = "fp32",
                    memory: Optional[str] = "sram", optimizer: Optional[str] = "sgd",
                    grad_fmt: Optional[str] = None) -> RunEnergy:
    """Energy of training ``model`` on ``num_samples_seen`` samples in batches of ``input_shape[0]``.

    = samples x (forward + backward of one sample) + steps x (quantizers, adaptive LR,
    optimizer update), steps = ceil(samples / batch). Call it after a run, e.g. with
    ``input_shape=(batch_size, 3, 32, 32)``.
    """
    if int(num_samples_seen) < 0:
        raise UserError(f"num_samples_seen must be >= 0, got {num_samples_seen}")
    counts = count_ops(model, input_shape, optimizer=optimizer)
    table = load_table(platform)
    f = table.format(fmt)
    gf = table.format(grad_fmt) if grad_fmt else f
    batch = counts.batch_size
    samples = int(num_samples_seen)
    steps = math.ceil(samples / batch) if samples else 0
    per_sample = 0.0
    per_step = 0.0
    bits, gbits = table.bits(f), table.bits(gf)
    moved_per_sample = moved_per_step = 0
    for layer in counts.layers:
        fwd = layer.phase_counts("train_forward")
        per_sample += sum(_price(table, fwd, f, 1).values())
        moved_per_sample += _moved_bits(fwd, bits, 1)
        for ph in ("grad_input", "grad_weight"):
            per_sample += sum(_price(table, layer.phase_counts(ph), gf, 1).values())
            moved_per_sample += _moved_bits(layer.phase_counts(ph), gbits, 1)
        per_step += sum(_price(table, layer.phase_counts("update"), gf, 1).values())
        moved_per_step += _moved_bits(layer.phase_counts("update"), gbits, 1)
    if memory is not None and str(memory).lower() in ("none", "off", ""):
        memory = None
    memory_pj = 0.0
    if memory is not None:
        pj_bit = table.memory_pj_per_bit(memory)
        memory_pj += (moved_per_step * steps + moved_per_sample * samples) * pj_bit
        for layer in counts.layers:
            per_step_bits = _layer_memory_bits(layer, True, 0, bits, gbits)  # weight traffic
            per_sample_bits = _layer_memory_bits(layer, True, 1, bits, gbits) - per_step_bits
            memory_pj += (per_step_bits * steps + per_sample_bits * samples) * pj_bit
    return RunEnergy(samples, steps, batch, table.name, f, per_sample, per_step,
                     per_sample * samples + per_step * steps, memory_pj, memory)


# --------------------------------------------------------------------------- text output

def format_energy(pj: float) -> str:
    """pJ as a human-readable energy (pJ, nJ, uJ, mJ, J)."""
    for unit, scale in (("J", 1e12), ("mJ", 1e9), ("uJ", 1e6), ("nJ", 1e3)):
        if abs(pj) >= scale:
            return f"{pj / scale:.3g} {unit}"
    return f"{pj:.3g} pJ"


def format_count(n: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{int(n)}"


def format_profile(p: EnergyProfile, baseline: Optional[EnergyProfile] = None, min_share: float = 0.0) -> str:
    ops = [op for op in OPS if any(layer.counts.get(op) for layer in p.layers)]
    ops += sorted({op for layer in p.layers for op in layer.counts} - set(ops))
    head = ["layer", "kind"] + ops + ["compute", "memory", "share"]
    rows = []
    total = p.total_pj or 1.0
    hidden = 0.0
    for layer in p.layers:
        share = layer.total_pj / total
        if share < min_share:
            hidden += layer.total_pj
            continue
        rows.append([layer.name, layer.kind] + [format_count(layer.counts.get(op, 0)) for op in ops]
                    + [format_energy(layer.compute_pj), format_energy(layer.memory_pj), f"{100 * share:.1f}%"])
    counts = p.op_counts()
    rows.append(["TOTAL", ""] + [format_count(counts.get(op, 0)) for op in ops]
                + [format_energy(p.compute_pj), format_energy(p.memory_pj), "100.0%"])
    widths = [max(len(str(r[i])) for r in rows + [head]) for i in range(len(head))]
    lines = []
    scope = f"one training step (batch {p.batch_size})" if p.training else f"one forward pass (batch {p.batch_size})"
    fmt_txt = p.fmt if p.fmt == p.grad_fmt or not p.training else f"{p.fmt} (gradients {p.grad_fmt})"
    lines.append(f"{p.label + ': ' if p.label else ''}{scope} on {p.platform}, {fmt_txt}; "
                 f"data movement at {p.memory_level or 'none'}")
    for i, r in enumerate([head] + rows):
        cells = [str(c).ljust(widths[j]) if j < 2 else str(c).rjust(widths[j]) for j, c in enumerate(r)]
        lines.append("  ".join(cells).rstrip())
        if i == 0 or i == len(rows) - 1:
            lines.append("  ".join("-" * w for w in widths))
    if hidden:
        lines.append(f"(layers under {100 * min_share:.1f}% each not shown: {format_energy(hidden)})")
    lines.append(f"energy: {format_energy(p.compute_pj)} compute + {format_energy(p.memory_pj)} data movement "
                 f"= {format_energy(p.total_pj)}; parameters {p.counts.params:,}")
    if baseline is not None:
        lines.append(f"vs {baseline.label or 'baseline'}: {format_energy(baseline.compute_pj)} compute, "
                     f"{format_energy(baseline.total_pj)} with data movement -> saving "
                     f"{100 * p.saving(baseline):.1f}% compute, {100 * p.saving(baseline, True):.1f}% with data movement")
    est = p.estimates_used()
    if est:
        lines.append("estimated table values used: " + "; ".join(e.split(" (")[0] for e in est))
    if p.counts.uncounted:
        lines.append("not counted: " + ", ".join(p.counts.uncounted))
    return "\n".join(lines)
