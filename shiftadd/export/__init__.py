"""Export trained models for integer inference (and, later, code generation).

:func:`to_integer` replaces every adder / shift layer of a model by an integer inference module
(:class:`IntAdderConv2d`, :class:`IntAdderLinear`, :class:`IntShiftConv2d`, :class:`IntShiftLinear`)
that runs on the integer kernels of :mod:`shiftadd.kernels.integer`. Layer types are looked up in
:data:`INTEGER_HANDLERS`; :func:`register_integer_handler` adds one.
"""
from shiftadd.export.convert import (
    INTEGER_HANDLERS, IntegerHandler, IntegerOptions, integer_handler, register_integer_handler, to_integer,
    to_integer_module,
)
from shiftadd.export.modules import DEFAULT_ACTIVATION_BITS, IntAdderConv2d, IntAdderLinear, IntShiftConv2d, IntShiftLinear

__all__ = [
    "to_integer", "to_integer_module", "register_integer_handler", "integer_handler", "INTEGER_HANDLERS",
    "IntegerHandler", "IntegerOptions", "DEFAULT_ACTIVATION_BITS",
    "IntAdderConv2d", "IntAdderLinear", "IntShiftConv2d", "IntShiftLinear",
]
