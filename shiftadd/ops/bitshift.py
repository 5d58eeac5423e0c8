"""DeepShift operator (Elhoushi et al., "DeepShift: Towards Multiplication-Less Neural
Networks", CVPR-W 2021): weights restricted to 0 or +-2^p so that a product is a bit shift.

* DeepShift-PS trains the shift p and the sign s directly:
  w = ternary(s) * 2^round(clamp(p, p_min, 0)), with straight-through rounding.
* DeepShift-Q keeps a latent float weight and rounds it in the forward pass:
  w = sign(w) * 2^round(log2 |w|) (exponent clamped to the range), straight-through.

``weight_bits`` bits hold one sign bit and ``weight_bits - 1`` shift bits, as in DeepShift's code
(``shift_range`` in ``deepshift/modules.py`` and ``modules_q.py``). DeepShift-Q's sign is binary, so all
2^(bits-1) shift codes are shifts: p in [-(2^(bits-1) - 1), 0] ([-15, 0] for 5 bits). DeepShift-PS's sign
is ternary and zero takes one code: p in [-(2^(bits-1) - 2), 0] ([-14, 0] for 5 bits).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from shiftadd.ops.quant import ROUNDING_MODES, round_ste, round_values, straight_through

SHIFT_MODES = ("ps", "q")

__all__ = ["ROUNDING_MODES", "SHIFT_MODES", "shift_range", "ps_weight", "q_weight", "round_power_of_two",
           "shift_sign_from_weight"]


def shift_range(weight_bits: int, mode: str = "ps") -> Tuple[int, int]:
    """(p_min, p_max) of the shift for ``weight_bits`` bits including the sign bit, for DeepShift-``mode``.

    "ps" (ternary sign): [-(2^(bits-1) - 2), 0]; "q" (binary sign): [-(2^(bits-1) - 1), 0].
    """
    if mode not in SHIFT_MODES:
        raise ValueError(f"mode must be one of {SHIFT_MODES}, got {mode!r}")
    if weight_bits < 2:
        raise ValueError(f"weight_bits must be >= 2 (one sign bit and at least one shift bit), got {weight_bits}")
    codes = 2 ** (weight_bits - 1)  # values of the shift field
    return -(codes - 2 if mode == "ps" else codes - 1), 0


def _exponent(w: torch.Tensor, weight_bits: int, mode: str, stochastic: bool = False,
              generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """round(log2|w|) clamped to the shift range of ``mode`` (|w| = 0, log2 = -inf, gives p_min).

    No clamping to the smallest normal number first: that would cap the exponent at -126 in float32,
    while 8-bit DeepShift-Q reaches 2^-127 (a subnormal float32).
    """
    p_min, p_max = shift_range(weight_bits, mode)
    return round_values(torch.log2(w.abs()), stochastic, generator).clamp(p_min, p_max)


def ps_weight(
    shift: torch.Tensor,
    sign: torch.Tensor,
    weight_bits: int = 5,
    stochastic: bool = False,
    generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """DeepShift-PS effective weight round(clamp(s, -1, 1)) * 2^round(clamp(p)), straight-through.

    Stochastic rounding rounds the shift and the sign (as DeepShift's ``ste.round(sign, rounding)``): for s in
    (-1, 1) the sign is sign(s) with probability |s| and 0 otherwise.
    """
    p_min, p_max = shift_range(weight_bits, "ps")
    p = round_ste(shift, p_min, p_max, stochastic, generator)
    s = round_ste(sign, -1.0, 1.0, stochastic, generator)  # ternary sign in {-1, 0, 1}
    return s * torch.pow(2.0, p)  # w = s * 2^p


def round_power_of_two(w: torch.Tensor, weight_bits: int = 5, stochastic: bool = False,
                       generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """sign(w) * 2^round(log2|w|), exponent clamped to DeepShift-Q's range; zero stays zero (no STE)."""
    return torch.sign(w) * torch.pow(2.0, _exponent(w, weight_bits, "q", stochastic, generator))


def q_weight(latent: torch.Tensor, weight_bits: int = 5, stochastic: bool = False,
             generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """DeepShift-Q effective weight: latent weight rounded to a power of two, straight-through."""
    return straight_through(latent, round_power_of_two(latent.detach(), weight_bits, stochastic, generator))


def shift_sign_from_weight(w: torch.Tensor, weight_bits: int = 5) -> Tuple[torch.Tensor, torch.Tensor]:
    """(p, s) with p = round(log2|w|) clamped to the PS range and s = sign(w), to initialise PS layers."""
    return _exponent(w, weight_bits, "ps"), torch.sign(w)
