"""Scaled dot-product attention (Vaswani et al. 2017, Eq. 1) with padding and causal masks.

    A = softmax(Q K^T / sqrt(d) + mask),   out = A V

Q (B, H, Tq, d), K and V (B, H, Tk, d). ``causal`` lets query i see keys j <= i + (Tk - Tq):
the queries are the *last* Tq positions of the key sequence, which is what the incremental
decoder needs (one new query against all cached keys). Masked scores are -inf; a query row
with every key masked would be undefined, so its weights are set to zero instead.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F


def causal_mask(query_len: int, key_len: int, device: Optional[torch.device] = None) -> torch.Tensor:
    """(Tq, Tk) bool, True where query i may NOT see key j (j > i + Tk - Tq)."""
    return torch.ones(query_len, key_len, dtype=torch.bool, device=device).triu(1 + key_len - query_len)


def scaled_dot_product_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                                 key_padding_mask: Optional[torch.Tensor] = None, causal: bool = False,
                                 dropout: float = 0.0, training: bool = False) -> torch.Tensor:
    """softmax(Q K^T / sqrt(d)) V; ``key_padding_mask`` (B, Tk) is True at padded keys."""
    scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    masked = None
    if key_padding_mask is not None:
        masked = key_padding_mask[:, None, None, :]
    if causal:
        c = causal_mask(q.shape[-2], k.shape[-2], q.device)
        masked = c if masked is None else masked | c
    if masked is not None:
        scores = scores.masked_fill(masked, float("-inf"))
    weights = torch.softmax(scores, dim=-1)
    if masked is not None:
        weights = torch.nan_to_num(weights, nan=0.0)  # rows with every key masked
    if dropout > 0:
        weights = F.dropout(weights, dropout, training)
    return torch.matmul(weights, v)


__all__ = ["causal_mask", "scaled_dot_product_attention"]
