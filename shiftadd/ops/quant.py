"""Fixed-point quantisers with straight-through estimators."""
from __future__ import annotations

from typing import Tuple

import torch


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """Round to nearest; the gradient passes straight through (STE)."""
    return x + (torch.round(x) - x).detach()


def fixed_point_range(int_bits: int, frac_bits: int, signed: bool = True) -> Tuple[float, float]:
    """Smallest and largest value of a fixed-point format with ``int_bits + frac_bits`` bits.

    Signed formats spend one of the integer bits on the sign (two's complement).
    """
    if int_bits < (1 if signed else 0) or frac_bits < 0 or int_bits + frac_bits < 1:
        raise ValueError(
            f"invalid fixed-point format: int_bits={int_bits}, frac_bits={frac_bits}, signed={signed}"
            " (need int_bits >= 1 when signed, frac_bits >= 0, at least one bit)"
        )
    delta = 2.0 ** -frac_bits
    if signed:
        return -(2.0 ** (int_bits - 1)), 2.0 ** (int_bits - 1) - delta
    return 0.0, 2.0 ** int_bits - delta


def quantize_fixed_point(x: torch.Tensor, int_bits: int, frac_bits: int, signed: bool = True) -> torch.Tensor:
    """Round ``x`` to the grid 2^-frac_bits and clip it to the format's range.

    Gradient: straight through the rounding, zero where the value was clipped.
    """
    lo, hi = fixed_point_range(int_bits, frac_bits, signed)
    delta = 2.0 ** -frac_bits
    xc = x.clamp(lo, hi)
    return xc + (torch.round(xc / delta) * delta - xc).detach()
