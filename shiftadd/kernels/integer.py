"""Integer kernels for adder and power-of-two shift layers (the inference modules: shiftadd.export).

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

from typing import Tuple

import torch
import torch.nn.functional as F

from shiftadd.kernels._build import load_extension
from shiftadd.ops.im2col import col2im_grouped, im2col_grouped
from shiftadd.utils import IntOrTuple as IntOrPair
from shiftadd.utils import pair


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
    s, p, d = pair(stride, "stride"), pair(padding, "padding"), pair(dilation, "dilation")
    ext = _ext()
    if ext is not None and qx.device.type == "cpu":
        return ext.sad_conv(qx, qw.contiguous(), s, p, d, int(groups))  # any strides (NCHW or channels_last)
    return _int_adder_conv2d_torch(qx, qw, s, p, d, groups)


def _int_adder_conv2d_torch(qx, qw, s, p, d, groups):
    """Exact fallback: float64 holds these integer sums exactly."""
    O, Cg, kh, kw = qw.shape
    X, out_size = im2col_grouped(qx.double(), (kh, kw), s, p, d, groups)
    Y = -torch.cdist(X, qw.double().reshape(groups, O // groups, Cg * kh * kw), p=1)
    return col2im_grouped(Y, qx.shape[0], out_size).round().to(torch.int32)


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
    s, p, d = pair(stride, "stride"), pair(padding, "padding"), pair(dilation, "dilation")
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
