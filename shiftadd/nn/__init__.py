"""Conv/Linear-compatible modules of every operator family, spatial shifts, and convert()."""
from shiftadd.nn.adder import ADDER_TYPES, AdderConv1d, AdderConv2d, AdderLinear
from shiftadd.nn.attention import TOKEN_MIXERS, MultiheadAttention, TwoBranchBlock, token_mixer
from shiftadd.nn.convert import convert
from shiftadd.nn.factory import conv_layer, linear_layer
from shiftadd.nn.families import (
    OperatorFamily, families, family_names, get_family, register_family, unregister_family,
)
from shiftadd.nn.lightweight import (
    AdderLightweightConv1d, LightweightBlock, LightweightConv1d, ShiftAddLightweightConv1d,
)
from shiftadd.nn.shift import SHIFT_TYPES, ShiftConv1d, ShiftConv2d, ShiftLinear
from shiftadd.nn.shiftadd import SHIFTADD_TYPES, ShiftAddConv1d, ShiftAddConv2d, ShiftAddLinear
from shiftadd.nn.spatial_shift import (
    SPATIAL_SHIFT_TYPES, ActiveShift, ActiveShift1d, ActiveShift2d, AddressShift, ChannelShift, ShortcutShift,
    SparseShift, SparseShift1d, SparseShift2d, SpatialShift, SpatialShift1d, SpatialShift2d,
    freeze_sparse_shifts, remove_zero_shift_layers, shift_sparsity_report, sparse_shift_penalty,
    total_shift_sparsity,
)

__all__ = [
    "AdderConv1d", "AdderConv2d", "AdderLinear",
    "ShiftConv1d", "ShiftConv2d", "ShiftLinear",
    "ShiftAddConv1d", "ShiftAddConv2d", "ShiftAddLinear",
    "SpatialShift", "SpatialShift1d", "SpatialShift2d", "ActiveShift", "ActiveShift1d", "ActiveShift2d",
    "SparseShift", "SparseShift1d", "SparseShift2d", "ChannelShift", "AddressShift", "ShortcutShift",
    "ADDER_TYPES", "SHIFT_TYPES", "SHIFTADD_TYPES", "SPATIAL_SHIFT_TYPES", "OPS",
    "conv_layer", "linear_layer", "convert",
    "OperatorFamily", "register_family", "unregister_family", "get_family", "family_names", "families",
    "LightweightConv1d", "AdderLightweightConv1d", "ShiftAddLightweightConv1d", "LightweightBlock",
    "MultiheadAttention", "TwoBranchBlock", "TOKEN_MIXERS", "token_mixer",
    "sparse_shift_penalty", "shift_sparsity_report", "total_shift_sparsity",
    "remove_zero_shift_layers", "freeze_sparse_shifts",
]


def __getattr__(name: str):
    if name == "OPS":  # the registered family names, read when asked (families can be added later)
        return family_names()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
