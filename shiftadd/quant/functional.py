"""Fixed-point quantizers: scale choice, the integer mapping, fake quantization with a straight-through
estimator, and an identity whose *gradient* is quantized (for output errors and weight gradients).

The integer mapping of a :class:`TensorQuant` ``spec`` with scale ``s`` is

    q = clamp(round(x / s), qmin, qmax)          (round: half-to-even, or stochastic floor(v + u))
    x_q = q * s

:func:`quantize_to_int` returns ``(q, s)``; :func:`fake_quantize` returns ``x_q`` in ``x``'s dtype and
is bit-identical to ``dequantize(*quantize_to_int(x))``. Arithmetic is done in float32 for formats of
at most 24 bits (every integer code is exact there) and in float64 for wider ones (FIX32), so FIX32
codes and their clipping are exact; the dequantized value is then rounded to ``x``'s dtype. The rounding
and the quantizer itself are :mod:`shiftadd.ops.quant`'s (``grid_codes`` / ``quantize_to_grid``); this
module chooses the scale and the range from a ``TensorQuant``.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple

import torch

from shiftadd.ops.quant import grid_codes, quantize_to_grid, work_dtype
from shiftadd.quant.config import TensorQuant

# Fraction bits are kept where 2^-f is a normal float32 number.
F_MIN, F_MAX = -126, 126


def _reduce_dims(x: torch.Tensor, granularity: str, channel_dim: int) -> Optional[Tuple[int, ...]]:
    if granularity == "tensor" or x.dim() == 0:
        return None
    c = channel_dim % x.dim() if x.dim() else 0
    return tuple(d for d in range(x.dim()) if d != c)


def max_abs(x: torch.Tensor, granularity: str = "tensor", channel_dim: int = 0) -> torch.Tensor:
    """max |x| over the tensor (a 0-d tensor) or per channel (kept dims, broadcastable to ``x``)."""
    a = x.detach().abs()
    dims = _reduce_dims(x, granularity, channel_dim)
    if dims is None:
        return a.amax()
    if not dims:  # 1-D tensor with per-channel granularity: every element is its own channel
        return a
    return a.amax(dim=dims, keepdim=True)


def pow2_frac_bits(m: torch.Tensor, qmax: int) -> torch.Tensor:
    """The largest integer f with ``qmax * 2^-f >= m`` (so that m is representable without clipping).

    Zero or non-finite maxima give f = 0; f is kept in [-126, 126] (2^-f a normal float32).
    """
    m64 = m.to(torch.float64)
    ok = torch.isfinite(m64) & (m64 > 0)
    safe = torch.where(ok, m64, torch.ones_like(m64))
    f = torch.floor(math.log2(qmax) - torch.log2(safe))
    # correct the floating-point log2 at exact boundaries
    f = torch.where(qmax * torch.pow(2.0, -f) < safe, f - 1, f)
    f = torch.where(qmax * torch.pow(2.0, -(f + 1)) >= safe, f + 1, f)
    f = torch.where(ok, f, torch.zeros_like(f))
    return f.clamp(F_MIN, F_MAX)


def compute_scale(x: torch.Tensor, spec: TensorQuant, channel_dim: int = 0,
                  m: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The scale ``s`` (float64, broadcastable to ``x``) that ``spec`` uses for ``x``.

    pow2 with ``frac_bits``: 2^-frac_bits; pow2 otherwise: 2^-f with f = :func:`pow2_frac_bits` of
    max|x|; free: max|x| / qmax (1 where max|x| is 0). ``m`` overrides max|x| (calibrated ranges).
    """
    if spec.frac_bits is not None:
        return torch.tensor(2.0 ** -spec.frac_bits, dtype=torch.float64, device=x.device)
    if m is None:
        m = max_abs(x, spec.granularity, channel_dim)
    m = m.to(device=x.device, dtype=torch.float64)
    if spec.scale == "pow2":
        return torch.pow(2.0, -pow2_frac_bits(m, spec.qmax))
    ok = torch.isfinite(m) & (m > 0)
    return torch.where(ok, m / spec.qmax, torch.ones_like(m))


def quantize_to_int(x: torch.Tensor, spec: TensorQuant, scale: Optional[torch.Tensor] = None,
                    channel_dim: int = 0, generator: Optional[torch.Generator] = None,
                    ) -> Tuple[torch.Tensor, torch.Tensor]:
    """The integer codes ``q`` (int64, in [qmin, qmax]) and the scale ``s`` (float64) with x ~ q * s."""
    if scale is None:
        scale = compute_scale(x, spec, channel_dim)
    q, _, _ = grid_codes(x, scale, spec.qmin, spec.qmax, spec.rounding == "stochastic", generator)
    return q.to(torch.int64), scale.to(torch.float64)


def dequantize(q: torch.Tensor, scale: torch.Tensor, spec: TensorQuant,
               dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``q * scale`` computed like :func:`fake_quantize` does (bit-identical result) in ``dtype``."""
    wd = work_dtype(dtype, spec.qmin, spec.qmax)
    return (q.to(wd) * scale.to(device=q.device, dtype=wd)).to(dtype)


def fake_quantize(x: torch.Tensor, spec: TensorQuant, scale: Optional[torch.Tensor] = None,
                  channel_dim: int = 0, generator: Optional[torch.Generator] = None,
                  stochastic: Optional[bool] = None) -> torch.Tensor:
    """``x`` rounded to ``spec``'s fixed-point grid and clipped to its range, in ``x``'s dtype.

    Gradient: straight-through estimator, 1 inside the representable range and 0 where clipped.
    ``scale`` overrides the scale choice of ``spec`` (see :func:`compute_scale`).
    """
    if x.numel() == 0:
        return x
    if scale is None:
        scale = compute_scale(x, spec, channel_dim)
    st = spec.rounding == "stochastic" if stochastic is None else bool(stochastic)
    return quantize_to_grid(x, scale, spec.qmin, spec.qmax, st, generator)


class _GradQuant(torch.autograd.Function):
    """Identity forward; the incoming gradient is fake-quantized with ``spec`` in backward."""

    @staticmethod
    def forward(ctx, x, spec, channel_dim):  # type: ignore[override]
        ctx.spec, ctx.channel_dim = spec, channel_dim
        return x.clone()  # not a view: the next layer may modify it in place (e.g. ReLU(inplace=True))

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        if g is None or g.numel() == 0:
            return g, None, None
        with torch.no_grad():
            gq = fake_quantize(g, ctx.spec, channel_dim=ctx.channel_dim)
        return gq, None, None


def quantize_grad(x: torch.Tensor, spec: Optional[TensorQuant], channel_dim: int = 0) -> torch.Tensor:
    """``x`` unchanged, but the gradient flowing back through it is quantized with ``spec``."""
    if spec is None or not x.requires_grad:
        return x
    return _GradQuant.apply(x, spec, channel_dim)


def fixed_point_format(x: torch.Tensor, spec: TensorQuant, channel_dim: int = 0) -> Sequence[Tuple[int, int]]:
    """The ``(int_bits, frac_bits)`` Q-format(s) a pow2 ``spec`` picks for ``x`` (one per channel).

    ``int_bits`` counts the sign bit of signed formats (``int_bits + frac_bits == bits``).
    """
    if spec.scale != "pow2":
        raise ValueError("fixed_point_format needs a pow2 (fixed-point) spec")
    s = compute_scale(x, spec, channel_dim)
    f = (-torch.log2(s)).round().to(torch.int64).flatten().tolist()
    return [(spec.bits - fi, fi) for fi in f]
