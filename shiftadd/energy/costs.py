"""Energy tables: picojoules per operation for one platform, loaded from YAML data files.

Each platform is a YAML file (``shiftadd/energy/tables/*.yaml``) whose every value carries
its source and whether it is an estimate. A user table is any file of the same shape; pass
its path wherever a platform name is accepted.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Union

import yaml

from shiftadd.errors import UserError

TABLE_DIR = Path(__file__).with_name("tables")

#: Primitive operations that the counters produce.
OPS = ("mult", "add", "shift", "abs", "cmp")

#: Other spellings of the number formats.
FORMAT_ALIASES = {
    "float32": "fp32", "float": "fp32", "fp-32": "fp32", "f32": "fp32",
    "float16": "fp16", "half": "fp16", "f16": "fp16",
    "int32": "fix32", "fixed32": "fix32", "fx32": "fix32",
    "int16": "fix16", "fixed16": "fix16", "fx16": "fix16",
    "int8": "fix8", "fixed8": "fix8", "fx8": "fix8",
}


@dataclass(frozen=True)
class Entry:
    """One table value with where it comes from."""

    value_pj: float
    source: str
    estimate: bool
    word_bits: Optional[int] = None  # memory entries only

    def as_dict(self) -> Dict[str, Any]:
        d: Dict[str, Any] = {"value_pj": self.value_pj, "source": self.source, "estimate": self.estimate}
        if self.word_bits is not None:
            d["word_bits"] = self.word_bits
        return d


@dataclass
class EnergyTable:
    """Energy per operation (pJ) by operation and number format, plus memory access energies."""

    name: str
    description: str
    formats: Dict[str, Dict[str, Any]]
    ops: Dict[str, Dict[str, Entry]]
    memory: Dict[str, Entry] = field(default_factory=dict)
    op_aliases: Dict[str, str] = field(default_factory=dict)
    path: Optional[str] = None

    def format(self, fmt: str) -> str:
        """Canonical name of ``fmt`` in this table; UserError when the table lacks it."""
        key = str(fmt).strip().lower()
        key = FORMAT_ALIASES.get(key, key)
        if key not in self.formats:
            raise UserError(f"platform {self.name!r} has no number format {fmt!r}; "
                            f"choose one of: {', '.join(self.formats)}")
        return key

    def bits(self, fmt: str) -> int:
        """Bit width of number format ``fmt``."""
        return int(self.formats[self.format(fmt)]["bits"])

    def entry(self, op: str, fmt: str) -> Entry:
        """The table entry used for operation ``op`` in format ``fmt`` (following op_aliases)."""
        f = self.format(fmt)
        seen = []
        name = op
        while name not in self.ops:
            if name in seen or name not in self.op_aliases:
                raise UserError(f"platform {self.name!r} has no energy for operation {op!r}")
            seen.append(name)
            name = self.op_aliases[name]
        if f not in self.ops[name]:
            raise UserError(f"platform {self.name!r} has no energy for {name!r} in format {f!r}")
        return self.ops[name][f]

    def energy(self, op: str, fmt: str) -> float:
        """pJ of one operation ``op`` in format ``fmt``."""
        return self.entry(op, fmt).value_pj

    def memory_pj_per_bit(self, level: str) -> float:
        """pJ per bit moved to or from memory level ``level``."""
        if level not in self.memory:
            raise UserError(f"platform {self.name!r} has no memory level {level!r}; "
                            f"choose one of: {', '.join(self.memory) or '(none)'}")
        e = self.memory[level]
        return e.value_pj / float(e.word_bits or 32)

    def ratio(self, op_a: str, op_b: str, fmt: str) -> float:
        """energy(op_a) / energy(op_b) in format ``fmt``, e.g. ratio('mult', 'add', 'fix32')."""
        return self.energy(op_a, fmt) / self.energy(op_b, fmt)

    def as_dict(self) -> Dict[str, Any]:
        return {
            "name": self.name, "description": self.description, "formats": self.formats,
            "op_aliases": self.op_aliases,
            "ops": {op: {f: e.as_dict() for f, e in per.items()} for op, per in self.ops.items()},
            "memory": {k: e.as_dict() for k, e in self.memory.items()},
        }


def _entry(where: str, raw: Any, memory: bool = False) -> Entry:
    if not isinstance(raw, Mapping):
        raise UserError(f"{where}: expected a mapping with value_pj, source, estimate; got {raw!r}")
    missing = [k for k in ("value_pj", "source", "estimate") if k not in raw]
    if memory and "word_bits" not in raw:
        missing.append("word_bits")
    if missing:
        raise UserError(f"{where}: missing {', '.join(missing)}")
    try:
        value = float(raw["value_pj"])
    except (TypeError, ValueError):
        raise UserError(f"{where}: value_pj must be a number, got {raw['value_pj']!r}") from None
    if not math.isfinite(value) or value < 0:
        raise UserError(f"{where}: value_pj must be a finite number >= 0, got {value}")
    if not isinstance(raw["estimate"], bool):
        raise UserError(f"{where}: estimate must be true or false, got {raw['estimate']!r}")
    word_bits = None
    if memory:
        word_bits = raw["word_bits"]
        if isinstance(word_bits, bool) or not isinstance(word_bits, int) or word_bits < 1:
            raise UserError(f"{where}: word_bits must be a positive integer, got {word_bits!r}")
    return Entry(value, str(raw["source"]), bool(raw["estimate"]), word_bits)


def parse_table(data: Any, origin: str = "<table>") -> EnergyTable:
    """Validate the content of a table file and build an :class:`EnergyTable`."""
    if not isinstance(data, Mapping):
        raise UserError(f"{origin}: an energy table must be a YAML mapping")
    for key in ("name", "formats", "ops"):
        if key not in data:
            raise UserError(f"{origin}: missing top-level key {key!r}")
    formats = data["formats"]
    if not isinstance(formats, Mapping) or not formats:
        raise UserError(f"{origin}: 'formats' must map format names to {{bits: N}}")
    fmts: Dict[str, Dict[str, Any]] = {}
    for f, spec in formats.items():
        bits = spec.get("bits") if isinstance(spec, Mapping) else None
        if isinstance(bits, bool) or not isinstance(bits, int) or bits < 1 or \
                not isinstance(spec.get("float", False), bool):
            raise UserError(f"{origin}: format {f!r} needs a positive integer 'bits' (and 'float' true or false), "
                            f"got {spec!r}")
        fmts[str(f).lower()] = {"bits": int(spec["bits"]), "float": bool(spec.get("float", False))}
    ops: Dict[str, Dict[str, Entry]] = {}
    if not isinstance(data["ops"], Mapping):
        raise UserError(f"{origin}: 'ops' must map operation names to formats")
    for op, per in data["ops"].items():
        if not isinstance(per, Mapping):
            raise UserError(f"{origin}: ops.{op} must map format names to entries")
        ops[str(op)] = {}
        for f, raw in per.items():
            f = str(f).lower()
            if f not in fmts:
                raise UserError(f"{origin}: ops.{op}.{f}: format {f!r} is not declared under 'formats'")
            ops[str(op)][f] = _entry(f"{origin}: ops.{op}.{f}", raw)
    memory = {str(k): _entry(f"{origin}: memory.{k}", v, memory=True)
              for k, v in (data.get("memory") or {}).items()}
    aliases = {str(k): str(v) for k, v in (data.get("op_aliases") or {}).items()}
    return EnergyTable(str(data["name"]), str(data.get("description", "")), fmts, ops, memory, aliases,
                       path=origin)


def _builtin_files() -> Dict[str, Path]:
    return {p.stem: p for p in sorted(TABLE_DIR.glob("*.yaml"))}


def _aliases() -> Dict[str, str]:
    out: Dict[str, str] = {}
    for stem, path in _builtin_files().items():
        out[stem] = stem
        with open(path, encoding="utf-8") as fh:
            for a in (yaml.safe_load(fh) or {}).get("aliases", []) or []:
                out[str(a).lower()] = stem
    return out


def list_platforms() -> List[str]:
    """Names of the built-in platform tables (each also has aliases, e.g. 'asic', 'fpga')."""
    return sorted(_builtin_files())


_CACHE: Dict[str, EnergyTable] = {}


def load_table(platform: Union[str, Path, EnergyTable]) -> EnergyTable:
    """The energy table of ``platform``: a built-in name or alias ('asic45nm', 'asic',
    'fpga_zc706', 'fpga'), a path to a YAML file of the same shape, or a table itself."""
    if isinstance(platform, EnergyTable):
        return platform
    key = str(platform)
    if key in _CACHE:
        return _CACHE[key]
    aliases = _aliases()
    path: Optional[Path] = None
    if key.lower() in aliases:
        path = _builtin_files()[aliases[key.lower()]]
    elif key.endswith((".yaml", ".yml")) or Path(key).is_file():
        path = Path(key)
        if not path.is_file():
            raise UserError(f"energy table file not found: {key}")
    else:
        names = sorted(set(aliases))
        raise UserError(f"unknown platform {key!r}; choose one of: {', '.join(names)} or a YAML table path")
    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh)
    except yaml.YAMLError as exc:
        raise UserError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    except UnicodeDecodeError:
        raise UserError(f"{path}: not a YAML text file (it is not UTF-8 text)") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    table = parse_table(data, str(path))
    if key.lower() in aliases:  # built-in tables never change; user files may
        _CACHE[key] = table
    return table
