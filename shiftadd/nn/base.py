"""Argument checking and the shared shape of conv-like operator modules."""
from __future__ import annotations

from typing import Optional, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from shiftadd.utils import IntOrTuple, as_tuple

PADDING_MODES = ("zeros", "reflect", "replicate", "circular")


class DtypeMismatchError(RuntimeError, TypeError):
    """Input and weight dtypes differ (a RuntimeError, as nn.Conv2d raises; also a TypeError)."""


def _autocast_on(x: torch.Tensor) -> bool:
    try:
        return torch.is_autocast_enabled(x.device.type)
    except (TypeError, RuntimeError):
        return False


def _own_float_parameter(module: nn.Module) -> Optional[torch.Tensor]:
    return next((p for p in module.parameters(recurse=False) if p.is_floating_point()), None)


def check_dtype(module: nn.Module, x: torch.Tensor, weight: Optional[torch.Tensor]) -> None:
    """nn.Conv2d's rule: the input dtype must equal the weight dtype (outside torch.autocast)."""
    if weight is not None and x.dtype != weight.dtype and not _autocast_on(x):
        raise DtypeMismatchError(
            f"{type(module).__name__}: input dtype {x.dtype} and weight dtype {weight.dtype} differ; convert the "
            f"input (x.to({weight.dtype})) or the layer (layer.to({x.dtype})), or run under torch.autocast")



class NotScriptableError(RuntimeError):
    """``torch.jit.script`` was given a shiftadd layer (TorchScript cannot compile them)."""


class LayerModule(nn.Module):
    """Base of the library's layers: an ``nn.Module`` that ``torch.jit.script`` refuses in one line.

    The layers dispatch to custom autograd functions and backends in Python, which TorchScript
    (deprecated by PyTorch) cannot compile; its own error is a multi-page trace. ``torch.compile``
    and ``torch.export`` work instead (docs/operators.md, "PyTorch tool-chain").
    """

    def __prepare_scriptable__(self) -> nn.Module:  # called by torch.jit.script on every submodule
        raise NotScriptableError(
            f"torch.jit.script cannot compile shiftadd's {type(self).__name__} (TorchScript does not support its custom "
            "autograd functions); use torch.compile(model) or torch.export.export(model, args) instead")


class ConvLike(LayerModule):
    """Holds and validates nn.ConvNd's hyper-parameters under nn.ConvNd's attribute names."""

    _dim = 2

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: IntOrTuple,
        stride: IntOrTuple = 1,
        padding: Union[IntOrTuple, str] = 0,
        dilation: IntOrTuple = 1,
        groups: int = 1,
        padding_mode: str = "zeros",
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
        self.dilation = as_tuple(dilation, d, "dilation", minimum=1)
        if padding_mode not in PADDING_MODES:
            raise ValueError(f"padding_mode must be one of {PADDING_MODES}, got {padding_mode!r}")
        self.padding_mode = padding_mode
        pads = self._resolve_padding(padding)  # (before, after) per spatial dim
        self.padding = tuple(a for a, _ in pads)
        # Input padding done by F.pad before the op (then given padding 0): other modes, asymmetric "same".
        symmetric = all(a == b for a, b in pads)
        self._input_pad = None
        if padding_mode != "zeros" or not symmetric:
            self._input_pad = tuple(v for a, b in reversed(pads) for v in (a, b))

    def _resolve_padding(self, padding: Union[IntOrTuple, str]) -> Tuple[Tuple[int, int], ...]:
        d = self._dim
        if isinstance(padding, str):
            if padding == "valid":
                return ((0, 0),) * d
            if padding != "same":
                raise ValueError(f"padding must be an int, a tuple, 'same' or 'valid', got {padding!r}")
            if any(s != 1 for s in self.stride):
                raise ValueError("padding='same' is not supported for strided convolutions")
            totals = [di * (k - 1) for k, di in zip(self.kernel_size, self.dilation)]
            return tuple((t // 2, t - t // 2) for t in totals)
        return tuple((p, p) for p in as_tuple(padding, d, "padding", minimum=0))

    @property
    def op_padding(self) -> Tuple[int, ...]:
        """The zero padding the operator itself applies (0 when :meth:`pad_input` pads)."""
        return (0,) * self._dim if self._input_pad is not None else self.padding

    def pad_input(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` padded as ``padding_mode`` (and asymmetric "same") ask; unchanged otherwise."""
        if self._input_pad is None:
            return x
        mode = "constant" if self.padding_mode == "zeros" else self.padding_mode
        return F.pad(x, self._input_pad, mode=mode)

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
        check_dtype(self, x, _own_float_parameter(self))
        return x, unbatched

    def extra_repr(self) -> str:
        s = f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}"
        if self._input_pad is not None and self.padding_mode == "zeros":
            s += ", padding='same'"  # the only asymmetric zero padding
        elif any(self.padding):
            s += f", padding={self.padding}"
        if self.padding_mode != "zeros":
            s += f", padding_mode={self.padding_mode!r}"
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
    check_dtype(module, x, _own_float_parameter(module))


def check_positive(name: str, value: int) -> int:
    if int(value) < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)
