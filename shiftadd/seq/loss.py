"""Label-smoothed cross-entropy over target tokens (Szegedy et al. 2016; as in Vaswani et al. 2017)."""
from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F


def label_smoothed_cross_entropy(logits: torch.Tensor, target: torch.Tensor, smoothing: float = 0.1,
                                 pad_id: int = 0) -> Tuple[torch.Tensor, torch.Tensor, int]:
    """(smoothed loss summed over tokens, plain NLL summed over tokens, number of target tokens).

    ``logits`` (B, T, V), ``target`` (B, T); positions equal to ``pad_id`` are ignored. The
    smoothed target puts 1 - smoothing on the reference token and smoothing / V on every token
    (``torch.nn.functional.cross_entropy``'s ``label_smoothing``). Divide by the token count
    for a per-token loss.
    """
    if not 0.0 <= smoothing < 1.0:
        raise ValueError(f"label smoothing must be in [0, 1), got {smoothing!r}")
    flat, tgt = logits.reshape(-1, logits.shape[-1]).float(), target.reshape(-1)
    loss = F.cross_entropy(flat, tgt, ignore_index=pad_id, reduction="sum", label_smoothing=smoothing)
    with torch.no_grad():
        nll = F.cross_entropy(flat, tgt, ignore_index=pad_id, reduction="sum")
    return loss, nll, int(tgt.ne(pad_id).sum())


__all__ = ["label_smoothed_cross_entropy"]
