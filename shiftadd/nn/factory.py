"""Build a conv or linear layer of any operator family by name."""
from __future__ import annotations

from typing import Any, Dict

import torch.nn as nn

from shiftadd.nn.adder import AdderConv1d, AdderConv2d, AdderLinear
from shiftadd.nn.base import IntOrTuple
from shiftadd.nn.shift import ShiftConv1d, ShiftConv2d, ShiftLinear
from shiftadd.nn.shiftadd import ShiftAddConv1d, ShiftAddConv2d, ShiftAddLinear

OPS = ("conv", "adder", "shift-q", "shift-ps", "shiftadd", "shiftadd-fixed")
ADDER_OPTIONS = frozenset({"grad_mode", "eta"})
SHIFT_OPTIONS = frozenset({"weight_bits", "rounding", "activation_bits", "activation_signed"})
COMMON_OPTIONS = frozenset({"device", "dtype"})


def check_op(op: str) -> str:
    if op not in OPS:
        raise ValueError(f"unknown op {op!r}; choose one of: {', '.join(OPS)}")
    return op


def _options_for(op: str, options: Dict[str, Any]) -> Dict[str, Any]:
    """Keep the options that ``op`` understands; reject names no operator knows."""
    unknown = set(options) - ADDER_OPTIONS - SHIFT_OPTIONS - COMMON_OPTIONS
    if unknown:
        raise ValueError(
            f"unknown layer option(s) {sorted(unknown)}; known: {sorted(ADDER_OPTIONS | SHIFT_OPTIONS)}"
        )
    keep = set(COMMON_OPTIONS)
    if op in ("adder", "shiftadd", "shiftadd-fixed"):
        keep |= ADDER_OPTIONS
    if op in ("shift-q", "shift-ps", "shiftadd", "shiftadd-fixed"):
        keep |= SHIFT_OPTIONS
    out = {k: v for k, v in options.items() if k in keep}
    if op == "shift-q":
        out["mode"] = "q"
    elif op.startswith("shift"):
        out["mode"] = "ps"
    if op == "shiftadd-fixed":
        out["fixed_shift"] = True
    return out


_CONV = {
    1: {"conv": nn.Conv1d, "adder": AdderConv1d, "shift": ShiftConv1d, "shiftadd": ShiftAddConv1d},
    2: {"conv": nn.Conv2d, "adder": AdderConv2d, "shift": ShiftConv2d, "shiftadd": ShiftAddConv2d},
}
_LINEAR = {"conv": nn.Linear, "adder": AdderLinear, "shift": ShiftLinear, "shiftadd": ShiftAddLinear}


def _family(op: str) -> str:
    return {"shift-q": "shift", "shift-ps": "shift", "shiftadd-fixed": "shiftadd"}.get(op, op)


def conv_layer(op: str, in_channels: int, out_channels: int, kernel_size: IntOrTuple, stride: IntOrTuple = 1,
               padding: IntOrTuple = 0, dilation: IntOrTuple = 1, groups: int = 1, bias: bool = False,
               dim: int = 2, **options: Any) -> nn.Module:
    """A ``dim``-D convolution of operator family ``op`` (one of :data:`OPS`).

    ``options`` are passed to the layers that understand them (``eta``/``grad_mode`` for adders,
    ``weight_bits``/``rounding``/``activation_bits`` for shifts) and ignored by the others.
    """
    check_op(op)
    if dim not in _CONV:
        raise ValueError(f"dim must be 1 or 2, got {dim!r}")
    cls = _CONV[dim][_family(op)]
    return cls(in_channels, out_channels, kernel_size, stride=stride, padding=padding, dilation=dilation,
               groups=groups, bias=bias, **_options_for(op, options))


def linear_layer(op: str, in_features: int, out_features: int, bias: bool = True, **options: Any) -> nn.Module:
    """A fully-connected layer of operator family ``op`` (one of :data:`OPS`)."""
    check_op(op)
    return _LINEAR[_family(op)](in_features, out_features, bias=bias, **_options_for(op, options))
