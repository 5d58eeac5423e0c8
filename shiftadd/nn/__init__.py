"""Conv/Linear-compatible modules of every operator family, and convert()."""
from shiftadd.nn.adder import ADDER_TYPES, AdderConv1d, AdderConv2d, AdderLinear
from shiftadd.nn.convert import convert
from shiftadd.nn.factory import OPS, conv_layer, linear_layer
from shiftadd.nn.shift import SHIFT_TYPES, ShiftConv1d, ShiftConv2d, ShiftLinear
from shiftadd.nn.shiftadd import SHIFTADD_TYPES, ShiftAddConv1d, ShiftAddConv2d, ShiftAddLinear

__all__ = [
    "AdderConv1d", "AdderConv2d", "AdderLinear",
    "ShiftConv1d", "ShiftConv2d", "ShiftLinear",
    "ShiftAddConv1d", "ShiftAddConv2d", "ShiftAddLinear",
    "ADDER_TYPES", "SHIFT_TYPES", "SHIFTADD_TYPES", "OPS",
    "conv_layer", "linear_layer", "convert",
]
