"""The registry of operator families: what ``op="..."`` means everywhere in shiftadd.

Every family (``conv``, ``adder``, ``shift-q``, ``shift-ps``, ``shiftadd``, ``shiftadd-fixed``) is one
:class:`OperatorFamily` record: its conv/linear layer classes, the layer options it accepts and its
properties. :func:`shiftadd.nn.conv_layer`, the model zoo, the CLI help texts and the energy summaries
read this registry only, so a new family is one :func:`register_family` call::

    register_family(OperatorFamily("my-op", "my operator", conv={2: MyConv2d}, linear=MyLinear,
                                   options=frozenset({"alpha"}), has_adder=False, has_shift=False,
                                   multiplication_free=True))
"""
from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Dict, FrozenSet, Mapping, Tuple

import torch.nn as nn

from shiftadd.nn.adder import AdderConv1d, AdderConv2d, AdderLinear
from shiftadd.nn.shift import ShiftConv1d, ShiftConv2d, ShiftLinear
from shiftadd.nn.shiftadd import ShiftAddConv1d, ShiftAddConv2d, ShiftAddLinear

#: Options of the adder layers (AdderNet's gradient mode and adaptive learning-rate coefficient).
ADDER_OPTIONS: FrozenSet[str] = frozenset({"grad_mode", "eta"})
#: Options of the bit-shift layers (DeepShift's weight/activation quantization).
SHIFT_OPTIONS: FrozenSet[str] = frozenset({"weight_bits", "rounding", "activation_bits", "activation_signed", "init"})
#: Options every layer class accepts.
COMMON_OPTIONS: FrozenSet[str] = frozenset({"device", "dtype"})


@dataclass(frozen=True, eq=False)
class OperatorFamily:
    """One operator family: its layer classes, accepted options and properties."""

    name: str
    description: str
    conv: Mapping[int, type]
    linear: type
    options: FrozenSet[str] = frozenset()
    fixed_options: Mapping[str, Any] = field(default_factory=dict)
    has_adder: bool = False
    has_shift: bool = False
    multiplication_free: bool = False
    paper: str = ""

    def __post_init__(self) -> None:
        if not self.name or not isinstance(self.name, str):
            raise ValueError(f"an operator family needs a non-empty name, got {self.name!r}")
        object.__setattr__(self, "conv", MappingProxyType(dict(self.conv)))
        object.__setattr__(self, "fixed_options", MappingProxyType(dict(self.fixed_options)))
        object.__setattr__(self, "options", frozenset(self.options))
        clash = set(self.options) & set(self.fixed_options)
        if clash:
            raise ValueError(f"family {self.name!r}: options {sorted(clash)} are both free and fixed")

    def layer_options(self, options: Mapping[str, Any]) -> Dict[str, Any]:
        """The subset of ``options`` this family's layers take, plus its fixed options.

        Options that only other families understand are dropped (so one option set can build a model in
        every family); names no registered family knows raise ``ValueError``.
        """
        known = known_options()
        unknown = set(options) - known - COMMON_OPTIONS
        if unknown:
            raise ValueError(f"unknown layer option(s) {sorted(unknown)}; known: {sorted(known)}")
        out = {k: v for k, v in options.items() if k in self.options or k in COMMON_OPTIONS}
        out.update(self.fixed_options)
        return out


_FAMILIES: Dict[str, OperatorFamily] = {}


def register_family(family: OperatorFamily) -> OperatorFamily:
    """Add ``family`` to the registry; ``ValueError`` if its name is taken."""
    if not isinstance(family, OperatorFamily):
        raise TypeError(f"register_family() takes an OperatorFamily, got {type(family).__name__}")
    if family.name in _FAMILIES:
        raise ValueError(f"operator family {family.name!r} is already registered")
    _FAMILIES[family.name] = family
    return family


def unregister_family(name: str) -> OperatorFamily:
    """Remove family ``name`` (for tests and plugins that registered a temporary family)."""
    family = get_family(name)
    del _FAMILIES[name]
    return family


def get_family(name: str) -> OperatorFamily:
    """The family called ``name``; ``ValueError`` naming the choices if there is none."""
    try:
        return _FAMILIES[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown op {name!r}; choose one of: {', '.join(_FAMILIES)}") from None


def family_names() -> Tuple[str, ...]:
    """Names of the registered families, in registration order."""
    return tuple(_FAMILIES)


def families(**props: Any) -> Tuple[OperatorFamily, ...]:
    """The registered families whose attributes equal ``props``, e.g. ``families(has_adder=True)``."""
    fields = OperatorFamily.__dataclass_fields__
    bad = sorted(set(props) - set(fields))
    if bad:
        raise ValueError(f"unknown family propert{'y' if len(bad) == 1 else 'ies'} {bad}; known: {sorted(fields)}")
    return tuple(f for f in _FAMILIES.values() if all(getattr(f, k) == v for k, v in props.items()))


def known_options() -> FrozenSet[str]:
    """Every layer option some registered family accepts (without device/dtype)."""
    return frozenset().union(*(f.options for f in _FAMILIES.values()))


def op_help(default: str = "") -> str:
    """``--op`` help text naming the registered families (descriptions: ``shiftadd models``)."""
    tail = f" (default {default})" if default else ""
    return f"operator family: {', '.join(_FAMILIES)}{tail}; see `shiftadd models`"


_CONV = {1: nn.Conv1d, 2: nn.Conv2d}
_ADDER_CONV = {1: AdderConv1d, 2: AdderConv2d}
_SHIFT_CONV = {1: ShiftConv1d, 2: ShiftConv2d}
_SHIFTADD_CONV = {1: ShiftAddConv1d, 2: ShiftAddConv2d}
_DEEPSHIFT = "DeepShift (Elhoushi et al. 2021)"
_SHIFTADDNET = "ShiftAddNet (You et al., NeurIPS 2020)"

register_family(OperatorFamily(
    "conv", "multiplication (ordinary convolution / linear layer)", conv=_CONV, linear=nn.Linear))
register_family(OperatorFamily(
    "adder", "AdderNet: -sum|x - w| (additions only)", conv=_ADDER_CONV, linear=AdderLinear,
    options=ADDER_OPTIONS, has_adder=True, multiplication_free=True, paper="AdderNet (Chen et al., CVPR 2020)"))
register_family(OperatorFamily(
    "shift-q", "DeepShift-Q: weights rounded to +-2^p (bit shifts)", conv=_SHIFT_CONV, linear=ShiftLinear,
    options=SHIFT_OPTIONS, fixed_options={"mode": "q"}, has_shift=True, multiplication_free=True,
    paper=_DEEPSHIFT))
register_family(OperatorFamily(
    "shift-ps", "DeepShift-PS: trained shift p and sign s (bit shifts)", conv=_SHIFT_CONV, linear=ShiftLinear,
    options=SHIFT_OPTIONS, fixed_options={"mode": "ps"}, has_shift=True, multiplication_free=True,
    paper=_DEEPSHIFT))
register_family(OperatorFamily(
    "shiftadd", "ShiftAddNet: bit-shift layer then adder layer", conv=_SHIFTADD_CONV, linear=ShiftAddLinear,
    options=ADDER_OPTIONS | SHIFT_OPTIONS, fixed_options={"mode": "ps"}, has_adder=True, has_shift=True,
    multiplication_free=True, paper=_SHIFTADDNET))
register_family(OperatorFamily(
    "shiftadd-fixed", "ShiftAddNet with the shift layer frozen", conv=_SHIFTADD_CONV, linear=ShiftAddLinear,
    options=ADDER_OPTIONS | SHIFT_OPTIONS, fixed_options={"mode": "ps", "fixed_shift": True}, has_adder=True,
    has_shift=True, multiplication_free=True, paper=_SHIFTADDNET))
