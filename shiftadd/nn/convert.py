"""convert(): turn the Conv1d/Conv2d/Linear layers of any model into another operator family."""
from __future__ import annotations

from typing import Any, List, Sequence, Tuple, Type

import torch
import torch.nn as nn

from shiftadd.nn.factory import check_op, conv_layer, linear_layer
from shiftadd.utils import Patterns, name_matches, replace_module

CONVERTIBLE = (nn.Conv1d, nn.Conv2d, nn.Linear)


def _conv_padding(conv: nn.Module, name: str) -> Tuple[int, ...]:
    if conv.padding_mode != "zeros":
        raise ValueError(f"layer {name!r}: padding_mode={conv.padding_mode!r} cannot be converted (only 'zeros')")
    if conv.padding == "valid":
        return (0,) * len(conv.kernel_size)
    if conv.padding == "same":
        totals = [d * (k - 1) for k, d in zip(conv.kernel_size, conv.dilation)]
        if any(t % 2 for t in totals):
            raise ValueError(f"layer {name!r}: padding='same' with an even kernel is not supported; use ints")
        return tuple(t // 2 for t in totals)
    return tuple(conv.padding)


def candidates(model: nn.Module, types: Sequence[Type[nn.Module]] = CONVERTIBLE) -> List[Tuple[str, nn.Module]]:
    """(name, module) of the convertible layers in registration order (exact types only)."""
    return [(n, m) for n, m in model.named_modules() if type(m) in tuple(types)]


def convert(
    model: nn.Module,
    op: str,
    skip_first_last: bool = True,
    include: Patterns = None,
    exclude: Patterns = None,
    types: Sequence[Type[nn.Module]] = CONVERTIBLE,
    init_from_weights: bool = False,
    **options: Any,
) -> nn.Module:
    """Replace ``model``'s Conv1d/Conv2d/Linear layers, in place, by operator family ``op``.

    * ``skip_first_last``: leave the first and the last convertible layer (in registration
      order) multiplicative, the common practice of AdderNet, DeepShift and ShiftAddNet.
    * ``include`` / ``exclude``: fnmatch patterns on module names (``"layer1.*"``); ``types``
      restricts the layer types converted.
    * ``init_from_weights``: start from the existing weights (adder: copied; shift:
      p = round(log2|w|), s = sign(w); shift-add: its shift part). Biases are always copied.
    * ``options``: layer options (``eta``, ``weight_bits``, ...), see :func:`shiftadd.nn.conv_layer`.

    Returns ``model``. Adder layers output large negative values: follow them with BatchNorm.
    """
    check_op(op)
    if op == "conv":
        return model
    for t in types:
        if t not in CONVERTIBLE:
            raise ValueError(f"types may only contain {[c.__name__ for c in CONVERTIBLE]}, got {t!r}")
    found = candidates(model, types)
    if skip_first_last:
        found = found[1:-1]
    for name, layer in found:
        if not name_matches(name, include, exclude):
            continue
        new = _replacement(layer, name, op, options)
        ref = next(layer.parameters())
        new.to(device=ref.device, dtype=ref.dtype)
        _copy_weights(layer, new, init_from_weights)
        model = replace_module(model, name, new)
    return model


def _replacement(layer: nn.Module, name: str, op: str, options: dict) -> nn.Module:
    has_bias = layer.bias is not None
    if isinstance(layer, nn.Linear):
        return linear_layer(op, layer.in_features, layer.out_features, bias=has_bias, **options)
    return conv_layer(op, layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride,
                      _conv_padding(layer, name), layer.dilation, layer.groups, bias=has_bias,
                      dim=1 if isinstance(layer, nn.Conv1d) else 2, **options)


@torch.no_grad()
def _copy_weights(old: nn.Module, new: nn.Module, init_from_weights: bool) -> None:
    target = getattr(new, "shift", None) if hasattr(new, "adder") else new
    if init_from_weights and target is not None:
        if hasattr(target, "set_weight"):
            target.set_weight(old.weight)
        else:
            target.weight.copy_(old.weight)
    if old.bias is not None and new.bias is not None:
        new.bias.copy_(old.bias)
