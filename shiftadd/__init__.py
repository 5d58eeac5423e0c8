"""shiftadd: multiplication-free and hybrid neural networks for PyTorch.

Operators (adder, bit-shift, shift-add, spatial shift) live in :mod:`shiftadd.nn`, their math
in :mod:`shiftadd.ops`; :func:`convert` turns any model into another operator family. The model
zoo (:mod:`shiftadd.models`), data (:mod:`shiftadd.data`), training (:mod:`shiftadd.train`),
energy model (:mod:`shiftadd.energy`), quantization (:mod:`shiftadd.quant`), pruning
(:mod:`shiftadd.prune`), fast kernels (:mod:`shiftadd.kernels`), integer export
(:mod:`shiftadd.export`) and hybrid architecture search (:mod:`shiftadd.nas`) are imported on first use.
"""
import importlib
from typing import Any, Dict

from shiftadd import nn, ops
from shiftadd.nn import (
    ActiveShift2d, AdderConv1d, AdderConv2d, AdderLightweightConv1d, AdderLinear, LightweightBlock, LightweightConv1d,
    MultiheadAttention, OperatorFamily, ShiftAddConv1d, ShiftAddConv2d, ShiftAddLightweightConv1d, ShiftAddLinear,
    ShiftConv1d, ShiftConv2d, ShiftLinear, SparseShift2d, SpatialShift2d, TwoBranchBlock, conv_layer, convert,
    family_names, get_family, linear_layer, register_family,
)
from shiftadd.optim import AdderAdaptiveLR, scale_adder_gradients

__version__ = "0.1.0"

_LAZY = ("models", "data", "train", "energy", "quant", "prune", "kernels", "export", "nas")


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return importlib.import_module(f"shiftadd.{name}")
    raise AttributeError(f"module 'shiftadd' has no attribute {name!r}")


def backends() -> Dict[str, Any]:
    """Which adder backends exist, which are available and which one layers use."""
    try:
        from shiftadd.kernels import backends as kernel_backends
    except ImportError:  # kernels package unavailable: only the reference exists
        import torch

        from shiftadd.ops.adder import select_backend

        return {"in_use": {"cpu/float32": select_backend(torch.zeros(1)).name}}
    return kernel_backends()


__all__ = [
    "nn", "ops", *_LAZY, "convert", "conv_layer", "linear_layer", "backends",
    "OperatorFamily", "register_family", "get_family", "family_names",
    "AdderConv1d", "AdderConv2d", "AdderLinear", "ShiftConv1d", "ShiftConv2d", "ShiftLinear",
    "ShiftAddConv1d", "ShiftAddConv2d", "ShiftAddLinear", "SpatialShift2d", "ActiveShift2d", "SparseShift2d",
    "AdderAdaptiveLR", "scale_adder_gradients",
    "LightweightConv1d", "AdderLightweightConv1d", "ShiftAddLightweightConv1d", "LightweightBlock",
    "MultiheadAttention", "TwoBranchBlock",
]
