"""DeepShift operator (Elhoushi et al., "DeepShift: Towards Multiplication-Less Neural
Networks", CVPR-W 2021): weights restricted to 0 or +-2^p so that a product is a bit shift.

* DeepShift-PS trains the shift p and the sign s directly:
  w = ternary(s) * 2^round(clamp(p, p_min, 0)), with straight-through rounding.
* DeepShift-Q keeps a latent float weight and rounds it in the forward pass:
  w = sign(w) * 2^round(log2 |w|) (exponent clamped to the same range), straight-through.

With ``weight_bits`` bits (one for the sign) the shift takes values p in
[-(2^(bits-1) - 2), 0], e.g. [-14, 0] for the default 5 bits, as in DeepShift.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

ROUNDING_MODES = ("deterministic", "stochastic")


def shift_range(weight_bits: int) -> Tuple[int, int]:
    """(p_min, p_max) of the shift for ``weight_bits`` bits including the sign bit."""
    if weight_bits < 2:
        raise ValueError(f"weight_bits must be >= 2 (one sign bit and at least one shift bit), got {weight_bits}")
    return -(2 ** (weight_bits - 1) - 2), 0


def _round(x: torch.Tensor, stochastic: bool, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    if stochastic:  # round up with probability equal to the fractional part
        return torch.floor(x + torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype))
    return torch.round(x)


def _exponent(w: torch.Tensor, weight_bits: int, stochastic: bool = False,
              generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """round(log2|w|) clamped to the shift range (|w| = 0 gives p_min)."""
    p_min, p_max = shift_range(weight_bits)
    log_mag = torch.log2(w.abs().clamp_min(torch.finfo(w.dtype).tiny))
    return _round(log_mag, stochastic, generator).clamp(p_min, p_max)

def ste(x: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """``value`` in the forward pass, identity gradient with respect to ``x``."""
    return x + (value - x).detach()


def ps_weight(
    shift: torch.Tensor,
    sign: torch.Tensor,
    weight_bits: int = 5,
    stochastic: bool = False,
    generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """DeepShift-PS effective weight ternary(s) * 2^round(clamp(p)) with STE rounding."""
    p_min, p_max = shift_range(weight_bits)
    p = ste(shift, _round(shift.detach().clamp(p_min, p_max), stochastic, generator))
    s = ste(sign, torch.round(sign.detach().clamp(-1, 1)))  # ternary sign in {-1, 0, 1}
    return s * torch.pow(2.0, p)  # w = s * 2^p


def round_power_of_two(w: torch.Tensor, weight_bits: int = 5, stochastic: bool = False,
                       generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """sign(w) * 2^round(log2|w|), exponent clamped to the shift range; zero stays zero (no STE)."""
    return torch.sign(w) * torch.pow(2.0, _exponent(w, weight_bits, stochastic, generator))


def q_weight(latent: torch.Tensor, weight_bits: int = 5, stochastic: bool = False,
             generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """DeepShift-Q effective weight: latent weight rounded to a power of two, straight-through."""
    return ste(latent, round_power_of_two(latent.detach(), weight_bits, stochastic, generator))


def shift_sign_from_weight(w: torch.Tensor, weight_bits: int = 5) -> Tuple[torch.Tensor, torch.Tensor]:
    """(p, s) with p = round(log2|w|) clamped to the range and s = sign(w), to initialise PS layers."""
    return _exponent(w, weight_bits), torch.sign(w)
