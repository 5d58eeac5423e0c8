"""Records of counted operations: one :class:`LayerOps` per layer call, :class:`OpCounts` per model.

Counts are kept per phase and role: ``items[(phase, role)] = {op: count}``. Ops are the names
priced by the energy tables (``mult``, ``add``, ``shift``, ``abs``, ``cmp``) and the data-movement
ops of :data:`MEMORY_OPS` (``move``). Roles name what the work is for: ``main`` (the layer's own
arithmetic), ``bias``, ``act_quant``, ``weight_quant``, ``adaptive_lr``, the quantizer roles of
:data:`shiftadd.energy.rules.QUANT_ROLES` and ``optimizer``.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

#: Phases: per sample ("forward" = inference, "train_forward", "grad_input", "grad_weight")
#: and per optimisation step ("update").
PHASES = ("forward", "train_forward", "grad_input", "grad_weight", "update")
PER_SAMPLE_PHASES = ("forward", "train_forward", "grad_input", "grad_weight")
INFERENCE_PHASES = ("forward",)
TRAINING_PHASES = ("train_forward", "grad_input", "grad_weight", "update")

#: Kinds of layer records.
WEIGHT_KINDS = ("conv", "linear", "matmul", "adder", "shift")

#: Counted operations that are data movement: one element read or written at the memory level of
#: the data-movement estimate (priced per bit, not by the operation table).
MEMORY_OPS = ("move",)

Counts = Dict[str, int]


@dataclass
class LayerOps:
    """Operation counts of one layer (one call of a module, or one functional call).

    ``items[(phase, role)] = {op: count}``; per-sample phases hold the counts for ONE
    sample, the "update" phase the counts of one optimisation step.
    """

    name: str
    kind: str
    module_type: str
    items: Dict[Tuple[str, str], Counts] = field(default_factory=dict)
    params: int = 0               # weight + bias elements (counted at the first call only)
    trainable_params: int = 0
    weight_bits: Optional[int] = None  # storage bits of the weights at inference (None: format bits)
    weight_elems: int = 0         # elements of the (effective) weight tensor, stored for inference
    bias_elems: int = 0
    input_numel: int = 0          # per sample
    output_numel: int = 0         # per sample
    moves_data: bool = False      # part of the data-movement estimate (the weight layers)

    def add(self, phase: str, role: str, **ops: float) -> None:
        """Add counts ``ops`` (op=count) to (phase, role); zero counts are dropped."""
        if phase not in PHASES:
            raise ValueError(f"unknown phase {phase!r}")
        d = self.items.setdefault((phase, role), {})
        for op, n in ops.items():
            n = int(round(n))
            if n:
                d[op] = d.get(op, 0) + n
        if not d:
            del self.items[(phase, role)]

    def phase_counts(self, phase: str) -> Counts:
        """Counts of one phase summed over roles; "train_forward" falls back to "forward"."""
        if phase == "train_forward" and not any(p == "train_forward" for p, _ in self.items):
            phase = "forward"
        out: Counts = defaultdict(int)
        for (p, _), ops in self.items.items():
            if p == phase:
                for op, n in ops.items():
                    out[op] += n
        return dict(out)

    def roles(self, phase: str) -> Dict[str, Counts]:
        if phase == "train_forward" and not any(p == "train_forward" for p, _ in self.items):
            phase = "forward"
        return {r: dict(ops) for (p, r), ops in self.items.items() if p == phase}

    def as_dict(self) -> Dict[str, Any]:
        phases: Dict[str, Dict[str, Counts]] = {}
        for (p, r), ops in self.items.items():
            phases.setdefault(p, {})[r] = dict(ops)
        return {"name": self.name, "kind": self.kind, "module_type": self.module_type, "params": self.params,
                "trainable_params": self.trainable_params, "weight_bits": self.weight_bits,
                "weight_elems": self.weight_elems, "bias_elems": self.bias_elems,
                "input_numel": self.input_numel, "output_numel": self.output_numel, "phases": phases}


@dataclass
class OpCounts:
    """Result of :func:`count_ops`: per-layer records, for a batch of ``batch_size``."""

    layers: List[LayerOps]
    input_shape: Tuple[int, ...]
    batch_size: int
    optimizer: Optional[str]
    uncounted: List[str] = field(default_factory=list)

    def totals(self, phases: Iterable[str]) -> Counts:
        """Counts summed over layers for ``phases`` (per sample / per step, unscaled)."""
        out: Counts = defaultdict(int)
        for layer in self.layers:
            for ph in phases:
                for op, n in layer.phase_counts(ph).items():
                    out[op] += n
        return dict(out)

    def inference(self) -> Counts:
        """Operations of one forward pass of the whole batch."""
        return {op: n * self.batch_size for op, n in self.totals(INFERENCE_PHASES).items()}

    def training_step(self) -> Counts:
        """Operations of one training step on the whole batch (forward, backward, update)."""
        out: Counts = defaultdict(int)
        for op, n in self.totals(("train_forward", "grad_input", "grad_weight")).items():
            out[op] += n * self.batch_size
        for op, n in self.totals(("update",)).items():
            out[op] += n
        return dict(out)

    def macs(self, kinds: Sequence[str] = ("conv", "linear", "matmul")) -> int:
        """Multiply-accumulates of one sample's forward pass in layers of ``kinds``."""
        return sum(layer.phase_counts("forward").get("mult", 0) for layer in self.layers
                   if layer.kind in kinds)

    @property
    def params(self) -> int:
        return sum(layer.params for layer in self.layers)

    def layer(self, name: str) -> LayerOps:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(name)

    def as_dict(self) -> Dict[str, Any]:
        return {"input_shape": list(self.input_shape), "batch_size": self.batch_size,
                "optimizer": self.optimizer, "params": self.params,
                "layers": [layer.as_dict() for layer in self.layers], "uncounted": list(self.uncounted)}
