"""AdderNet layers: L1-distance conv and linear layers (math in shiftadd.ops.adder)."""
from __future__ import annotations

import math
from typing import Union

import torch
import torch.nn as nn

from shiftadd.nn.base import ConvLike, IntOrTuple, LayerModule, check_linear_input, check_positive
from shiftadd.ops.adder import GRAD_MODES, adder_conv2d, adder_linear


def _check_adder_options(grad_mode: str, eta: float) -> None:
    if grad_mode not in GRAD_MODES:
        raise ValueError(f"grad_mode must be one of {GRAD_MODES}, got {grad_mode!r}")
    if not eta > 0:
        raise ValueError(f"eta (adaptive learning-rate coefficient) must be > 0, got {eta!r}")


class _AdderConvNd(ConvLike):
    """out = -sum |x - w| over each receptive field; ``eta`` is read by the adaptive LR."""

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
        grad_mode: str = "full",
        eta: float = 0.2,
        device=None,
        dtype=None,
        padding_mode: str = "zeros",
    ) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, padding_mode)
        _check_adder_options(grad_mode, eta)
        self.grad_mode, self.eta = grad_mode, float(eta)
        kw = {"device": device, "dtype": dtype}
        # AdderNet's reference code draws the filters from N(0, 1).
        self.weight = nn.Parameter(torch.randn(self.weight_shape, **kw))
        self.bias = nn.Parameter(torch.zeros(out_channels, **kw)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, unbatched = self.check_input(x)
        x, padding = self.pad_input(x), self.op_padding
        if self._dim == 1:
            out = adder_conv2d(
                x.unsqueeze(2), self.weight.unsqueeze(2), self.bias, (1, self.stride[0]),
                (0, padding[0]), (1, self.dilation[0]), self.groups, self.grad_mode,
            ).squeeze(2)
        else:
            out = adder_conv2d(x, self.weight, self.bias, self.stride, padding, self.dilation,
                               self.groups, self.grad_mode)
        return out.squeeze(0) if unbatched else out

    def extra_repr(self) -> str:
        return super().extra_repr() + f", grad_mode={self.grad_mode!r}, eta={self.eta}"


class AdderConv1d(_AdderConvNd):
    """1-D adder convolution; arguments as ``torch.nn.Conv1d`` plus ``grad_mode`` and ``eta``."""

    _dim = 1


class AdderConv2d(_AdderConvNd):
    """2-D adder convolution; arguments as ``torch.nn.Conv2d`` plus ``grad_mode`` and ``eta``."""

    _dim = 2


class AdderLinear(LayerModule):
    """Adder fully-connected layer: out[o] = -sum_i |x[i] - w[o, i]|.

    ``bias`` defaults to False, unlike ``nn.Linear``: AdderNet follows every adder layer by BatchNorm,
    which makes a bias redundant. :func:`shiftadd.nn.linear_layer` asks for it explicitly (default True).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = False, grad_mode: str = "full",
                 eta: float = 0.2, device=None, dtype=None) -> None:
        super().__init__()
        self.in_features = check_positive("in_features", in_features)
        self.out_features = check_positive("out_features", out_features)
        _check_adder_options(grad_mode, eta)
        self.grad_mode, self.eta = grad_mode, float(eta)
        kw = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.randn(out_features, in_features, **kw))
        self.bias = nn.Parameter(torch.zeros(out_features, **kw)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_linear_input(self, x, self.in_features)
        return adder_linear(x, self.weight, self.bias, self.grad_mode)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, grad_mode={self.grad_mode!r}, eta={self.eta}")


ADDER_TYPES = (AdderConv1d, AdderConv2d, AdderLinear)


def kaiming_like_conv(shape, device=None, dtype=None) -> torch.Tensor:
    """The default initialisation of nn.Conv2d / nn.Linear weights (kaiming_uniform, a=sqrt(5))."""
    w = torch.empty(shape, device=device, dtype=dtype)
    nn.init.kaiming_uniform_(w, a=math.sqrt(5))
    return w
