"""An architecture of the hybrid search space as plain data: one (operator, width) per searchable block.

Saved and loaded as YAML (``yaml.safe_load``) or JSON, by file extension::

    depth: 20
    blocks:
    - {op: conv, width: 1.0}
    - {op: adder, width: 0.5}
    ...
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Tuple, Union

from shiftadd.errors import UserError
from shiftadd.utils import atomic_write_text

ArchLike = Union["Architecture", Mapping[str, Any], str, os.PathLike]


@dataclass(frozen=True)
class BlockChoice:
    """The choices of one searchable residual block: its operator family and inner-width multiplier."""

    op: str
    width: float = 1.0

    def as_dict(self) -> Dict[str, Any]:
        return {"op": self.op, "width": self.width}


def blocks_for_depth(depth: int) -> int:
    """Searchable blocks of a CIFAR ResNet of ``depth`` = 6n + 2 layers (3 stages of n blocks)."""
    if depth < 8 or (depth - 2) % 6:
        raise UserError(f"CIFAR ResNet depth must be 6n+2 (8, 14, 20, 32, ...), got {depth}")
    return 3 * ((depth - 2) // 6)


@dataclass(frozen=True)
class Architecture:
    """A hybrid CIFAR ResNet: ``blocks[i]`` is the choice of the i-th residual block (3 stages, in order)."""

    blocks: Tuple[BlockChoice, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "blocks", tuple(self.blocks))
        if not self.blocks or len(self.blocks) % 3:
            raise UserError(f"an architecture needs 3 stages of equally many blocks, got {len(self.blocks)} blocks")

    @property
    def depth(self) -> int:
        return 2 * len(self.blocks) + 2

    @property
    def ops(self) -> Tuple[str, ...]:
        return tuple(b.op for b in self.blocks)

    @classmethod
    def uniform(cls, op: str, depth: int = 20, width: float = 1.0) -> "Architecture":
        """Every block of family ``op`` at ``width`` (the plain ResNet of that family)."""
        return cls(tuple(BlockChoice(op, width) for _ in range(blocks_for_depth(depth))))

    def key(self) -> str:
        """A compact unique string, e.g. ``"conv@1,adder@0.5,..."`` (a dictionary key for caches)."""
        return ",".join(f"{b.op}@{b.width:g}" for b in self.blocks)

    @classmethod
    def from_key(cls, key: str) -> "Architecture":
        return cls(tuple(BlockChoice(op, float(w)) for op, w in (t.split("@") for t in key.split(","))))

    # ---- plain data
    def as_dict(self) -> Dict[str, Any]:
        return {"depth": self.depth, "blocks": [b.as_dict() for b in self.blocks]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], what: str = "architecture") -> "Architecture":
        if not isinstance(data, Mapping) or not isinstance(data.get("blocks"), list):
            raise UserError(f"{what} must be a mapping with a 'blocks' list of {{op, width}} entries")
        blocks: List[BlockChoice] = []
        for i, b in enumerate(data["blocks"]):
            if isinstance(b, str):
                b = {"op": b}
            if not isinstance(b, Mapping) or "op" not in b:
                raise UserError(f"{what}: block {i} must be a mapping with an 'op' key, got {b!r}")
            unknown = set(b) - {"op", "width"}
            if unknown:
                raise UserError(f"{what}: block {i} has unknown key(s) {sorted(unknown)}; known: op, width")
            try:
                width = float(b.get("width", 1.0))
            except (TypeError, ValueError):
                width = float("nan")
            if not width > 0:
                raise UserError(f"{what}: block {i} width must be a positive number, got {b.get('width')!r}")
            blocks.append(BlockChoice(str(b["op"]), width))
        if len(blocks) % 3 or not blocks:
            raise UserError(f"{what}: needs 3 stages of equally many blocks, got {len(blocks)} blocks")
        arch = cls(tuple(blocks))
        depth = data.get("depth", arch.depth)
        if not isinstance(depth, int) or depth != arch.depth:
            raise UserError(f"{what}: depth {depth!r} does not match its {len(blocks)} blocks "
                            f"(depth 6n+2 has 3n blocks; {len(blocks)} blocks is depth {arch.depth})")
        return arch

    def save(self, path: Union[str, "os.PathLike[str]"]) -> None:
        """Write as JSON (``.json``) or YAML (anything else), atomically."""
        write_text_atomic(path, self.as_dict())

    @classmethod
    def load(cls, path: Union[str, "os.PathLike[str]"]) -> "Architecture":
        path = os.fspath(path)
        return cls.from_dict(read_arch_data(path), what=f"architecture file {path!r}")

    def __str__(self) -> str:
        n = len(self.blocks) // 3
        stages = []
        for s in range(3):
            stages.append(" ".join(_short(b) for b in self.blocks[s * n:(s + 1) * n]))
        return f"hybrid-resnet{self.depth}[ " + " | ".join(stages) + " ]"


def write_text_atomic(path: Union[str, "os.PathLike[str]"], data: Mapping[str, Any]) -> None:
    """Write ``data`` as JSON (``.json``) or YAML (anything else), atomically (an architecture file)."""
    path = os.fspath(path)
    if path.endswith(".json"):
        text = json.dumps(dict(data), indent=1) + "\n"
    else:
        import yaml

        text = yaml.safe_dump(dict(data), sort_keys=False, default_flow_style=None)
    atomic_write_text(path, text)


def read_arch_data(path: str) -> Any:
    """The parsed content of an architecture file (JSON by extension, else YAML); one-line UserError."""
    if not os.path.isfile(path):
        raise UserError(f"architecture file {path!r} not found")
    import yaml

    with open(path) as f:
        text = f.read()
    try:
        return json.loads(text) if path.endswith(".json") else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:  # json.JSONDecodeError is a ValueError
        raise UserError(f"cannot parse architecture file {path!r}: {str(exc).splitlines()[0]}") from None


def _short(b: BlockChoice) -> str:
    return b.op if b.width == 1.0 else f"{b.op}x{b.width:g}"


def as_architecture(arch: ArchLike) -> Architecture:
    """An :class:`Architecture` from itself, a dict (``as_dict`` form) or a YAML/JSON file path."""
    if isinstance(arch, Architecture):
        return arch
    if isinstance(arch, Mapping):
        return Architecture.from_dict(arch)
    if isinstance(arch, (str, os.PathLike)):
        return Architecture.load(arch)
    raise UserError(f"arch must be an Architecture, a dict or a YAML/JSON path, got {type(arch).__name__}")
