"""The hybrid search space: per searchable block an operator family and an inner-width multiplier.

A block's in/out channels and stride are fixed by its stage (16/32/64 x ``base_width``); the
width multiplier scales only the block's inner channels, so a block's cost depends on its own
choice alone (see :mod:`shiftadd.nas.energy_table`). Sampling, mutation and crossover take a
``numpy.random.Generator`` so that a search can save and restore its random state exactly.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from shiftadd.errors import UserError
from shiftadd.nas.arch import Architecture, BlockChoice, blocks_for_depth

#: The paper's CNN operator choices: multiplication-based conv and three multiplication-free families.
DEFAULT_OPS = ("conv", "adder", "shift-ps", "shiftadd")
DEFAULT_WIDTHS = (0.5, 0.75, 1.0)


#: The block choice that is a multi-head self-attention block instead of a basic block of convolutions.
ATTENTION = "attention"


def family_properties(op: str) -> Dict[str, bool]:
    """``multiplication_free`` and ``has_adder`` of operator family ``op`` (or of the attention block),
    read from the operator-family registry (:mod:`shiftadd.nn.families`)."""
    from shiftadd.nn.families import family_names, get_family

    if op == ATTENTION:
        return {"multiplication_free": False, "has_adder": False}
    if op not in family_names():
        raise UserError(f"unknown operator {op!r}; choose one of: {', '.join(family_names() + (ATTENTION,))}")
    family = get_family(op)
    return {"multiplication_free": family.multiplication_free, "has_adder": family.has_adder}


def attention_allowed(stage: int, in_planes: int, planes: int, stride: int) -> bool:
    """Attention replaces only stride-1 blocks of the last stage (8x8 maps for 32x32 inputs)."""
    return stage == 2 and stride == 1 and in_planes == planes


def inner_channels(planes: int, width: float) -> int:
    """Inner channels of a block with ``planes`` output channels at width multiplier ``width``."""
    return max(1, int(round(planes * width)))


@dataclass(frozen=True)
class BlockSlot:
    """Where a searchable block sits: its channels, stride and input resolution (for 32x32 inputs)."""

    index: int
    stage: int
    in_planes: int
    planes: int
    stride: int


@dataclass(frozen=True)
class SearchSpace:
    """The CIFAR ResNet-(6n+2) skeleton with ``ops`` x ``widths`` choices per block.

    ``attention=True`` adds a multi-head self-attention block (its width multiplier scales the
    query/key/value channels) as a further choice of the stride-1 blocks of the last stage.
    """

    depth: int = 20
    ops: Tuple[str, ...] = DEFAULT_OPS
    widths: Tuple[float, ...] = DEFAULT_WIDTHS
    base_width: int = 16
    attention: bool = False
    slots: Tuple[BlockSlot, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "ops", tuple(self.ops))
        object.__setattr__(self, "widths", tuple(float(w) for w in self.widths))
        n = blocks_for_depth(self.depth) // 3
        if not self.ops or len(set(self.ops)) != len(self.ops):
            raise UserError(f"the search space needs distinct operators, got {list(self.ops)}")
        for op in self.ops:
            family_properties(op)
        if ATTENTION in self.ops:
            raise UserError("attention is not an operator family; turn it on with attention=True (--attention)")
        if not self.widths or any(not 0 < w <= 1 for w in self.widths) or len(set(self.widths)) != len(self.widths):
            raise UserError(f"width multipliers must be distinct numbers in (0, 1], got {list(self.widths)}")
        if self.base_width < 1:
            raise UserError(f"base_width must be positive, got {self.base_width}")
        slots, in_planes = [], self.base_width
        for stage in range(3):
            planes = self.base_width * 2 ** stage
            for j in range(n):
                slots.append(BlockSlot(len(slots), stage, in_planes, planes, 2 if stage > 0 and j == 0 else 1))
                in_planes = planes
        object.__setattr__(self, "slots", tuple(slots))

    @property
    def num_blocks(self) -> int:
        return len(self.slots)

    def ops_at(self, index: int) -> Tuple[str, ...]:
        """The operator choices of block ``index``."""
        s = self.slots[index]
        extra = (ATTENTION,) if self.attention and attention_allowed(s.stage, s.in_planes, s.planes, s.stride) else ()
        return self.ops + extra

    def choices(self, index: int = 0) -> List[BlockChoice]:
        """Every (operator, width) choice of block ``index``."""
        return [BlockChoice(op, w) for op in self.ops_at(index) for w in self.widths]

    def size(self) -> int:
        """Number of architectures in the space."""
        n = 1
        for i in range(self.num_blocks):
            n *= len(self.choices(i))
        return n

    # ---- checking
    def validate(self, arch: Architecture, what: str = "architecture") -> Architecture:
        """Raise a one-line :class:`UserError` if ``arch`` is not in this space."""
        if len(arch.blocks) != self.num_blocks:
            raise UserError(f"{what} has {len(arch.blocks)} blocks but the depth-{self.depth} space needs "
                            f"{self.num_blocks} (3 stages of {self.num_blocks // 3})")
        for i, b in enumerate(arch.blocks):
            if b.op not in self.ops_at(i):
                where = "" if b.op != ATTENTION else " (attention: only stride-1 blocks of the last stage)"
                raise UserError(f"{what}: block {i} uses unknown operator {b.op!r}{where}; "
                                f"this block can use: {', '.join(self.ops_at(i))}")
            if float(b.width) not in self.widths:
                raise UserError(f"{what}: block {i} width {b.width} is not one of {list(self.widths)}")
        return arch

    # ---- sampling and variation
    def sample(self, rng: np.random.Generator) -> Architecture:
        """A uniformly random architecture (each block's operator and width independently uniform)."""
        return Architecture(tuple(self._random_choice(rng, s.index) for s in self.slots))

    def random_op(self, rng: np.random.Generator, index: int) -> str:
        """A uniformly random operator choice of block ``index``."""
        ops = self.ops_at(index)
        return ops[int(rng.integers(len(ops)))]

    def _random_choice(self, rng: np.random.Generator, index: int) -> BlockChoice:
        return BlockChoice(self.random_op(rng, index), self.widths[int(rng.integers(len(self.widths)))])

    def mutate(self, arch: Architecture, prob: float, rng: np.random.Generator) -> Architecture:
        """Resample each block's operator and each block's width independently with probability ``prob``."""
        out = []
        for i, b in enumerate(arch.blocks):
            op = self.random_op(rng, i) if rng.random() < prob else b.op
            width = self.widths[int(rng.integers(len(self.widths)))] if rng.random() < prob else b.width
            out.append(BlockChoice(op, width))
        return Architecture(tuple(out))

    def crossover(self, a: Architecture, b: Architecture, rng: np.random.Generator) -> Architecture:
        """Uniform crossover: each block taken from ``a`` or ``b`` with probability 1/2."""
        return Architecture(tuple(x if rng.random() < 0.5 else y for x, y in zip(a.blocks, b.blocks)))

    def from_key(self, key: str) -> Architecture:
        """The architecture of :meth:`Architecture.key` (the search state stores keys)."""
        return Architecture.from_key(key)

    def suggest(self, trial: Any) -> Architecture:
        """The architecture an Optuna ``trial`` suggests (one operator and one width per block)."""
        return Architecture(tuple(BlockChoice(trial.suggest_categorical(f"b{i}_op", list(self.ops_at(i))),
                                              float(trial.suggest_categorical(f"b{i}_width", list(self.widths))))
                                  for i in range(self.num_blocks)))

    def as_dict(self) -> Dict[str, Any]:
        return {"depth": self.depth, "ops": list(self.ops), "widths": list(self.widths),
                "base_width": self.base_width, "attention": self.attention}

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "SearchSpace":
        return cls(int(d["depth"]), tuple(d["ops"]), tuple(d["widths"]), int(d.get("base_width", 16)),
                   bool(d.get("attention", False)))


def restrict_space(space: Any, **choices: Optional[Sequence[Any]]) -> Any:
    """The sub-space of ``space`` (a :class:`SearchSpace` or a Transformer space) that keeps only the
    given values of its choice lists, e.g. ``restrict_space(s, ops=("conv",))`` or ``encoder_blocks=``;
    each must be a subset of the space's own (a search over it can then use the supernet trained on
    ``space`` and its energy table). ``None`` leaves a list as it is."""
    changes: Dict[str, Tuple[Any, ...]] = {}
    for name, values in choices.items():
        if values is None:
            continue
        have = getattr(space, name, None)
        if not isinstance(have, tuple):
            raise UserError(f"a {type(space).__name__} has no choice list {name!r}")
        kind = type(have[0])
        values = tuple(kind(v) for v in values)
        extra = [v for v in values if v not in have]
        if extra or not values:
            raise UserError(f"{name} {list(values)} is not a non-empty subset of the space's {list(have)}; "
                            "a search can only narrow the space its supernet was trained on")
        changes[name] = tuple(v for v in have if v in values)  # the space's own order
    return dataclasses.replace(space, **changes) if changes else space


def parse_list(text: str, kind: type = str) -> Sequence[Any]:
    """``"conv,adder"`` -> ("conv", "adder"); used by the CLI."""
    try:
        return tuple(kind(t.strip()) for t in text.split(",") if t.strip())
    except ValueError:
        raise UserError(f"cannot parse {text!r} as a comma-separated list of {kind.__name__}") from None
