"""Heterogeneous weight sharing (ShiftAddNAS, Sec. 3.3): adders see the shared weights through a learnable remap.

Convolution weights are roughly Gaussian, adder weights Laplacian. In the ``heterogeneous``
supernet mode one tensor per layer is shared; the conv branch uses it as is and the adder
branch uses :class:`PiecewiseLinearRemap` of it, pulled toward a Laplace distribution by
:func:`laplace_w2_distance`.
"""
from __future__ import annotations

import torch
import torch.nn as nn


class PiecewiseLinearRemap(nn.Module):
    """A learnable monotone piecewise-linear map of the weight range onto itself, over ``num_bins`` equal bins.

    With r = max|w| (held fixed in the gradient), bin edges e_k = -r + k*D, D = 2r/K and
    slopes s_k = K * softmax(theta)_k > 0 (mean 1):  T(w) = -r + D * sum_{k<j} s_k + s_j * (w - e_j) for w
    in bin j. T(-r) = -r and T(r) = r: the map reshapes the distribution (ShiftAddNAS's Gaussian-to-Laplacian
    remap) but cannot rescale it — with free slopes (exp(theta)) the adder loss grew them into a large gain
    and a 30-epoch supernet diverged. All theta_k equal (zero at init) is the identity; T is continuous and
    differentiable almost everywhere in both w and theta.
    """

    def __init__(self, num_bins: int = 16) -> None:
        super().__init__()
        if int(num_bins) < 1:
            raise ValueError(f"num_bins must be positive, got {num_bins}")
        self.num_bins = int(num_bins)
        self.log_slopes = nn.Parameter(torch.zeros(self.num_bins))

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        k = self.num_bins
        r = w.detach().abs().max().clamp_min(torch.finfo(w.dtype).tiny)
        step = 2 * r / k
        slopes = (k * torch.softmax(self.log_slopes, 0)).to(w.dtype)
        # a non-finite weight maps to bin 0 (its value still propagates, so the trainer's NaN guard reports it)
        j = torch.floor((w.detach() + r) / step).nan_to_num(0.0, 0.0, 0.0).clamp(0, k - 1).long()
        start = torch.cat([slopes.new_zeros(1), torch.cumsum(slopes, 0)[:-1]])  # sum_{k<j} s_k
        return -r + step * start[j] + slopes[j] * (w - (-r + j.to(w.dtype) * step))

    def extra_repr(self) -> str:
        return f"num_bins={self.num_bins}"


def laplace_quantiles(n: int, loc: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Quantiles F^-1((i - 1/2) / n), i = 1..n, of Laplace(loc, scale)."""
    p = (torch.arange(n, dtype=scale.dtype, device=scale.device) + 0.5) / n - 0.5
    return loc - scale * torch.sign(p) * torch.log1p(-2 * p.abs())


def laplace_w2_distance(w: torch.Tensor) -> torch.Tensor:
    """Squared 1-D Wasserstein-2 distance between the values of ``w`` and a Laplace fit, over scale^2.

    D(w) = (1/n) sum_i (w_(i) - F^-1_Laplace((i - 1/2)/n; mu, b))^2 / b^2,  mu = median(w), b = mean|w - mu|

    (w_(i) sorted; mu and b are the Laplace maximum-likelihood fit). D is invariant to shifting and
    scaling w, and so is its gradient's effect: the loss moves the *shape* of the distribution
    and cannot be lowered by shrinking the weights. Why W2 and not KL of a
    histogram: in one dimension W2 is exactly the matching of sorted values to quantiles (no bins
    to choose, defined for any n), and its gradient reaches every weight, whereas histogram
    counts are piecewise constant in the weights (zero gradient almost everywhere). Returns 0
    (with a zero gradient, never NaN) when all values are equal.
    """
    v = w.flatten()
    if v.numel() < 2:
        return v.sum() * 0.0
    mu = v.median()
    b = (v - mu).abs().mean()
    if not b.detach() > torch.finfo(v.dtype).eps * max(1.0, float(mu.detach().abs())):
        return v.sum() * 0.0
    q = laplace_quantiles(v.numel(), mu, b)
    return ((torch.sort(v).values - q) ** 2).mean() / (b * b)


def laplace_fit(w: torch.Tensor) -> tuple:
    """(mu, b): the Laplace maximum-likelihood fit of the values of ``w`` (median, mean absolute deviation)."""
    v = w.detach().flatten()
    mu = v.median()
    return float(mu), float((v - mu).abs().mean())


def laplace_density(x: torch.Tensor, mu: float, b: float) -> torch.Tensor:
    """The Laplace(mu, b) density at ``x`` (for histogram plots)."""
    return torch.exp(-(x - mu).abs() / b) / (2 * b) if b > 0 else torch.zeros_like(x)


