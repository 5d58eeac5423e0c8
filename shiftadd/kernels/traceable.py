"""The C++ ops as traceable operators, so ``torch.compile`` and ``torch.export`` work on adder layers.

The extension registers its kernels as ``torch.ops.shiftadd_cpu.*`` with plain function pointers
(``TORCH_LIBRARY`` in ``cpu/adder.cpp``), which PyTorch treats as CompositeImplicitAutograd: tracers
call them on FakeTensors (no data) and they crash, and no fake kernel can be added to them. So each
tensor op is re-declared once as ``torch.ops.shiftadd.<name>`` with the same schema, its CPU kernel
being the C++ op and its fake kernel (:data:`_FAKES`) giving the output's shape and dtype.
:func:`traceable_ops` returns a namespace with those operators (the other ops, e.g. ``isa``, as
they are), which :func:`shiftadd.kernels._build.load_extension` hands to every caller.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Sequence

import torch

from shiftadd.ops.im2col import conv_output_size

NAMESPACE = "shiftadd"


def _conv_out(x: torch.Tensor, w: torch.Tensor, stride: Sequence[int], padding: Sequence[int],
              dilation: Sequence[int], dtype: torch.dtype) -> torch.Tensor:
    size = conv_output_size(x.shape[2:], w.shape[2:], stride, padding, dilation)
    return x.new_empty((x.shape[0], w.shape[0], *size), dtype=dtype)


def _mm_out(X: torch.Tensor, W: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return X.new_empty((X.shape[0], X.shape[1], W.shape[1]), dtype=dtype)


def _like(t: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(t, memory_format=torch.contiguous_format)


# op name -> fake kernel (arguments as in the C++ signature)
_FAKES: Dict[str, Callable[..., torch.Tensor]] = {
    "conv_forward": lambda x, w, s, p, d, g, exact: _conv_out(x, w, s, p, d, x.dtype),
    "conv_grad_input": lambda x, w, dout, s, p, d, g, mode: _like(x),
    "conv_grad_weight_sign": lambda x, w, dout, s, p, d, g: _like(w),
    "conv_backward": lambda x, w, dout, s, p, d, g, mode, want_input, want_weight: (
        _like(x) if want_input else x.new_empty(0), _like(w) if want_weight else w.new_empty(0)),
    "mm_forward": lambda X, W, exact: _mm_out(X, W, X.dtype),
    "mm_grad_input": lambda X, W, dY, mode: _like(X),
    "mm_grad_weight_sign": lambda X, W, dY: _like(W),
    "sad_conv": lambda qx, qw, s, p, d, g: _conv_out(qx, qw, s, p, d, torch.int32),
    "sad_mm": lambda qX, qW: _mm_out(qX, qW, torch.int32),
    "shift_conv": lambda qx, shift, sign, s, p, d, g: _conv_out(qx, shift, s, p, d, torch.int32),
    "shift_conv64": lambda qx, shift, sign, s, p, d, g: _conv_out(qx, shift, s, p, d, torch.int64),
}

_library: Optional[torch.library.Library] = None


class TraceableOps:
    """The extension's ops: the tensor ops as ``torch.ops.shiftadd.*``, anything else from ``raw``."""

    def __init__(self, raw: Any) -> None:
        self._raw = raw
        for name in _FAKES:
            setattr(self, name, getattr(torch.ops, NAMESPACE).__getattr__(name))

    def __getattr__(self, name: str) -> Any:  # only for names not set in __init__ (isa, set_isa, ...)
        return getattr(self.__dict__["_raw"], name)


def traceable_ops(raw: Any) -> TraceableOps:
    """Declare ``torch.ops.shiftadd.*`` from the loaded extension ``raw`` (once) and return them."""
    global _library
    if _library is None:
        lib = torch.library.Library(NAMESPACE, "DEF")
        for name, fake in _FAKES.items():
            op = getattr(raw, name).default
            lib.define(str(op._schema).split("::", 1)[1])
            lib.impl(name, op, "CPU")
            torch.library.register_fake(f"{NAMESPACE}::{name}", fake, lib=lib)
        _library = lib
    return TraceableOps(raw)
