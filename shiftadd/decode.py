"""Greedy and beam-search decoding with incremental state, for encoder-decoder models with
``encode(src) -> (memory, mask)`` and ``decode(tokens, memory, mask, state) -> logits`` (such as
:class:`shiftadd.models.transformer.TransformerSeq2Seq`).

Each step feeds only the newest token; the model caches the rest (attention K/V, the rolling
buffers of the lightweight convolutions). Beam search keeps ``beam`` hypotheses per sentence,
ranks candidates by summed log-probability and, at the end, picks the hypothesis with the best
``score / length ** length_penalty`` (fairseq's length normalisation; 0 = raw log-probability).
A finished hypothesis (it emitted EOS) stays in its beam with its score frozen. Padding and BOS
are never generated (their log-probabilities stay in the softmax's normaliser).
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional

import torch
import torch.nn as nn


def reorder_state(state: Dict[str, Any], order: torch.Tensor) -> None:
    """Select batch rows ``order`` of every cached tensor in ``state`` (nested dicts), in place."""
    for key, value in state.items():
        if isinstance(value, dict):
            reorder_state(value, order)
        elif isinstance(value, torch.Tensor) and value.dim() > 0:
            state[key] = value.index_select(0, order)


def _row_limits(src: torch.Tensor, pad_id: int, max_len: Optional[int], limit: int) -> torch.Tensor:
    """Tokens each sentence may generate: ``max_len``, or 1.5 x its own source length + 10 (so a
    sentence's translation does not depend on the batch it is decoded in), capped by the positions."""
    if max_len is None:
        rows = src.ne(pad_id).sum(1) * 3 // 2 + 10
    else:
        rows = torch.full((src.shape[0],), int(max_len), dtype=torch.long, device=src.device)
    return rows.clamp(1, max(1, limit - 1))


def _trim(seq: List[int], eos_id: int, pad_id: int) -> List[int]:
    out = []
    for t in seq:
        if t == eos_id or t == pad_id:
            break
        out.append(t)
    return out


@torch.no_grad()
def greedy_decode(model: nn.Module, src: torch.Tensor, max_len: Optional[int] = None,
                  incremental: bool = True) -> List[List[int]]:
    """Most probable next token at every step; returns the token ids of each sentence (no BOS/EOS).

    ``incremental=False`` re-runs the decoder on the whole prefix at every step (slow; a check).
    """
    cfg = model.cfg
    was_training = model.training
    model.eval()
    try:
        limits = _row_limits(src, cfg.pad_id, max_len, cfg.max_positions)
        memory, mask = model.encode(src)
        tokens = torch.full((src.shape[0], 1), cfg.bos_id, dtype=torch.long, device=src.device)
        finished = torch.zeros(src.shape[0], dtype=torch.bool, device=src.device)
        state: Optional[Dict[str, Any]] = {} if incremental else None
        for step in range(int(limits.max())):
            logits = model.decode(tokens[:, -1:] if incremental else tokens, memory, mask, state)[:, -1]
            logits[:, [cfg.pad_id, cfg.bos_id]] = float("-inf")  # never generated
            nxt = logits.argmax(-1).masked_fill(finished, cfg.pad_id)
            tokens = torch.cat([tokens, nxt.unsqueeze(1)], dim=1)
            finished = finished | nxt.eq(cfg.eos_id) | limits.le(step + 1)
            if bool(finished.all()):
                break
        return [_trim(row[1:], cfg.eos_id, cfg.pad_id) for row in tokens.tolist()]
    finally:
        model.train(was_training)


@torch.no_grad()
def beam_search(model: nn.Module, src: torch.Tensor, beam: int = 4, length_penalty: float = 1.0,
                max_len: Optional[int] = None) -> List[List[int]]:
    """Beam search of width ``beam``; returns the best hypothesis of each sentence (token ids, no BOS/EOS).

    ``max_len`` (default 1.5 x each sentence's source length + 10, capped by the model's positions)
    bounds the number of generated tokens.
    """
    if beam < 1:
        raise ValueError(f"beam must be >= 1, got {beam!r}")
    cfg = model.cfg
    was_training = model.training
    model.eval()
    try:
        B = src.shape[0]
        limits = _row_limits(src, cfg.pad_id, max_len, cfg.max_positions)
        memory, mask = model.encode(src)
        rows = torch.arange(B, device=src.device).repeat_interleave(beam)
        row_limits = limits.index_select(0, rows)
        memory, mask = memory.index_select(0, rows), mask.index_select(0, rows)
        scores = torch.full((B, beam), float("-inf"), device=src.device)
        scores[:, 0] = 0.0  # all beams start identical: keep one
        tokens = torch.full((B * beam, 1), cfg.bos_id, dtype=torch.long, device=src.device)
        finished = torch.zeros(B * beam, dtype=torch.bool, device=src.device)
        lengths = torch.zeros(B * beam, device=src.device)
        state: Dict[str, Any] = {}
        for step in range(int(limits.max())):
            logits = model.decode(tokens[:, -1:], memory, mask, state)[:, -1]
            logp = torch.log_softmax(logits.float(), dim=-1)
            logp[:, [cfg.pad_id, cfg.bos_id]] = float("-inf")  # never generated
            # A finished hypothesis extends only with padding, at no cost.
            logp[finished] = float("-inf")
            logp[finished, cfg.pad_id] = 0.0
            V = logp.shape[-1]
            cand = (scores.view(-1, 1) + logp).view(B, beam * V)
            scores, flat = cand.topk(beam, dim=1)
            origin = (flat // V + torch.arange(B, device=src.device).unsqueeze(1) * beam).view(-1)
            new_tok = (flat % V).view(-1)
            tokens = torch.cat([tokens.index_select(0, origin), new_tok.unsqueeze(1)], dim=1)
            finished, lengths = finished.index_select(0, origin), lengths.index_select(0, origin)
            lengths = lengths + (~finished).float()
            finished = finished | new_tok.eq(cfg.eos_id) | row_limits.le(step + 1)
            reorder_state(state, origin)
            if bool(finished.all()):
                break
        norm = scores.view(-1) / lengths.clamp_min(1.0).pow(length_penalty)
        best = norm.view(B, beam).argmax(1) + torch.arange(B, device=src.device) * beam
        return [_trim(tokens[i, 1:].tolist(), cfg.eos_id, cfg.pad_id) for i in best.tolist()]
    finally:
        model.train(was_training)


__all__ = ["beam_search", "greedy_decode", "reorder_state"]
