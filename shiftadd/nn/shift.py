"""DeepShift layers: conv and linear layers whose weights are 0 or +-2^p (math in shiftadd.ops.bitshift)."""
from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from shiftadd.nn.adder import kaiming_like_conv
from shiftadd.nn.base import ConvLike, IntOrTuple, LayerModule, check_linear_input, check_positive
from shiftadd.ops.bitshift import (
    ROUNDING_MODES, SHIFT_MODES, ps_weight, q_weight, shift_range, shift_sign_from_weight,
)
from shiftadd.ops.quant import fixed_point_range, quantize_fixed_point

INIT_MODES = ("kaiming", "deepshift")


class PowerOfTwoWeight(LayerModule):
    """Mixin: the power-of-two weight of a DeepShift layer, its parameters and options.

    mode "ps": trainable ``shift`` (p) and ``sign`` (s); mode "q": trainable ``latent_weight``.
    ``.weight`` is the effective weight tensor (read-only), so code reading ``conv.weight`` works.

    ``init="kaiming"`` (default): the weight of ``nn.Conv2d``/``nn.Linear``'s default initialisation, in PS mode
    converted to p = round(log2|w|), s = sign(w) (no weight is 0); bias 0. ``init="deepshift"``: DeepShift's
    own ``reset_parameters``: PS shift ~ U(-10, -1) (conv) or U(p_min, 0) (linear), sign ~ U(-1, 1) (so about
    half the weights round to 0), Q latent weight as "kaiming"; bias ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
    """

    _deepshift_shift_init: Optional[Tuple[float, float]] = None  # None: the whole shift range

    def _init_power_of_two(self, shape: Tuple[int, ...], mode: str, weight_bits: int, rounding: str,
                           activation_bits: Optional[Sequence[int]], activation_signed: bool, init: str = "kaiming",
                           device=None, dtype=None) -> None:
        if mode not in SHIFT_MODES:
            raise ValueError(f"mode must be one of {SHIFT_MODES}, got {mode!r}")
        if rounding not in ROUNDING_MODES:
            raise ValueError(f"rounding must be one of {ROUNDING_MODES}, got {rounding!r}")
        if init not in INIT_MODES:
            raise ValueError(f"init must be one of {INIT_MODES}, got {init!r}")
        shift_range(weight_bits, mode)  # validates weight_bits
        if activation_bits is not None:
            if len(activation_bits) != 2:
                raise ValueError(f"activation_bits must be (int_bits, frac_bits), got {activation_bits!r}")
            fixed_point_range(int(activation_bits[0]), int(activation_bits[1]), activation_signed)
            activation_bits = (int(activation_bits[0]), int(activation_bits[1]))
        self.mode, self.weight_bits, self.rounding, self.init = mode, int(weight_bits), rounding, init
        self.activation_bits, self.activation_signed = activation_bits, bool(activation_signed)
        if mode == "ps" and init == "deepshift":
            lo, hi = self._deepshift_shift_init or shift_range(self.weight_bits, "ps")
            self.shift = nn.Parameter(torch.empty(shape, device=device, dtype=dtype).uniform_(lo, hi))
            self.sign = nn.Parameter(torch.empty(shape, device=device, dtype=dtype).uniform_(-1, 1))
            return
        w = kaiming_like_conv(shape, device, dtype)
        if mode == "ps":
            p, s = shift_sign_from_weight(w, weight_bits)
            self.shift = nn.Parameter(p)
            self.sign = nn.Parameter(s)
        else:
            self.latent_weight = nn.Parameter(w)

    def _init_bias(self, bias: bool, out_features: int, fan_in: int, device=None, dtype=None) -> None:
        if not bias:
            self.bias = None
            return
        b = torch.zeros(out_features, device=device, dtype=dtype)
        if self.init == "deepshift":
            bound = 1 / math.sqrt(fan_in)
            b.uniform_(-bound, bound)
        self.bias = nn.Parameter(b)

    def effective_weight(self, stochastic: Optional[bool] = None,
                         mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The weight the layer computes with: every entry is 0 or +-2^p with p in the shift range.

        ``stochastic``: round stochastically (default: ``rounding="stochastic"`` in training mode only).
        ``mask`` (bool, True = kept): pruned entries get sign 0 (PS) or latent weight 0 (Q), i.e. weight 0.
        """
        if stochastic is None:
            stochastic = self.rounding == "stochastic" and self.training
        if self.mode == "ps":
            sign = self.sign if mask is None else self.sign.masked_fill(~mask, 0)
            return ps_weight(self.shift, sign, self.weight_bits, stochastic)
        latent = self.latent_weight if mask is None else self.latent_weight.masked_fill(~mask, 0)
        return q_weight(latent, self.weight_bits, stochastic)

    @property
    def weight(self) -> torch.Tensor:
        """The effective weight (:meth:`effective_weight` with the layer's rounding).

        In eval mode without autograd (decoding, validation) it is computed once and reused while the
        parameters stay the same tensors with the same version counters (an optimizer step or
        ``load_state_dict`` bumps them); an incremental decoder would otherwise redo the
        weight transform, whose cost is that of the weights, at every generated token. (Writing
        through ``param.data`` bypasses the version counter: call :meth:`clear_weight_cache` then.)"""
        if self.training or torch.is_grad_enabled() or torch.compiler.is_compiling():
            return self.effective_weight()
        params = (self.shift, self.sign) if self.mode == "ps" else (self.latent_weight,)
        key = tuple((p, p._version, p.data_ptr(), p.dtype, p.device) for p in params)
        cached = self.__dict__.get("_weight_cache")
        if cached is None or len(cached[0]) != len(key) or any(
                a[0] is not b[0] or a[1:] != b[1:] for a, b in zip(cached[0], key)):
            cached = (key, self.effective_weight())
            self.__dict__["_weight_cache"] = cached
        return cached[1]

    def clear_weight_cache(self) -> None:
        """Forget the cached eval-mode weight (see :attr:`weight`)."""
        self.__dict__.pop("_weight_cache", None)

    @torch.no_grad()
    def set_weight(self, w: torch.Tensor) -> None:
        """Initialise from float weights: p = round(log2|w|), s = sign(w) (or the latent weight in mode q)."""
        if self.mode == "ps":
            p, s = shift_sign_from_weight(w.to(self.shift), self.weight_bits)
            self.shift.copy_(p)
            self.sign.copy_(s)
        else:
            self.latent_weight.copy_(w)

    def quantize_input(self, x: torch.Tensor) -> torch.Tensor:
        if self.activation_bits is None:
            return x
        return quantize_fixed_point(x, *self.activation_bits, signed=self.activation_signed)

    def _shift_repr(self) -> str:
        s = f", mode={self.mode!r}, weight_bits={self.weight_bits}"
        if self.rounding != "deterministic":
            s += f", rounding={self.rounding!r}"
        if self.init != "kaiming":
            s += f", init={self.init!r}"
        if self.activation_bits is not None:
            s += f", activation_bits={self.activation_bits}, activation_signed={self.activation_signed}"
        return s


class _ShiftConvNd(ConvLike, PowerOfTwoWeight):
    _deepshift_shift_init = (-10.0, -1.0)  # DeepShift's _ConvNdShift.reset_parameters

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: IntOrTuple,
        stride: IntOrTuple = 1,
        padding: Union[IntOrTuple, str] = 0,
        dilation: IntOrTuple = 1,
        groups: int = 1,
        bias: bool = False,
        mode: str = "ps",
        weight_bits: int = 5,
        rounding: str = "deterministic",
        activation_bits: Optional[Sequence[int]] = None,
        activation_signed: bool = True,
        init: str = "kaiming",
        device=None,
        dtype=None,
        padding_mode: str = "zeros",
    ) -> None:
        ConvLike.__init__(self, in_channels, out_channels, kernel_size, stride, padding, dilation, groups,
                          padding_mode)
        self._init_power_of_two(self.weight_shape, mode, weight_bits, rounding, activation_bits,
                                activation_signed, init, device, dtype)
        self._init_bias(bias, out_channels, math.prod(self.weight_shape[1:]), device, dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, unbatched = self.check_input(x)
        conv = F.conv1d if self._dim == 1 else F.conv2d
        out = conv(self.quantize_input(self.pad_input(x)), self.weight, self.bias, self.stride, self.op_padding,
                   self.dilation, self.groups)
        return out.squeeze(0) if unbatched else out

    def extra_repr(self) -> str:
        return super().extra_repr() + self._shift_repr()


class ShiftConv1d(_ShiftConvNd):
    """1-D DeepShift convolution; arguments as ``torch.nn.Conv1d`` plus ``mode``, ``weight_bits``, ..."""

    _dim = 1


class ShiftConv2d(_ShiftConvNd):
    """2-D DeepShift convolution; arguments as ``torch.nn.Conv2d`` plus ``mode``, ``weight_bits``, ..."""

    _dim = 2


class ShiftLinear(PowerOfTwoWeight):
    """DeepShift fully-connected layer with power-of-two weights."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, mode: str = "ps",
                 weight_bits: int = 5, rounding: str = "deterministic",
                 activation_bits: Optional[Sequence[int]] = None, activation_signed: bool = True,
                 init: str = "kaiming", device=None, dtype=None) -> None:
        super().__init__()
        self.in_features = check_positive("in_features", in_features)
        self.out_features = check_positive("out_features", out_features)
        self._init_power_of_two((out_features, in_features), mode, weight_bits, rounding, activation_bits,
                                activation_signed, init, device, dtype)
        self._init_bias(bias, out_features, in_features, device, dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_linear_input(self, x, self.in_features)
        return F.linear(self.quantize_input(x), self.weight, self.bias)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}" + self._shift_repr())


SHIFT_TYPES = (ShiftConv1d, ShiftConv2d, ShiftLinear)
