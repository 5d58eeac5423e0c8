"""Build a conv or linear layer of any operator family by name (see :mod:`shiftadd.nn.families`)."""
from __future__ import annotations

from typing import Any, Tuple

import torch.nn as nn

from shiftadd.nn.base import IntOrTuple
from shiftadd.nn.families import ADDER_OPTIONS, COMMON_OPTIONS, SHIFT_OPTIONS, family_names, get_family

__all__ = ["OPS", "ADDER_OPTIONS", "SHIFT_OPTIONS", "COMMON_OPTIONS", "check_op", "conv_layer", "linear_layer"]


def __getattr__(name: str) -> Any:
    if name == "OPS":  # the registered family names, read when asked (families can be added later)
        return family_names()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


OPS: Tuple[str, ...]  # provided by __getattr__ above


def check_op(op: str) -> str:
    """``op`` if it names a registered operator family, else ``ValueError`` listing the choices."""
    return get_family(op).name


def conv_layer(op: str, in_channels: int, out_channels: int, kernel_size: IntOrTuple, stride: IntOrTuple = 1,
               padding: IntOrTuple = 0, dilation: IntOrTuple = 1, groups: int = 1, bias: bool = False,
               dim: int = 2, **options: Any) -> nn.Module:
    """A ``dim``-D convolution of operator family ``op`` (one of :data:`OPS`).

    ``options`` are passed to the layers that understand them (``eta``/``grad_mode`` for adders,
    ``weight_bits``/``rounding``/``activation_bits`` for shifts) and ignored by the others.
    ``bias`` defaults to False: the zoo follows every convolution by BatchNorm, which makes a bias redundant.
    """
    family = get_family(op)
    if dim not in family.conv:
        raise ValueError(f"dim must be one of {sorted(family.conv)} for op {op!r}, got {dim!r}")
    return family.conv[dim](in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                            dilation=dilation, groups=groups, bias=bias, **family.layer_options(options))


def linear_layer(op: str, in_features: int, out_features: int, bias: bool = True, **options: Any) -> nn.Module:
    """A fully-connected layer of operator family ``op`` (one of :data:`OPS`).

    ``bias`` defaults to True in every family, as in ``nn.Linear`` (the class default of ``AdderLinear``
    alone is False, following AdderNet, whose adder layers are followed by BatchNorm).
    """
    family = get_family(op)
    return family.linear(in_features, out_features, bias=bias, **family.layer_options(options))
