"""to_integer(): trained float layers -> integer inference modules, one handler per float layer type.

A handler turns one trained layer into its integer module; :data:`INTEGER_HANDLERS` maps float layer
types to handlers, and supporting a new layer type is one entry (or :func:`register_integer_handler`).
Subclasses of a registered type use its handler (nearest base class first).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Optional, Sequence, Type

import torch.nn as nn

from shiftadd.export.modules import IntAdderConv2d, IntAdderLinear, IntShiftConv2d, IntShiftLinear
from shiftadd.nn import AdderConv1d, AdderConv2d, AdderLinear, ShiftConv1d, ShiftConv2d, ShiftLinear


@dataclass(frozen=True)
class IntegerOptions:
    """What the handlers may use: ``act_max`` fixes an adder layer's activation range (None: per
    batch, or the layer's shared-scale quantizer); ``activation_bits`` (int_bits, frac_bits) is the
    fixed-point format of shift layers that have none of their own."""

    act_max: Optional[float] = None
    activation_bits: Optional[Sequence[int]] = None


IntegerHandler = Callable[[nn.Module, IntegerOptions], nn.Module]


def _with_act_max(int_cls) -> IntegerHandler:
    """Handler ``int_cls.from_float(layer, options.act_max)`` (adder layers)."""
    return lambda layer, options: int_cls.from_float(layer, options.act_max)


def _with_activation_bits(int_cls) -> IntegerHandler:
    """Handler ``int_cls.from_float(layer, options.activation_bits)`` (shift layers)."""
    return lambda layer, options: int_cls.from_float(layer, options.activation_bits)


#: float layer type -> handler building its integer inference module
INTEGER_HANDLERS: Dict[Type[nn.Module], IntegerHandler] = {
    AdderConv1d: _with_act_max(IntAdderConv2d),
    AdderConv2d: _with_act_max(IntAdderConv2d),
    AdderLinear: _with_act_max(IntAdderLinear),
    ShiftConv1d: _with_activation_bits(IntShiftConv2d),
    ShiftConv2d: _with_activation_bits(IntShiftConv2d),
    ShiftLinear: _with_activation_bits(IntShiftLinear),
}


def register_integer_handler(*float_types: Type[nn.Module]) -> Callable[[IntegerHandler], IntegerHandler]:
    """Decorator: use the decorated ``handler(layer, options) -> nn.Module`` for ``float_types``."""
    if not float_types:
        raise ValueError("register_integer_handler needs at least one float layer type")

    def register(handler: IntegerHandler) -> IntegerHandler:
        for t in float_types:
            INTEGER_HANDLERS[t] = handler
        return handler

    return register


def integer_handler(module: nn.Module) -> Optional[IntegerHandler]:
    """The handler for ``module``'s type (or its nearest registered base class), None if there is none."""
    for cls in type(module).__mro__:
        handler = INTEGER_HANDLERS.get(cls)
        if handler is not None:
            return handler
    return None


def to_integer_module(module: nn.Module, act_max: Optional[float] = None,
                      activation_bits: Optional[Sequence[int]] = None) -> nn.Module:
    """The integer inference version of one trained layer of a registered type.

    AdderConv1d/2d -> IntAdderConv2d, AdderLinear -> IntAdderLinear (shared-scale int8);
    ShiftConv1d/2d -> IntShiftConv2d, ShiftLinear -> IntShiftLinear (fixed-point activations).
    """
    handler = integer_handler(module)
    if handler is None:
        known = ", ".join(sorted(t.__name__ for t in INTEGER_HANDLERS))
        raise TypeError(f"no integer version of {type(module).__name__}; expected one of: {known}")
    return handler(module, IntegerOptions(act_max, activation_bits))


def to_integer(model: nn.Module, activation_bits: Optional[Sequence[int]] = None,
               act_max: Optional[float] = None) -> nn.Module:
    """Replace every layer of ``model`` that has an integer handler (in place) by its integer module.

    Adder layers use a dynamic shared scale (per batch) unless ``act_max`` is given or they carry a
    shared-scale quantizer; call ``.calibrate(x)`` on them to fix it. Returns the model (the integer
    module itself when ``model`` is such a layer). Other layers (BN, ReLU, float convs) stay as they are;
    containers such as shift-add layers are converted child by child.
    """
    if integer_handler(model) is not None:
        return to_integer_module(model, act_max, activation_bits)
    for name, child in list(model.named_children()):
        new = to_integer(child, activation_bits, act_max)
        if new is not child:
            setattr(model, name, new)
    return model


__all__ = ["IntegerOptions", "IntegerHandler", "INTEGER_HANDLERS", "register_integer_handler", "integer_handler",
           "to_integer_module", "to_integer"]
