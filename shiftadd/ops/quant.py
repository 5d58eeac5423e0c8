"""Rounding, straight-through estimators and the fixed-point quantizer: the one implementation of each
(the bit-shift weights, the layers' fixed-point activations and :mod:`shiftadd.quant` all use these).

* :func:`round_values`: round to nearest (half to even) or stochastically, ``floor(x + u)`` with
  ``u ~ U[0, 1)``: up with probability equal to the fractional part (unbiased, as DeepShift's
  ``floor(x) + bernoulli(x - floor(x))``).
* :func:`straight_through` / :func:`round_ste`: a value in the forward pass, identity gradient.
* :func:`grid_codes` / :func:`quantize_to_grid`: ``q = clamp(round(x / s), qmin, qmax)``, ``x_q = q * s``,
  gradient straight through inside the range and zero where clipped. :func:`quantize_fixed_point` is the
  ``Q(int_bits).(frac_bits)`` format on top (``s = 2^-frac_bits``).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

ROUNDING_MODES = ("deterministic", "stochastic")


def round_values(x: torch.Tensor, stochastic: bool = False,
                 generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Round to nearest (half to even), or stochastically: up with probability equal to the fractional part."""
    if stochastic:
        return torch.floor(x + torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype))
    return torch.round(x)


def straight_through(x: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """``value`` in the forward pass, identity gradient with respect to ``x`` (straight-through estimator)."""
    return x + (value - x).detach()


def round_ste(x: torch.Tensor, lo: Optional[float] = None, hi: Optional[float] = None, stochastic: bool = False,
              generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """``round(clamp(x, lo, hi))`` forward; the gradient passes straight through the rounding *and* the clamp."""
    v = x.detach()
    if lo is not None or hi is not None:
        v = v.clamp(lo, hi)
    return straight_through(x, round_values(v, stochastic, generator))


def fixed_point_range(int_bits: int, frac_bits: int, signed: bool = True) -> Tuple[float, float]:
    """Smallest and largest value of a fixed-point format with ``int_bits + frac_bits`` bits.

    Signed formats spend one of the integer bits on the sign (two's complement).
    """
    if int_bits < (1 if signed else 0) or frac_bits < 0 or int_bits + frac_bits < 1:
        raise ValueError(
            f"invalid fixed-point format: int_bits={int_bits}, frac_bits={frac_bits}, signed={signed}"
            " (need int_bits >= 1 when signed, frac_bits >= 0, at least one bit)"
        )
    qmin, qmax = _fixed_point_codes_range(int_bits + frac_bits, signed)
    delta = 2.0 ** -frac_bits
    return qmin * delta, qmax * delta


def _fixed_point_codes_range(bits: int, signed: bool) -> Tuple[int, int]:
    return (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2 ** bits - 1)


def work_dtype(dtype: torch.dtype, qmin: int, qmax: int) -> torch.dtype:
    """float32 while every integer code is exact in it (formats of at most 24 bits), else float64."""
    return torch.float64 if (dtype == torch.float64 or max(-qmin, qmax) >= 2 ** 24) else torch.float32


def grid_codes(x: torch.Tensor, scale: torch.Tensor, qmin: int, qmax: int, stochastic: bool = False,
               generator: Optional[torch.Generator] = None) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(``q = clamp(round(x / scale), qmin, qmax)`` as floats in the work dtype, the scale in it, in-range mask).

    No gradient. The work dtype is :func:`work_dtype`, so codes and their clipping are exact.
    """
    wd = work_dtype(x.dtype, qmin, qmax)
    s = scale.to(device=x.device, dtype=wd)
    v = x.detach().to(wd) / s
    inside = (v >= qmin) & (v <= qmax)
    q = round_values(v, stochastic, generator).clamp_(qmin, qmax)
    return q, s, inside


class _QuantizeToGrid(torch.autograd.Function):
    """Forward: q * s exactly; backward: straight through inside the range, zero where clipped."""

    @staticmethod
    def forward(ctx, x, scale, qmin, qmax, stochastic, generator):  # type: ignore[override]
        q, s, inside = grid_codes(x, scale, qmin, qmax, stochastic, generator)
        ctx.save_for_backward(inside)
        return (q * s).to(x.dtype)

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        (inside,) = ctx.saved_tensors
        return g * inside.to(g.dtype), None, None, None, None, None


def quantize_to_grid(x: torch.Tensor, scale: torch.Tensor, qmin: int, qmax: int, stochastic: bool = False,
                     generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """``clamp(round(x / scale), qmin, qmax) * scale`` in ``x``'s dtype; gradient 1 inside the range, 0 where clipped."""
    return _QuantizeToGrid.apply(x, scale, qmin, qmax, stochastic, generator)


def quantize_fixed_point(x: torch.Tensor, int_bits: int, frac_bits: int, signed: bool = True) -> torch.Tensor:
    """Round ``x`` to the grid 2^-frac_bits (half to even) and clip it to the format's range.

    Gradient: straight through the rounding, zero where the value was clipped.
    """
    fixed_point_range(int_bits, frac_bits, signed)  # validates the format
    qmin, qmax = _fixed_point_codes_range(int_bits + frac_bits, signed)
    scale = torch.tensor(2.0 ** -frac_bits, dtype=torch.float64)
    return quantize_to_grid(x, scale, qmin, qmax)
