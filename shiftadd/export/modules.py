"""Integer inference modules: trained adder / shift layers computed by the integer kernels.

Float in, float out; the arithmetic in between is :mod:`shiftadd.kernels.integer` (int8 sums of
absolute differences for adder layers, shifts and adds of fixed-point codes for shift layers).
Build them from trained layers with :func:`shiftadd.export.to_integer` / ``from_float``.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
import torch.nn as nn

from shiftadd.kernels.integer import decompose_pow2, int_adder_conv2d, int_adder_matmul, int_shift_conv2d, quantize_symmetric
from shiftadd.ops.quant import fixed_point_range
from shiftadd.quant.functional import quantize_to_int
from shiftadd.utils import IntOrTuple, pair

DEFAULT_ACTIVATION_BITS = (8, 8)


def _conv2d_geometry(module: nn.Module, weight: torch.Tensor) -> Tuple[torch.Tensor, tuple, tuple, tuple, bool]:
    """(weight, stride, padding, dilation, is_1d) of a conv layer as a conv2d (a 1-D conv is a 1 x k conv2d)."""
    if weight.dim() == 3:
        return (weight.unsqueeze(2), (1, module.stride[0]), (0, module.padding[0]), (1, module.dilation[0]), True)
    return weight, module.stride, module.padding, module.dilation, False


def _shared_quantizer(module: nn.Module):
    q = module._modules.get("shared_quantizer")
    return q if q is not None and hasattr(q, "spec") and hasattr(q, "scale") else None


def _effective_weight(module: nn.Module) -> torch.Tensor:
    """The adder layer's weight with its pruning mask (if any) applied."""
    w = module.weight.detach()
    mask = module._modules.get("pruning")
    if mask is not None and hasattr(mask, "mask"):
        w = w * mask.mask
    return w


def _eval_weight(module: nn.Module) -> torch.Tensor:
    """A shift layer's effective power-of-two weight, deterministically rounded (as in eval mode)."""
    with torch.no_grad():
        return module.effective_weight(stochastic=False).detach()


def _activation_bits(module: nn.Module, fallback: Optional[Sequence[int]]) -> Sequence[int]:
    return module.activation_bits or fallback or DEFAULT_ACTIVATION_BITS


def _fixed_point(x: torch.Tensor, bits: Tuple[int, int], signed: bool) -> torch.Tensor:
    """Integer code of quantize_fixed_point(x): round(clamp(x) * 2^frac) (int32)."""
    lo, hi = fixed_point_range(bits[0], bits[1], signed)
    return torch.round(x.detach().double().clamp(lo, hi) * 2.0 ** bits[1]).to(torch.int32)


class _IntConv2d(nn.Module):
    """What the integer convolutions share: conv2d geometry, bias, and 1-D layers run as 1 x k conv2d."""

    _dim = 2

    def _init_geometry(self, bias: Optional[torch.Tensor], stride: IntOrTuple, padding: IntOrTuple,
                       dilation: IntOrTuple, groups: int) -> None:
        self.register_buffer("bias", None if bias is None else bias.detach().float().clone())
        self.stride, self.padding, self.dilation = pair(stride, "stride"), pair(padding, "padding"), pair(dilation, "dilation")
        self.groups = int(groups)

    def _output(self, x: torch.Tensor) -> torch.Tensor:
        """The layer's output without bias for a 4-D input, computed through the integer kernel."""
        raise NotImplementedError

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        unsq = self._dim == 1
        if unsq:
            x = x.unsqueeze(2)
        y = self._output(x)
        if self.bias is not None:
            y = y + self.bias.view(1, -1, 1, 1)
        return y.squeeze(2) if unsq else y

    def _geometry_repr(self, weight_shape: torch.Size) -> str:
        return (f"{weight_shape[1] * self.groups}, {weight_shape[0]}, kernel_size={tuple(weight_shape[2:])}, "
                f"stride={self.stride}, padding={self.padding}")


# ---------------------------------------------------------------------------------------------
# adder: shared-scale int8


class _SharedScaleInt8(nn.Module):
    """Shared-scale quantization of an adder layer's input and weight to int8 codes.

    Either the layer's own :class:`shiftadd.quant.SharedScaleQuantizer` (``layer.shared_quantizer``,
    its calibrated scale, rounding and weight folding, so the result equals that quantizer's simulation), or
    s = max(act_max, max|w|) / 127 with ``act_max`` from :meth:`calibrate` / the constructor, or
    from each batch when unset (dynamic).
    """

    def _init_quant(self, weight: torch.Tensor, act_max: Optional[float], bits: int, quantizer=None) -> None:
        self.register_buffer("weight", weight.detach().float().clone())
        self.bits = int(bits)
        self.act_max = None if act_max is None else float(act_max)
        self.spec, self.fixed_scale = None, None
        # the quantizer's int8 weight codes and the D of a "folded" range (fold_adder_codes); buffers, so
        # that .to(device) moves them, not persistent, so that the state_dict keeps its keys
        self.register_buffer("_fixed_codes", None, persistent=False)
        self.register_buffer("weight_offset", None, persistent=False)
        if quantizer is not None:
            if quantizer.spec.bits > 8:
                raise ValueError(f"the int8 kernels need <= 8 bits, the layer's shared scale has {quantizer.spec.bits}")
            self.spec, self.bits = quantizer.spec, quantizer.spec.bits
            self.fixed_scale = quantizer.scale(self.weight)  # float64 scalar tensor
            codes, distance = quantizer.weight_codes(self.weight, self.fixed_scale)
            self._fixed_codes = codes.to(torch.int8)
            if bool(distance.any()):
                self.weight_offset = distance
        self._cache: Optional[Tuple[float, torch.Tensor]] = None

    @torch.no_grad()
    def calibrate(self, x: torch.Tensor):
        """Fix the activation range from a representative batch (own scale only)."""
        if self.spec is not None:
            raise RuntimeError("this layer uses its shared-scale quantizer's calibration")
        self.act_max = float(x.detach().abs().max())
        self._cache = None
        return self

    def scale(self, x: Optional[torch.Tensor] = None) -> float:
        """The shared scale s (output = s * integer sum)."""
        if self.fixed_scale is not None:
            return float(self.fixed_scale)
        qmax = 2 ** (self.bits - 1) - 1
        amax = self.act_max if self.act_max is not None else float(x.detach().abs().max())
        return max(amax, float(self.weight.abs().max()), 1e-12) / qmax

    def _codes(self, t: torch.Tensor, s: float) -> torch.Tensor:
        if self.spec is not None:
            return quantize_to_int(t, self.spec, scale=self.fixed_scale)[0].to(torch.int8)
        return quantize_symmetric(t, s, self.bits)

    def _qweight(self, s: float) -> torch.Tensor:
        if self._fixed_codes is not None:
            return self._fixed_codes
        if self._cache is None or self._cache[0] != s:
            self._cache = (s, self._codes(self.weight, s))
        return self._cache[1]


class IntAdderConv2d(_SharedScaleInt8, _IntConv2d):
    """Inference-only adder conv2d on int8 codes with one shared scale (float in, float out):
    out = s * int_adder_conv2d(q(x), q(w)) + bias (see :class:`_SharedScaleInt8` for s)."""

    def __init__(self, weight: torch.Tensor, bias: Optional[torch.Tensor] = None, stride: IntOrTuple = 1,
                 padding: IntOrTuple = 0, dilation: IntOrTuple = 1, groups: int = 1,
                 act_max: Optional[float] = None, bits: int = 8, quantizer=None) -> None:
        super().__init__()
        self._init_quant(weight, act_max, bits, quantizer)
        self._init_geometry(bias, stride, padding, dilation, groups)

    @classmethod
    def from_float(cls, module: nn.Module, act_max: Optional[float] = None, bits: int = 8) -> "IntAdderConv2d":
        """From a trained AdderConv2d (or AdderConv1d, used as a 1 x k conv2d); uses the layer's
        shared-scale quantizer when it has one (``shiftadd.quant.shared_scale``)."""
        w, stride, padding, dilation, is_1d = _conv2d_geometry(module, _effective_weight(module))
        m = cls(w, module.bias, stride, padding, dilation, module.groups, act_max, bits, _shared_quantizer(module))
        if is_1d:
            m._dim = 1
        return m

    def _output(self, x: torch.Tensor) -> torch.Tensor:
        s = self.scale(x)
        acc = int_adder_conv2d(self._codes(x, s), self._qweight(s), self.stride, self.padding, self.dilation, self.groups)
        if self.weight_offset is not None:
            acc = acc - self.weight_offset.view(1, -1, 1, 1).to(acc.dtype)
        return acc.float() * s

    def extra_repr(self) -> str:
        return (f"{self._geometry_repr(self.weight.shape)}, bits={self.bits}, "
                f"scale={'shared quantizer' if self.spec is not None else self.act_max}")


class IntAdderLinear(_SharedScaleInt8):
    """Inference-only adder linear layer on int8 codes with one shared scale (see IntAdderConv2d)."""

    def __init__(self, weight: torch.Tensor, bias: Optional[torch.Tensor] = None, act_max: Optional[float] = None,
                 bits: int = 8, quantizer=None) -> None:
        super().__init__()
        self._init_quant(weight, act_max, bits, quantizer)
        self.register_buffer("bias", None if bias is None else bias.detach().float().clone())

    @classmethod
    def from_float(cls, module: nn.Module, act_max: Optional[float] = None, bits: int = 8) -> "IntAdderLinear":
        """From a trained AdderLinear (uses its shared-scale quantizer when it has one)."""
        return cls(_effective_weight(module), module.bias, act_max, bits, _shared_quantizer(module))

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.scale(x)
        lead = x.shape[:-1]
        qx = self._codes(x.reshape(1, -1, x.shape[-1]), s)
        acc = int_adder_matmul(qx, self._qweight(s).unsqueeze(0))
        if self.weight_offset is not None:
            acc = acc - self.weight_offset.to(acc.dtype)
        y = acc.float().reshape(*lead, -1) * s
        return y + self.bias if self.bias is not None else y

    def extra_repr(self) -> str:
        return f"in_features={self.weight.shape[1]}, out_features={self.weight.shape[0]}, bits={self.bits}"


# ---------------------------------------------------------------------------------------------
# shift: power-of-two weights on fixed-point activations


class IntShiftConv2d(_IntConv2d):
    """Inference-only DeepShift conv2d: fixed-point integer activations, shifts and adds only.

    x -> qx = round(clamp(x) * 2^f) (the layer's ``activation_bits`` (int_bits, f), or
    (8, 8) if it has none);  out = 2^-(f + e) * sum sign * (qx << shift) + bias.
    """

    def __init__(self, weight: torch.Tensor, bias: Optional[torch.Tensor] = None, stride: IntOrTuple = 1,
                 padding: IntOrTuple = 0, dilation: IntOrTuple = 1, groups: int = 1,
                 activation_bits: Sequence[int] = DEFAULT_ACTIVATION_BITS, activation_signed: bool = True) -> None:
        super().__init__()
        shift, sign, e = decompose_pow2(weight)
        self.register_buffer("shift", shift)
        self.register_buffer("sign", sign)
        self.exponent = e
        self._init_geometry(bias, stride, padding, dilation, groups)
        self.activation_bits = (int(activation_bits[0]), int(activation_bits[1]))
        self.activation_signed = bool(activation_signed)

    @classmethod
    def from_float(cls, module: nn.Module, activation_bits: Optional[Sequence[int]] = None) -> "IntShiftConv2d":
        """From a ShiftConv2d / ShiftConv1d (uses its effective power-of-two ``.weight`` in eval mode)."""
        w, stride, padding, dilation, is_1d = _conv2d_geometry(module, _eval_weight(module))
        m = cls(w, module.bias, stride, padding, dilation, module.groups, _activation_bits(module, activation_bits),
                getattr(module, "activation_signed", True))
        if is_1d:
            m._dim = 1
        return m

    def integer_forward(self, qx: torch.Tensor) -> torch.Tensor:
        """The integer part alone: int32/int64 sum sign * (qx << shift)."""
        return int_shift_conv2d(qx, self.shift, self.sign, self.stride, self.padding, self.dilation, self.groups)

    def _output(self, x: torch.Tensor) -> torch.Tensor:
        qx = _fixed_point(x, self.activation_bits, self.activation_signed)
        y = self.integer_forward(qx).double() * 2.0 ** -(self.activation_bits[1] + self.exponent)
        return y.to(x.dtype if x.is_floating_point() else torch.float32)

    def extra_repr(self) -> str:
        return (f"{self._geometry_repr(self.shift.shape)}, activation_bits={self.activation_bits}, "
                f"exponent={self.exponent}")


class IntShiftLinear(nn.Module):
    """Inference-only DeepShift linear layer (a 1 x 1 IntShiftConv2d underneath)."""

    def __init__(self, conv: IntShiftConv2d) -> None:
        super().__init__()
        self.conv = conv

    @classmethod
    def from_float(cls, module: nn.Module, activation_bits: Optional[Sequence[int]] = None) -> "IntShiftLinear":
        """From a ShiftLinear (uses its effective power-of-two ``.weight`` in eval mode)."""
        conv = IntShiftConv2d(_eval_weight(module)[:, :, None, None], module.bias,
                              activation_bits=_activation_bits(module, activation_bits),
                              activation_signed=getattr(module, "activation_signed", True))
        return cls(conv)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        y = self.conv(x.reshape(-1, x.shape[-1], 1, 1))
        return y.reshape(*lead, -1)


__all__ = ["DEFAULT_ACTIVATION_BITS", "IntAdderConv2d", "IntAdderLinear", "IntShiftConv2d", "IntShiftLinear"]
