"""Export trained models to integers.

* Per-layer integer inference inside PyTorch: :func:`to_integer` replaces every adder / shift layer of a
  model by an integer module (:class:`IntAdderConv2d`, :class:`IntAdderLinear`, :class:`IntShiftConv2d`,
  :class:`IntShiftLinear`) that runs on the kernels of :mod:`shiftadd.kernels.integer`; layer types are
  looked up in :data:`INTEGER_HANDLERS` (:func:`register_integer_handler` adds one).
* Whole-network deployment: :func:`build_integer_network` turns a trained model into the integer
  reference network (power-of-two activation scales, shared-scale adders, shift layers, folded BatchNorm)
  and :func:`export_c` writes the standalone C99 library that reproduces it bit for bit (docs/deploy.md).
"""
from shiftadd.export.cgen import export_c, generate_c
from shiftadd.export.convert import (
    INTEGER_HANDLERS, IntegerHandler, IntegerOptions, integer_handler, register_integer_handler, to_integer,
    to_integer_module,
)
from shiftadd.export.intnet import IntegerNetwork, build_integer_network
from shiftadd.export.modules import DEFAULT_ACTIVATION_BITS, IntAdderConv2d, IntAdderLinear, IntShiftConv2d, IntShiftLinear

__all__ = [
    "to_integer", "to_integer_module", "register_integer_handler", "integer_handler", "INTEGER_HANDLERS",
    "IntegerHandler", "IntegerOptions", "DEFAULT_ACTIVATION_BITS",
    "IntAdderConv2d", "IntAdderLinear", "IntShiftConv2d", "IntShiftLinear",
    "IntegerNetwork", "build_integer_network", "export_c", "generate_c",
]
