"""Argument checking and the shared shape of conv-like operator modules."""
from __future__ import annotations

from typing import Tuple

import torch
import torch.nn as nn

from shiftadd.utils import IntOrTuple, as_tuple



class ConvLike(nn.Module):
    """Holds and validates nn.ConvNd's hyper-parameters under nn.ConvNd's attribute names."""

    _dim = 2

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: IntOrTuple,
        stride: IntOrTuple = 1,
        padding: IntOrTuple = 0,
        dilation: IntOrTuple = 1,
        groups: int = 1,
    ) -> None:
        super().__init__()
        d = self._dim
        for name, v in (("in_channels", in_channels), ("out_channels", out_channels), ("groups", groups)):
            if int(v) < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if in_channels % groups or out_channels % groups:
            raise ValueError(
                f"groups={groups} must divide in_channels={in_channels} and out_channels={out_channels}"
            )
        self.in_channels, self.out_channels, self.groups = int(in_channels), int(out_channels), int(groups)
        self.kernel_size = as_tuple(kernel_size, d, "kernel_size", minimum=1)
        self.stride = as_tuple(stride, d, "stride", minimum=1)
        self.padding = as_tuple(padding, d, "padding", minimum=0)
        self.dilation = as_tuple(dilation, d, "dilation", minimum=1)

    @property
    def weight_shape(self) -> Tuple[int, ...]:
        return (self.out_channels, self.in_channels // self.groups, *self.kernel_size)

    def check_input(self, x: torch.Tensor) -> Tuple[torch.Tensor, bool]:
        """Validate ``x``; returns it batched and whether a batch dim was added."""
        d = self._dim
        spatial = ", ".join("HW"[i] if d == 2 else "L" for i in range(d))
        expected = f"(N, {self.in_channels}, {spatial}) or ({self.in_channels}, {spatial})"
        if x.dim() not in (d + 1, d + 2):
            raise ValueError(f"{type(self).__name__} expects input of shape {expected}, got {tuple(x.shape)}")
        unbatched = x.dim() == d + 1
        if unbatched:
            x = x.unsqueeze(0)
        if x.shape[1] != self.in_channels:
            raise ValueError(f"{type(self).__name__} expects input of shape {expected}, got {tuple(x.shape)}")
        if not x.is_floating_point():
            raise TypeError(f"{type(self).__name__} expects a floating-point input, got {x.dtype}")
        return x, unbatched

    def extra_repr(self) -> str:
        s = f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}"
        if any(self.padding):
            s += f", padding={self.padding}"
        if any(v != 1 for v in self.dilation):
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if getattr(self, "bias", None) is None:
            s += ", bias=False"
        return s


def check_linear_input(module: nn.Module, x: torch.Tensor, in_features: int) -> None:
    if x.dim() < 1 or x.shape[-1] != in_features:
        raise ValueError(
            f"{type(module).__name__} expects input of shape (..., {in_features}), got {tuple(x.shape)}"
        )
    if not x.is_floating_point():
        raise TypeError(f"{type(module).__name__} expects a floating-point input, got {x.dtype}")


def check_positive(name: str, value: int) -> int:
    if int(value) < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)
