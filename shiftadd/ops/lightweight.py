"""Lightweight convolutions over time (Wu et al., "Pay Less Attention with Lightweight and
Dynamic Convolutions", ICLR 2019) and their multiplication-free adder form (ShiftAddNAS).

Inputs are (B, C, T) like ``F.conv1d``. The C channels are split into H heads of C/H
consecutive channels; channel c uses the kernel row of head h(c) = c // (C/H):

    multiplicative  out[b,c,t] =  sum_k  softmax(w[h(c)])[k] * x[b, c, t + k - pad]     (Wu et al. Eq. 2-3)
    adder           out[b,c,t] = -sum_k |x[b, c, t + k - pad] - w[h(c), k]|              (AdderNet Eq. 2)

``pad`` is K-1 on the left for a causal (decoder) convolution, K//2 on the left and
K-1-K//2 on the right otherwise (K//2 each side for odd K). Positions outside the sequence
and positions flagged in ``padding_mask`` hold x = 0, so a padded sentence in a batch gets
exactly the result it gets alone.

The adder form is a depthwise (groups = C) adder conv1d whose (C, 1, K) weight is the head
kernel expanded by indexing: autograd sums the per-channel gradients into the head row, and
the arithmetic, AdderNet's full-precision weight gradient, the HardTanh input gradient and
the fast kernels all come from :mod:`shiftadd.ops.adder`.

No softmax on the adder kernel: in the multiplicative form softmax makes each output a
convex combination of the window (an average whose scale does not depend on K or on the
weights). An adder weight is not a mixing coefficient but a template subtracted from the
input; squashing the templates onto the probability simplex would only pin them into
[0, 1] away from the range of the (layer-normalised) activations, and AdderNet's weight
gradient (x - w) is defined for the raw template. Weight dropout is likewise
multiplicative-only (a dropped template entry would compare x with 0, not remove a term).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from shiftadd.ops.adder import adder_conv1d


def time_padding(kernel_size: int, causal: bool) -> Tuple[int, int]:
    """(left, right) zero padding that keeps the length: causal (K-1, 0), else (K//2, K-1-K//2)."""
    left = kernel_size - 1 if causal else kernel_size // 2
    return left, kernel_size - 1 - left


def head_index(channels: int, heads: int, device: Optional[torch.device] = None) -> torch.Tensor:
    """h(c) = c // (C/H) for every channel c (a LongTensor of length C)."""
    if heads < 1 or channels % heads:
        raise ValueError(f"heads={heads} must be a positive divisor of channels={channels}")
    return torch.arange(channels, device=device) // (channels // heads)


def expand_head_weight(weight: torch.Tensor, channels: int) -> torch.Tensor:
    """(H, K) head kernels -> (C, 1, K) depthwise weight, by indexing (gradients accumulate per head)."""
    return weight[head_index(channels, weight.shape[0], weight.device)].unsqueeze(1)


def mask_padding(x: torch.Tensor, padding_mask: Optional[torch.Tensor]) -> torch.Tensor:
    """Zero the time steps flagged True in ``padding_mask`` (B, T) of ``x`` (B, C, T)."""
    if padding_mask is None:
        return x
    if padding_mask.shape != (x.shape[0], x.shape[2]):
        raise ValueError(f"padding_mask must have shape (B, T) = {(x.shape[0], x.shape[2])}, "
                         f"got {tuple(padding_mask.shape)}")
    return x.masked_fill(padding_mask.unsqueeze(1), 0.0)


def _check(x: torch.Tensor, weight: torch.Tensor) -> None:
    if x.dim() != 3 or weight.dim() != 2 or x.shape[1] % weight.shape[0]:
        raise ValueError(f"lightweight conv: input {tuple(x.shape)} and weight {tuple(weight.shape)} do not fit: "
                         "expected input (B, C, T) and weight (H, K) with H dividing C")


def _pad_time(x: torch.Tensor, kernel_size: int, causal: bool, pad: bool) -> torch.Tensor:
    return F.pad(x, time_padding(kernel_size, causal)) if pad else x


def normalized_weight(weight: torch.Tensor, weight_softmax: bool = True, weight_dropout: float = 0.0,
                      training: bool = False) -> torch.Tensor:
    """The kernel a multiplicative lightweight conv applies: softmax over K, then weight dropout."""
    w = torch.softmax(weight, dim=-1) if weight_softmax else weight
    return F.dropout(w, weight_dropout, training) if weight_dropout > 0 else w


def lightweight_conv1d(x: torch.Tensor, weight: torch.Tensor, causal: bool = False,
                       padding_mask: Optional[torch.Tensor] = None, weight_softmax: bool = True,
                       weight_dropout: float = 0.0, training: bool = False, pad: bool = True) -> torch.Tensor:
    """Multiplicative lightweight conv: x (B, C, T), weight (H, K) -> (B, C, T).

    ``pad=False`` applies the kernel to ``x`` as given (length T-K+1): the incremental
    decoder passes its cached window that way.
    """
    _check(x, weight)
    w = normalized_weight(weight, weight_softmax, weight_dropout, training)
    x = _pad_time(mask_padding(x, padding_mask), weight.shape[1], causal, pad)
    return F.conv1d(x, expand_head_weight(w, x.shape[1]), groups=x.shape[1])


def adder_lightweight_conv1d(x: torch.Tensor, weight: torch.Tensor, causal: bool = False,
                             padding_mask: Optional[torch.Tensor] = None, grad_mode: str = "full",
                             pad: bool = True) -> torch.Tensor:
    """Adder lightweight conv: out[b,c,t] = -sum_k |x[b,c,t+k-pad] - w[h(c),k]|; x (B, C, T), weight (H, K)."""
    _check(x, weight)
    x = _pad_time(mask_padding(x, padding_mask), weight.shape[1], causal, pad)
    return adder_conv1d(x, expand_head_weight(weight, x.shape[1]), groups=x.shape[1], grad_mode=grad_mode)


__all__ = ["time_padding", "head_index", "expand_head_weight", "mask_padding", "normalized_weight",
           "lightweight_conv1d", "adder_lightweight_conv1d"]
