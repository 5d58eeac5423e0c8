"""Integer inference for adder and power-of-two shift layers.

Adder (shared-scale int8, after "AdderNet and its minimalist hardware design"): input and weight
use ONE scale s, so  -sum|x - w| ~= -sum|s qx - s qw| = s * (-sum|qx - qw|)  and the integer part
needs only subtractions, absolute values and additions. The CPU kernel uses sum-of-absolute-
differences instructions (``vpsadbw``) on bytes biased by +128 (|a - b| does not change when both
are shifted). Result: int32, exactly the integer sum.

Shift (DeepShift weights w = s * 2^p, p <= 0, s in {-1, 0, 1}) on fixed-point activations
x = qx * 2^-f: with e = -min p,  sum w x = 2^-(f + e) * sum s * (qx << (p + e)),  so the integer
part is a sum of left shifts of the integer activations, negated where s = -1 (two's
complement: bit flip, then +1). int32 when it provably cannot overflow, int64 otherwise.

Without the C++ extension both fall back to exact float64 PyTorch arithmetic (same integers).
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from shiftadd.kernels._build import load_extension

IntOrPair = Union[int, Sequence[int]]



def _pair(v: IntOrPair) -> Tuple[int, int]:
    if isinstance(v, int):
        return (v, v)
    t = tuple(int(a) for a in v)
    return (t[0], t[0]) if len(t) == 1 else (t[0], t[1])


def _ext():
    return load_extension()


# ---------------------------------------------------------------------------------------------
# int8 adder


def quantize_symmetric(x: torch.Tensor, scale: float, bits: int = 8) -> torch.Tensor:
    """round(x / scale) clipped to [-(2^(bits-1) - 1), 2^(bits-1) - 1], as int8 (bits <= 8)."""
    if not 2 <= bits <= 8:
        raise ValueError(f"bits must be in [2, 8] for int8 storage, got {bits}")
    if not scale > 0:
        raise ValueError(f"scale must be > 0, got {scale}")
    qmax = 2 ** (bits - 1) - 1
    return torch.round(x.detach().float() / scale).clamp_(-qmax, qmax).to(torch.int8)


def _check_int8(t: torch.Tensor, name: str) -> None:
    if t.dtype != torch.int8:
        raise TypeError(f"{name} must be an int8 tensor, got {t.dtype}")


def int_adder_conv2d(qx: torch.Tensor, qw: torch.Tensor, stride: IntOrPair = 1, padding: IntOrPair = 0,
                     dilation: IntOrPair = 1, groups: int = 1) -> torch.Tensor:
    """Integer adder conv: out[n,o,i,j] = -sum_{c,u,v} |qx[n,c,.,.] - qw[o,c,u,v]| as int32.

    qx: int8 (N, C, H, W), qw: int8 (O, C/groups, kh, kw); zero padding means qx = 0.
    """
    _check_int8(qx, "qx")
    _check_int8(qw, "qw")
    if qx.dim() != 4 or qw.dim() != 4:
        raise ValueError(f"expected qx (N, C, H, W) and qw (O, C/groups, kh, kw), got {tuple(qx.shape)}, {tuple(qw.shape)}")
    s, p, d = _pair(stride), _pair(padding), _pair(dilation)
    ext = _ext()
    if ext is not None and qx.device.type == "cpu":
        return ext.sad_conv(qx, qw.contiguous(), s, p, d, int(groups))  # any strides (NCHW or channels_last)
    return _int_adder_conv2d_torch(qx, qw, s, p, d, groups)


def _int_adder_conv2d_torch(qx, qw, s, p, d, groups):
    """Exact fallback: float64 holds these integer sums exactly."""
    N, C, H, Wd = qx.shape
    O, Cg, kh, kw = qw.shape
    cols = F.unfold(qx.double(), (kh, kw), dilation=d, padding=p, stride=s)  # (N, C*kh*kw, L)
    L = cols.shape[-1]
    K = Cg * kh * kw
    X = cols.view(N, groups, K, L).permute(1, 0, 3, 2).reshape(groups, N * L, K)
    Y = -torch.cdist(X, qw.double().reshape(groups, O // groups, K), p=1)
    Ho = (H + 2 * p[0] - d[0] * (kh - 1) - 1) // s[0] + 1
    return Y.view(groups, N, L, O // groups).permute(1, 0, 3, 2).reshape(N, O, Ho, L // Ho).round().to(torch.int32)


def int_adder_matmul(qX: torch.Tensor, qW: torch.Tensor) -> torch.Tensor:
    """Integer adder primitive: qX int8 (G, P, K), qW int8 (G, O, K) -> int32 (G, P, O) = -sum|qX - qW|."""
    _check_int8(qX, "qX")
    _check_int8(qW, "qW")
    if qX.dim() != 3 or qW.dim() != 3 or qX.shape[0] != qW.shape[0] or qX.shape[2] != qW.shape[2]:
        raise ValueError(f"expected qX (G, P, K) and qW (G, O, K), got {tuple(qX.shape)}, {tuple(qW.shape)}")
    ext = _ext()
    if ext is not None and qX.device.type == "cpu":
        return ext.sad_mm(qX.contiguous(), qW.contiguous())
    return (-torch.cdist(qX.double(), qW.double(), p=1)).round().to(torch.int32)


# ---------------------------------------------------------------------------------------------
# power-of-two shift


def decompose_pow2(weight: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, int]:
    """Split a power-of-two weight tensor into (shift, sign, e) with weight = sign * 2^(shift - e).

    shift: int32 >= 0, sign: int8 in {-1, 0, 1}, e: int (>= 0 when all |w| <= 1). Raises
    ValueError if a nonzero entry is not an exact power of two.
    """
    w = weight.detach().double()
    nz = w != 0
    if not bool(nz.any()):
        return torch.zeros(w.shape, dtype=torch.int32), torch.zeros(w.shape, dtype=torch.int8), 0
    mant, ex = torch.frexp(w[nz])  # |w| = |mant| * 2^ex, |mant| in [0.5, 1)
    if not bool((mant.abs() == 0.5).all()):
        raise ValueError("weight has entries that are not 0 or a power of two (+-2^p); convert the layer's .weight (effective weight)")
    p = torch.zeros(w.shape, dtype=torch.int64)
    p[nz] = ex.to(torch.int64) - 1
    e = int(-p[nz].min())
    shift = torch.where(nz, p + e, torch.zeros_like(p))
    if int(shift.max()) > 30:
        raise ValueError(f"power-of-two weights span {int(shift.max())} + 1 octaves; at most 31 are supported")
    return shift.to(torch.int32), torch.sign(w).to(torch.int8), e


def int_shift_conv2d(qx: torch.Tensor, shift: torch.Tensor, sign: torch.Tensor, stride: IntOrPair = 1,
                     padding: IntOrPair = 0, dilation: IntOrPair = 1, groups: int = 1) -> torch.Tensor:
    """out[n,o,i,j] = sum_{c,u,v} sign[o,c,u,v] * (qx[n,c,.,.] << shift[o,c,u,v]), integers only.

    qx: integer (N, C, H, W); shift: (O, C/groups, kh, kw) in [0, 30]; sign: same shape in {-1, 0, 1}.
    Returns int32 when |result| < 2^31 is guaranteed (max|qx| * 2^max_shift * K), else int64.
    """
    if qx.dtype.is_floating_point or qx.dtype == torch.bool:
        raise TypeError(f"qx must be an integer tensor, got {qx.dtype}")
    if qx.dim() != 4 or shift.dim() != 4 or shift.shape != sign.shape:
        raise ValueError("expected qx (N, C, H, W), shift and sign (O, C/groups, kh, kw) of the same shape")
    s, p, d = _pair(stride), _pair(padding), _pair(dilation)
    qmax = int(qx.abs().max()) if qx.numel() else 0
    smax = int(shift.max()) if shift.numel() else 0
    K = shift[0].numel()
    fits32 = qmax < 2 ** 31 and qmax * (2 ** smax) * max(K, 1) < 2 ** 31
    ext = _ext()
    if ext is not None and qx.device.type == "cpu" and qmax < 2 ** 31:
        q32 = qx.to(torch.int32).contiguous()
        sh, sg = shift.to(torch.int32).contiguous(), sign.to(torch.int32).contiguous()
        if fits32:
            return ext.shift_conv(q32, sh, sg, s, p, d, int(groups))
        return ext.shift_conv64(q32, sh, sg, s, p, d, int(groups))
    # exact float64 fallback (|values| < 2^53 checked)
    if qmax * (2 ** smax) * max(K, 1) >= 2 ** 53:
        raise ValueError("integer shift conv: values too large for the exact fallback")
    wq = sign.double() * torch.pow(2.0, shift.double())
    y = F.conv2d(qx.double(), wq, None, s, p, d, groups).round()
    return y.to(torch.int32 if fits32 else torch.int64)


# ---------------------------------------------------------------------------------------------
# inference modules


class _SharedScaleInt8(nn.Module):
    """Shared-scale quantisation of an adder layer's input and weight to int8 codes.

    Either the layer's own :class:`shiftadd.quant.SharedScaleQuantizer` (``layer.shared_quantizer``,
    its calibrated scale and rounding, so the result equals that quantiser's simulation), or
    s = max(act_max, max|w|) / 127 with ``act_max`` from :meth:`calibrate` / the constructor, or
    from each batch when unset (dynamic).
    """

    def _init_quant(self, weight: torch.Tensor, act_max: Optional[float], bits: int, quantizer=None) -> None:
        self.register_buffer("weight", weight.detach().float().clone())
        self.bits = int(bits)
        self.act_max = None if act_max is None else float(act_max)
        self.spec, self.fixed_scale = None, None
        if quantizer is not None:
            if quantizer.spec.bits > 8:
                raise ValueError(f"the int8 kernels need <= 8 bits, the layer's shared scale has {quantizer.spec.bits}")
            self.spec, self.bits = quantizer.spec, quantizer.spec.bits
            self.fixed_scale = quantizer.scale(self.weight)  # float64 scalar tensor
        self._cache: Optional[Tuple[float, torch.Tensor]] = None

    @torch.no_grad()
    def calibrate(self, x: torch.Tensor):
        """Fix the activation range from a representative batch (own scale only)."""
        if self.spec is not None:
            raise RuntimeError("this layer uses its shared-scale quantiser's calibration")
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
            from shiftadd.quant.functional import quantize_to_int

            return quantize_to_int(t, self.spec, scale=self.fixed_scale)[0].to(torch.int8)
        return quantize_symmetric(t, s, self.bits)

    def _qweight(self, s: float) -> torch.Tensor:
        if self._cache is None or self._cache[0] != s:
            self._cache = (s, self._codes(self.weight, s))
        return self._cache[1]


def _shared_quantizer(module: nn.Module):
    q = module._modules.get("shared_quantizer")
    return q if q is not None and hasattr(q, "spec") and hasattr(q, "scale") else None


def _effective_weight(module: nn.Module) -> torch.Tensor:
    w = module.weight.detach()
    mask = module._modules.get("pruning")
    if mask is not None and hasattr(mask, "mask"):
        w = w * mask.mask
    return w


class IntAdderConv2d(_SharedScaleInt8):
    """Inference-only adder conv2d on int8 codes with one shared scale (float in, float out):
    out = s * int_adder_conv2d(q(x), q(w)) + bias (see :class:`_SharedScaleInt8` for s)."""

    def __init__(self, weight: torch.Tensor, bias: Optional[torch.Tensor] = None, stride: IntOrPair = 1,
                 padding: IntOrPair = 0, dilation: IntOrPair = 1, groups: int = 1,
                 act_max: Optional[float] = None, bits: int = 8, quantizer=None) -> None:
        super().__init__()
        self._init_quant(weight, act_max, bits, quantizer)
        self.register_buffer("bias", None if bias is None else bias.detach().float().clone())
        self.stride, self.padding, self.dilation = _pair(stride), _pair(padding), _pair(dilation)
        self.groups = int(groups)

    _dim = 2

    @classmethod
    def from_float(cls, module: nn.Module, act_max: Optional[float] = None, bits: int = 8) -> "IntAdderConv2d":
        """From a trained AdderConv2d (or AdderConv1d, used as a 1 x k conv2d); uses the layer's
        shared-scale quantiser when it has one (``shiftadd.quant.shared_scale``)."""
        w = _effective_weight(module)
        q = _shared_quantizer(module)
        if w.dim() == 3:  # conv1d
            m = cls(w.unsqueeze(2), module.bias, (1, module.stride[0]), (0, module.padding[0]),
                    (1, module.dilation[0]), module.groups, act_max, bits, q)
            m._dim = 1
            return m
        return cls(w, module.bias, module.stride, module.padding, module.dilation, module.groups, act_max, bits, q)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        unsq = self._dim == 1
        if unsq:
            x = x.unsqueeze(2)
        s = self.scale(x)
        y = int_adder_conv2d(self._codes(x, s), self._qweight(s), self.stride, self.padding,
                             self.dilation, self.groups).float() * s
        if self.bias is not None:
            y = y + self.bias.view(1, -1, 1, 1)
        return y.squeeze(2) if unsq else y

    def extra_repr(self) -> str:
        return (f"{self.weight.shape[1] * self.groups}, {self.weight.shape[0]}, kernel_size={tuple(self.weight.shape[2:])}, "
                f"stride={self.stride}, padding={self.padding}, bits={self.bits}, "
                f"scale={'shared quantiser' if self.spec is not None else self.act_max}")


class IntAdderLinear(_SharedScaleInt8):
    """Inference-only adder linear layer on int8 codes with one shared scale (see IntAdderConv2d)."""

    def __init__(self, weight: torch.Tensor, bias: Optional[torch.Tensor] = None, act_max: Optional[float] = None,
                 bits: int = 8, quantizer=None) -> None:
        super().__init__()
        self._init_quant(weight, act_max, bits, quantizer)
        self.register_buffer("bias", None if bias is None else bias.detach().float().clone())

    @classmethod
    def from_float(cls, module: nn.Module, act_max: Optional[float] = None, bits: int = 8) -> "IntAdderLinear":
        return cls(_effective_weight(module), module.bias, act_max, bits, _shared_quantizer(module))

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.scale(x)
        lead = x.shape[:-1]
        qx = self._codes(x.reshape(1, -1, x.shape[-1]), s)
        y = int_adder_matmul(qx, self._qweight(s).unsqueeze(0)).float().reshape(*lead, -1) * s
        return y + self.bias if self.bias is not None else y

    def extra_repr(self) -> str:
        return f"in_features={self.weight.shape[1]}, out_features={self.weight.shape[0]}, bits={self.bits}"


DEFAULT_ACTIVATION_BITS = (8, 8)


def _fixed_point(x: torch.Tensor, bits: Tuple[int, int], signed: bool) -> torch.Tensor:
    """Integer code of quantize_fixed_point(x): round(clamp(x) * 2^frac) (int32)."""
    from shiftadd.ops.quant import fixed_point_range

    lo, hi = fixed_point_range(bits[0], bits[1], signed)
    return torch.round(x.detach().double().clamp(lo, hi) * 2.0 ** bits[1]).to(torch.int32)


class IntShiftConv2d(nn.Module):
    """Inference-only DeepShift conv2d: fixed-point integer activations, shifts and adds only.

    x -> qx = round(clamp(x) * 2^f) (the layer's ``activation_bits`` (int_bits, f), or
    (8, 8) if it has none);  out = 2^-(f + e) * sum sign * (qx << shift) + bias.
    """

    def __init__(self, weight: torch.Tensor, bias: Optional[torch.Tensor] = None, stride: IntOrPair = 1,
                 padding: IntOrPair = 0, dilation: IntOrPair = 1, groups: int = 1,
                 activation_bits: Sequence[int] = DEFAULT_ACTIVATION_BITS, activation_signed: bool = True) -> None:
        super().__init__()
        shift, sign, e = decompose_pow2(weight)
        self.register_buffer("shift", shift)
        self.register_buffer("sign", sign)
        self.exponent = e
        self.register_buffer("bias", None if bias is None else bias.detach().float().clone())
        self.stride, self.padding, self.dilation = _pair(stride), _pair(padding), _pair(dilation)
        self.groups = int(groups)
        self.activation_bits = (int(activation_bits[0]), int(activation_bits[1]))
        self.activation_signed = bool(activation_signed)

    _dim = 2

    @classmethod
    def from_float(cls, module: nn.Module, activation_bits: Optional[Sequence[int]] = None) -> "IntShiftConv2d":
        """From a ShiftConv2d / ShiftConv1d (uses its effective power-of-two ``.weight`` in eval mode)."""
        was = module.training
        module.eval()
        with torch.no_grad():
            w = module.weight.detach()
        module.train(was)
        bits = module.activation_bits or activation_bits or DEFAULT_ACTIVATION_BITS
        signed = getattr(module, "activation_signed", True)
        if w.dim() == 3:
            m = cls(w.unsqueeze(2), module.bias, (1, module.stride[0]), (0, module.padding[0]), (1, module.dilation[0]),
                    module.groups, bits, signed)
            m._dim = 1
            return m
        return cls(w, module.bias, module.stride, module.padding, module.dilation, module.groups, bits, signed)

    def integer_forward(self, qx: torch.Tensor) -> torch.Tensor:
        """The integer part alone: int32/int64 sum sign * (qx << shift)."""
        return int_shift_conv2d(qx, self.shift, self.sign, self.stride, self.padding, self.dilation, self.groups)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        unsq = self._dim == 1
        if unsq:
            x = x.unsqueeze(2)
        qx = _fixed_point(x, self.activation_bits, self.activation_signed)
        y = self.integer_forward(qx).double() * 2.0 ** -(self.activation_bits[1] + self.exponent)
        y = y.to(x.dtype if x.is_floating_point() else torch.float32)
        if self.bias is not None:
            y = y + self.bias.view(1, -1, 1, 1)
        return y.squeeze(2) if unsq else y

    def extra_repr(self) -> str:
        return (f"{self.shift.shape[1] * self.groups}, {self.shift.shape[0]}, kernel_size={tuple(self.shift.shape[2:])}, "
                f"stride={self.stride}, padding={self.padding}, activation_bits={self.activation_bits}, "
                f"exponent={self.exponent}")


class IntShiftLinear(nn.Module):
    """Inference-only DeepShift linear layer (a 1 x 1 IntShiftConv2d underneath)."""

    def __init__(self, conv: IntShiftConv2d) -> None:
        super().__init__()
        self.conv = conv

    @classmethod
    def from_float(cls, module: nn.Module, activation_bits: Optional[Sequence[int]] = None) -> "IntShiftLinear":
        was = module.training
        module.eval()
        with torch.no_grad():
            w = module.weight.detach()
        module.train(was)
        bits = module.activation_bits or activation_bits or DEFAULT_ACTIVATION_BITS
        conv = IntShiftConv2d(w[:, :, None, None], module.bias, activation_bits=bits,
                              activation_signed=getattr(module, "activation_signed", True))
        return cls(conv)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        y = self.conv(x.reshape(-1, x.shape[-1], 1, 1))
        return y.reshape(*lead, -1)


def to_integer_module(module: nn.Module, act_max: Optional[float] = None,
                      activation_bits: Optional[Sequence[int]] = None) -> nn.Module:
    """The integer inference version of one trained adder or shift layer.

    AdderConv1d/2d -> IntAdderConv2d, AdderLinear -> IntAdderLinear (shared-scale int8);
    ShiftConv1d/2d -> IntShiftConv2d, ShiftLinear -> IntShiftLinear (fixed-point activations).
    """
    from shiftadd.nn import AdderConv1d, AdderConv2d, AdderLinear, ShiftConv1d, ShiftConv2d, ShiftLinear

    if isinstance(module, (AdderConv1d, AdderConv2d)):
        return IntAdderConv2d.from_float(module, act_max)
    if isinstance(module, AdderLinear):
        return IntAdderLinear.from_float(module, act_max)
    if isinstance(module, (ShiftConv1d, ShiftConv2d)):
        return IntShiftConv2d.from_float(module, activation_bits)
    if isinstance(module, ShiftLinear):
        return IntShiftLinear.from_float(module, activation_bits)
    raise TypeError(f"no integer version of {type(module).__name__}; expected an adder or shift layer")


def to_integer(model: nn.Module, activation_bits: Optional[Sequence[int]] = None) -> nn.Module:
    """Replace every adder / shift layer of ``model`` (in place) by its integer inference module.

    Adder layers use a dynamic shared scale (per batch); call ``.calibrate(x)`` on them to fix it.
    Returns the model, for chaining. Other layers (BN, ReLU, float convs) are left as they are.
    """
    from shiftadd.nn import ADDER_TYPES, SHIFT_TYPES

    if isinstance(model, ADDER_TYPES + SHIFT_TYPES):
        return to_integer_module(model, activation_bits=activation_bits)
    for name, child in list(model.named_children()):
        if isinstance(child, ADDER_TYPES + SHIFT_TYPES):
            setattr(model, name, to_integer_module(child, activation_bits=activation_bits))
        else:
            to_integer(child, activation_bits)
    return model
