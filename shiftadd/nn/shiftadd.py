"""ShiftAddNet layers (You et al., NeurIPS 2020): a bit-shift layer followed by an adder layer."""
from __future__ import annotations

from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from shiftadd.nn.adder import AdderConv1d, AdderConv2d, AdderLinear
from shiftadd.nn.base import ConvLike, IntOrTuple, LayerModule
from shiftadd.nn.shift import ShiftConv1d, ShiftConv2d, ShiftLinear


def _same_padding(kernel_size: Tuple[int, ...], dilation: Tuple[int, ...]) -> Tuple[Tuple[int, int], ...]:
    """(before, after) zero padding per dim that keeps the size at stride 1."""
    return tuple(((d * (k - 1)) // 2, d * (k - 1) - (d * (k - 1)) // 2) for k, d in zip(kernel_size, dilation))


class _ShiftAddConvNd(ConvLike):
    """``.shift`` (power-of-two conv, in->out, carries the stride and padding) then
    ``.adder`` (adder conv, out->out, same kernel, stride 1, size-preserving zero padding).

    ``fixed_shift=True`` freezes the shift part at its random power-of-two initialisation
    (ShiftAddNet's fixed-shift variant), so only the adder learns.
    """

    _shift_cls: type = ShiftConv2d
    _adder_cls: type = AdderConv2d

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
        fixed_shift: bool = False,
        mode: str = "ps",
        weight_bits: int = 5,
        rounding: str = "deterministic",
        activation_bits: Optional[Sequence[int]] = None,
        activation_signed: bool = True,
        init: str = "kaiming",
        grad_mode: str = "full",
        eta: float = 0.2,
        device=None,
        dtype=None,
        padding_mode: str = "zeros",
    ) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, padding_mode)
        kw = {"device": device, "dtype": dtype}
        self.shift = self._shift_cls(in_channels, out_channels, kernel_size, stride, padding, dilation, groups,
                                     bias=False, mode=mode, weight_bits=weight_bits, rounding=rounding,
                                     activation_bits=activation_bits, activation_signed=activation_signed,
                                     init=init, padding_mode=padding_mode, **kw)
        pads = _same_padding(self.kernel_size, self.dilation)
        symmetric = all(a == b for a, b in pads)
        self._extra_pad = None if symmetric else tuple(v for a, b in reversed(pads) for v in (a, b))
        self.adder = self._adder_cls(out_channels, out_channels, kernel_size, 1,
                                     tuple(a for a, _ in pads) if symmetric else 0, dilation, groups,
                                     bias=bias, grad_mode=grad_mode, eta=eta, **kw)
        self.fixed_shift = bool(fixed_shift)
        if fixed_shift:
            self.shift.requires_grad_(False)

    @property
    def bias(self) -> Optional[torch.Tensor]:
        return self.adder.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.shift(x)
        if self._extra_pad is not None:  # even kernels: asymmetric "same" padding
            y = F.pad(y, self._extra_pad)
        return self.adder(y)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", fixed_shift={self.fixed_shift}"


class ShiftAddConv1d(_ShiftAddConvNd):
    """1-D shift-add convolution (shift conv then adder conv)."""

    _dim = 1
    _shift_cls = ShiftConv1d
    _adder_cls = AdderConv1d


class ShiftAddConv2d(_ShiftAddConvNd):
    """2-D shift-add convolution (shift conv then adder conv); arguments as ``torch.nn.Conv2d``."""

    _dim = 2
    _shift_cls = ShiftConv2d
    _adder_cls = AdderConv2d


class ShiftAddLinear(LayerModule):
    """A ShiftLinear (in->out) followed by an AdderLinear (out->out)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, fixed_shift: bool = False,
                 mode: str = "ps", weight_bits: int = 5, rounding: str = "deterministic",
                 activation_bits: Optional[Sequence[int]] = None, activation_signed: bool = True,
                 init: str = "kaiming", grad_mode: str = "full", eta: float = 0.2, device=None,
                 dtype=None) -> None:
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        self.in_features, self.out_features = int(in_features), int(out_features)
        self.shift = ShiftLinear(in_features, out_features, bias=False, mode=mode, weight_bits=weight_bits,
                                 rounding=rounding, activation_bits=activation_bits,
                                 activation_signed=activation_signed, init=init, **kw)
        self.adder = AdderLinear(out_features, out_features, bias=bias, grad_mode=grad_mode, eta=eta, **kw)
        self.fixed_shift = bool(fixed_shift)
        if fixed_shift:
            self.shift.requires_grad_(False)

    @property
    def bias(self) -> Optional[torch.Tensor]:
        return self.adder.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.adder(self.shift(x))

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, fixed_shift={self.fixed_shift}")


SHIFTADD_TYPES = (ShiftAddConv1d, ShiftAddConv2d, ShiftAddLinear)
