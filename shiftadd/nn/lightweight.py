"""Lightweight convolutions over time as modules (math in :mod:`shiftadd.ops.lightweight`).

Every module here maps (B, T, C) -> (B, T, C) and has the same call:

    out = conv(x, padding_mask=None, state=None)

``padding_mask`` (B, T) is True at padded positions (they are read as zeros). ``state`` turns
on incremental decoding (causal modules only): pass the same dict at every step with the new
positions ``x`` (B, t, C); it keeps a rolling buffer of the last K-1 inputs, so stepping
gives exactly the full-sequence result, through the same operator (the adder variants stay
multiplication-free while decoding).

* :class:`LightweightConv1d` - Wu et al. (ICLR 2019): H heads, softmax-normalised kernel shared
  inside a head, optional weight dropout.
* :class:`AdderLightweightConv1d` - out = -sum_k |x - w|, AdderNet gradients and adaptive LR.
* :class:`ShiftAddLightweightConv1d` - a DeepShift-PS ShiftLinear over channels, then the adder
  time convolution.
* :class:`LightweightBlock` - Wu et al.'s block: input projection (+ GLU), one of the above,
  output projection; the projections of any operator family (``proj_op``).

Energy: :func:`shiftadd.energy.count_ops` counts them (cost rules of the two time convolutions in
:mod:`shiftadd.energy.rules`; the blocks are counted through their layers and functional calls).
"""
from __future__ import annotations

from typing import Any, Dict, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from shiftadd.nn.adder import _check_adder_options
from shiftadd.nn.base import LayerModule, check_positive
from shiftadd.nn.factory import linear_layer
from shiftadd.nn.shift import ShiftLinear
from shiftadd.ops.lightweight import adder_lightweight_conv1d, lightweight_conv1d, mask_padding

State = Dict[str, Any]  # tensors (or nested dicts of a composite block)
VARIANTS = ("mult", "adder", "shiftadd")


class _TimeConv(LayerModule):
    """Shared shape handling, padding mask and incremental state of the lightweight convolutions."""

    def __init__(self, channels: int, kernel_size: int, heads: int, causal: bool, bias: bool) -> None:
        super().__init__()
        self.channels = check_positive("channels", channels)
        self.kernel_size = check_positive("kernel_size", kernel_size)
        self.heads = check_positive("heads", heads)
        if channels % heads:
            raise ValueError(f"heads={heads} must divide channels={channels}")
        self.causal = bool(causal)
        self.bias = nn.Parameter(torch.zeros(channels)) if bias else None

    def _conv(self, x: torch.Tensor, pad: bool) -> torch.Tensor:
        """The operator on (B, C, T) (zero padding added when ``pad``)."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor, padding_mask: Optional[torch.Tensor] = None,
                state: Optional[State] = None) -> torch.Tensor:
        if x.dim() != 3 or x.shape[-1] != self.channels:
            raise ValueError(f"{type(self).__name__} expects input (B, T, {self.channels}), got {tuple(x.shape)}")
        xt = x.transpose(1, 2)
        if state is None:
            y = self._conv(mask_padding(xt, padding_mask), pad=True)
        else:
            if not self.causal:
                raise ValueError(f"{type(self).__name__}: incremental decoding needs causal=True")
            xt = mask_padding(xt, padding_mask)
            buf = state.get("buffer")
            if buf is None:  # the causal left padding: K-1 zeros
                buf = xt.new_zeros(xt.shape[0], self.channels, self.kernel_size - 1)
            window = torch.cat([buf, xt], dim=2)
            state["buffer"] = window[:, :, window.shape[2] - (self.kernel_size - 1):]
            y = self._conv(window, pad=False)
        if self.bias is not None:
            y = y + self.bias.view(1, -1, 1)
        return y.transpose(1, 2)


    def extra_repr(self) -> str:
        return (f"{self.channels}, kernel_size={self.kernel_size}, heads={self.heads}, causal={self.causal}"
                + ("" if self.bias is not None else ", bias=False"))


class LightweightConv1d(_TimeConv):
    """Multiplicative lightweight convolution over time (Wu et al. 2019).

    Args: channels C, kernel_size K, heads H (channel c uses head c // (C/H)), causal (left
    padding K-1, for decoders; else K//2 each side), weight_softmax (normalise each head's
    kernel over K), weight_dropout (dropout on the normalised kernel while training), bias.
    """

    def __init__(self, channels: int, kernel_size: int, heads: int = 1, causal: bool = False,
                 weight_softmax: bool = True, weight_dropout: float = 0.0, bias: bool = False) -> None:
        super().__init__(channels, kernel_size, heads, causal, bias)
        if not 0.0 <= weight_dropout < 1.0:
            raise ValueError(f"weight_dropout must be in [0, 1), got {weight_dropout!r}")
        self.weight_softmax, self.weight_dropout = bool(weight_softmax), float(weight_dropout)
        self.weight = nn.Parameter(torch.empty(heads, kernel_size))
        nn.init.xavier_uniform_(self.weight)  # as fairseq's LightweightConv

    def _conv(self, x: torch.Tensor, pad: bool) -> torch.Tensor:
        return lightweight_conv1d(x, self.weight, self.causal, None, self.weight_softmax, self.weight_dropout,
                                  self.training, pad)


    def extra_repr(self) -> str:
        return (super().extra_repr() + f", weight_softmax={self.weight_softmax}"
                + (f", weight_dropout={self.weight_dropout}" if self.weight_dropout else ""))


class AdderLightweightConv1d(_TimeConv):
    """Adder lightweight convolution: out[c,t] = -sum_k |x[c, t+k-pad] - w[h(c), k]|.

    Kernel (H, K) drawn from N(0, 1) like AdderNet's filters, no softmax (why: see
    :mod:`shiftadd.ops.lightweight`). ``grad_mode`` and
    ``eta`` as :class:`shiftadd.nn.AdderConv1d`; :func:`shiftadd.scale_adder_gradients` rescales
    ``weight.grad`` (adaptive learning rate).
    """

    adder_adaptive_lr = True  # read by shiftadd.optim.scale_adder_gradients

    def __init__(self, channels: int, kernel_size: int, heads: int = 1, causal: bool = False, bias: bool = False,
                 grad_mode: str = "full", eta: float = 0.2) -> None:
        super().__init__(channels, kernel_size, heads, causal, bias)
        _check_adder_options(grad_mode, eta)
        self.grad_mode, self.eta = grad_mode, float(eta)
        self.weight = nn.Parameter(torch.randn(heads, kernel_size))

    def _conv(self, x: torch.Tensor, pad: bool) -> torch.Tensor:
        return adder_lightweight_conv1d(x, self.weight, self.causal, None, self.grad_mode, pad)


    def extra_repr(self) -> str:
        return super().extra_repr() + f", grad_mode={self.grad_mode!r}, eta={self.eta}"


class ShiftAddLightweightConv1d(LayerModule):
    """``.shift`` (ShiftLinear C -> C over channels, DeepShift-PS) then ``.adder`` (adder time conv).

    ``shift_options`` go to :class:`shiftadd.nn.ShiftLinear` (``weight_bits``, ``mode``, ...).
    """

    def __init__(self, channels: int, kernel_size: int, heads: int = 1, causal: bool = False, bias: bool = False,
                 grad_mode: str = "full", eta: float = 0.2, **shift_options: Any) -> None:
        super().__init__()
        self.shift = ShiftLinear(channels, channels, bias=False, **shift_options)
        self.adder = AdderLightweightConv1d(channels, kernel_size, heads, causal, bias, grad_mode, eta)

    @property
    def causal(self) -> bool:
        return self.adder.causal

    def forward(self, x: torch.Tensor, padding_mask: Optional[torch.Tensor] = None,
                state: Optional[State] = None) -> torch.Tensor:
        return self.adder(self.shift(x), padding_mask, state)



def time_conv(variant: str, channels: int, kernel_size: int, heads: int = 1, causal: bool = False,
              weight_dropout: float = 0.0, **options: Any) -> nn.Module:
    """A lightweight convolution of ``variant`` "mult", "adder" or "shiftadd".

    ``options``: ``grad_mode``/``eta`` for the adder variants, ShiftLinear options for
    "shiftadd"; options a variant does not use are ignored.
    """
    adder_opts = {k: options[k] for k in ("grad_mode", "eta") if k in options}
    if variant == "mult":
        return LightweightConv1d(channels, kernel_size, heads, causal, weight_dropout=weight_dropout)
    if variant == "adder":
        return AdderLightweightConv1d(channels, kernel_size, heads, causal, **adder_opts)
    if variant == "shiftadd":
        shift_opts = {k: options[k] for k in ("weight_bits", "rounding", "mode") if k in options}
        return ShiftAddLightweightConv1d(channels, kernel_size, heads, causal, **adder_opts, **shift_opts)
    raise ValueError(f"unknown lightweight variant {variant!r}; choose one of: {', '.join(VARIANTS)}")


class LightweightBlock(LayerModule):
    """Wu et al.'s lightweight-conv block: ``in_proj`` (C -> 2C and GLU, or C -> C), ``conv``, ``out_proj``.

    ``proj_op`` is the operator family of both projections (see :data:`shiftadd.nn.OPS`);
    ``glu=False`` drops the gated linear unit, whose gate is a product of two activations
    (the multiplication-free presets turn it off); then the "shiftadd" variant has no separate
    input projection: its ShiftLinear over channels is one.
    """

    def __init__(self, channels: int, kernel_size: int, heads: int = 1, variant: str = "mult",
                 causal: bool = False, proj_op: str = "conv", glu: bool = True, weight_dropout: float = 0.0,
                 **options: Any) -> None:
        super().__init__()
        self.channels, self.glu, self.variant = int(channels), bool(glu), variant
        layer_opts = {k: v for k, v in options.items() if k in ("weight_bits", "rounding", "grad_mode", "eta")}
        if variant == "shiftadd" and not glu:  # the shift-add conv's own ShiftLinear is the input projection
            self.in_proj: nn.Module = nn.Identity()
        else:
            self.in_proj = linear_layer(proj_op, channels, 2 * channels if glu else channels, **layer_opts)
        self.conv = time_conv(variant, channels, kernel_size, heads, causal, weight_dropout, **options)
        self.out_proj = linear_layer(proj_op, channels, channels, **layer_opts)

    @property
    def causal(self) -> bool:
        return self.conv.causal

    def forward(self, x: torch.Tensor, padding_mask: Optional[torch.Tensor] = None,
                state: Optional[State] = None) -> torch.Tensor:
        h = self.in_proj(x)
        if self.glu:
            h = F.glu(h, dim=-1)
        return self.out_proj(self.conv(h, padding_mask, state))


__all__ = ["VARIANTS", "LightweightConv1d", "AdderLightweightConv1d", "ShiftAddLightweightConv1d",
           "LightweightBlock", "time_conv"]

