"""Grouped im2col: a 2-D convolution as a batched (G, P, K) x (G, O, K) primitive, and back.

For x (N, C, H, W) and a kernel (kh, kw) with ``groups`` G, :func:`im2col_grouped` returns the
patches X[g, n*L + l, k] (L = Ho * Wo output positions, K = C/G * kh * kw, zero padding), and
:func:`col2im_grouped` turns the primitive's result Y (G, N*L, O/G) into the (N, O, Ho, Wo) output.
"""
from __future__ import annotations

from typing import Sequence, Tuple

import torch
import torch.nn.functional as F

from shiftadd.utils import IntOrTuple, pair


def conv_output_size(size: Sequence[int], kernel_size: Sequence[int], stride: Sequence[int],
                     padding: Sequence[int], dilation: Sequence[int]) -> Tuple[int, ...]:
    """Output spatial size of a convolution: (size + 2p - d (k - 1) - 1) // s + 1 per dimension."""
    return tuple((n + 2 * p - d * (k - 1) - 1) // s + 1
                 for n, k, s, p, d in zip(size, kernel_size, stride, padding, dilation))


def im2col_grouped(x: torch.Tensor, kernel_size: IntOrTuple, stride: IntOrTuple = 1, padding: IntOrTuple = 0,
                   dilation: IntOrTuple = 1, groups: int = 1) -> Tuple[torch.Tensor, Tuple[int, int]]:
    """Patches of ``x`` (N, C, H, W) as (G, N*Ho*Wo, C/G*kh*kw), and the output size (Ho, Wo)."""
    k, s, p, d = pair(kernel_size, "kernel_size"), pair(stride, "stride"), pair(padding, "padding"), pair(dilation, "dilation")
    N, C = x.shape[:2]
    G = int(groups)
    cols = F.unfold(x, k, dilation=d, padding=p, stride=s)  # (N, C*kh*kw, L)
    L, K = cols.shape[-1], C // G * k[0] * k[1]
    out_size = conv_output_size(x.shape[2:], k, s, p, d)
    return cols.view(N, G, K, L).permute(1, 0, 3, 2).reshape(G, N * L, K), out_size  # type: ignore[return-value]


def col2im_grouped(y: torch.Tensor, batch: int, out_size: Sequence[int]) -> torch.Tensor:
    """The primitive's result y (G, N*Ho*Wo, O/G) as the convolution output (N, O, Ho, Wo)."""
    G, NL, Og = y.shape
    Ho, Wo = out_size
    return y.view(G, batch, Ho * Wo, Og).permute(1, 0, 3, 2).reshape(batch, G * Og, Ho, Wo)


__all__ = ["conv_output_size", "im2col_grouped", "col2im_grouped"]
