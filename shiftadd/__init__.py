"""shiftadd: multiplication-free and hybrid neural networks for PyTorch.

Operators (adder, bit-shift, shift-add) live in :mod:`shiftadd.nn`, their math in
:mod:`shiftadd.ops`; :func:`convert` turns any model into another operator family.
"""
from shiftadd import nn, ops
from shiftadd.nn import (
    AdderConv1d, AdderConv2d, AdderLinear, ShiftAddConv1d, ShiftAddConv2d, ShiftAddLinear,
    ShiftConv1d, ShiftConv2d, ShiftLinear, conv_layer, convert, linear_layer,
)
from shiftadd.optim import AdderAdaptiveLR, scale_adder_gradients

__version__ = "0.1.0"


def backends() -> dict:
    """Which adder backends are available and which one a CPU float32 tensor would use."""
    import torch

    from shiftadd.ops.adder import registered_backends, select_backend

    probe = torch.zeros(1)
    return {
        "available": [n for n, b in registered_backends().items() if b.available()],
        "selected_cpu_float32": select_backend(probe).name,
    }


__all__ = [
    "nn", "ops", "convert", "conv_layer", "linear_layer", "backends",
    "AdderConv1d", "AdderConv2d", "AdderLinear", "ShiftConv1d", "ShiftConv2d", "ShiftLinear",
    "ShiftAddConv1d", "ShiftAddConv2d", "ShiftAddLinear", "AdderAdaptiveLR", "scale_adder_gradients",
]
