"""Multi-head attention, the two-branch "attention + X" block of ShiftAddNAS, and
:func:`token_mixer`, which builds any of the sequence blocks by name.

All of them map (B, T, C) -> (B, T, C) with ``forward(x, padding_mask=None, state=None)``
(see :mod:`shiftadd.nn.lightweight`); incremental decoding keeps a K/V cache for attention.
"""
from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn as nn

from shiftadd.nn.base import LayerModule, check_positive
from shiftadd.nn.factory import linear_layer
from shiftadd.nn.lightweight import LightweightBlock, State
from shiftadd.ops.attention import scaled_dot_product_attention

LAYER_OPTIONS = ("weight_bits", "rounding", "grad_mode", "eta")


class MultiheadAttention(LayerModule):
    """Multi-head attention (Vaswani et al. 2017) with Q/K/V/output projections of family ``proj_op``.

    ``forward(x, padding_mask, state)`` is self-attention (``causal`` set at construction);
    ``forward(x, state=..., memory=enc, memory_padding_mask=mask)`` attends over ``memory``
    (encoder-decoder attention). With ``state``, self-attention appends the new keys/values to
    the cache and cross-attention projects ``memory`` once and reuses it.
    """

    def __init__(self, embed_dim: int, heads: int, causal: bool = False, dropout: float = 0.0,
                 proj_op: str = "conv", bias: bool = True, **options: Any) -> None:
        super().__init__()
        self.embed_dim, self.heads = check_positive("embed_dim", embed_dim), check_positive("heads", heads)
        if embed_dim % heads:
            raise ValueError(f"heads={heads} must divide embed_dim={embed_dim}")
        self.causal, self.dropout = bool(causal), float(dropout)
        opts = {k: v for k, v in options.items() if k in LAYER_OPTIONS}
        for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
            setattr(self, name, linear_layer(proj_op, embed_dim, embed_dim, bias=bias, **opts))

    def _split(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, C) -> (B, H, T, d)
        B, T, _ = x.shape
        return x.view(B, T, self.heads, self.embed_dim // self.heads).transpose(1, 2)

    def forward(self, x: torch.Tensor, padding_mask: Optional[torch.Tensor] = None, state: Optional[State] = None,
                memory: Optional[torch.Tensor] = None,
                memory_padding_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        if x.dim() != 3 or x.shape[-1] != self.embed_dim:
            raise ValueError(f"MultiheadAttention expects input (B, T, {self.embed_dim}), got {tuple(x.shape)}")
        q = self._split(self.q_proj(x))
        if memory is not None:  # encoder-decoder attention
            if state is not None and "k" in state:
                k, v = state["k"], state["v"]
            else:
                k, v = self._split(self.k_proj(memory)), self._split(self.v_proj(memory))
                if state is not None:
                    state["k"], state["v"] = k, v
            key_mask, causal = memory_padding_mask, False
        else:
            k, v, key_mask, causal = self._split(self.k_proj(x)), self._split(self.v_proj(x)), padding_mask, self.causal
            if state is not None:
                if not self.causal:
                    raise ValueError("MultiheadAttention: incremental self-attention needs causal=True")
                if "k" in state:
                    k, v = torch.cat([state["k"], k], 2), torch.cat([state["v"], v], 2)
                    if key_mask is not None or "padding_mask" in state:
                        key_mask = torch.cat([_mask_or_false(state.get("padding_mask"), state["k"]),
                                              _mask_or_false(key_mask, q)], 1)
                state["k"], state["v"] = k, v
                if key_mask is not None:
                    state["padding_mask"] = key_mask
        out = scaled_dot_product_attention(q, k, v, key_mask, causal, self.dropout, self.training)
        B, H, T, d = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(B, T, H * d))


    def extra_repr(self) -> str:
        return f"{self.embed_dim}, heads={self.heads}, causal={self.causal}, dropout={self.dropout}"


def _mask_or_false(mask: Optional[torch.Tensor], like: torch.Tensor) -> torch.Tensor:
    """``mask`` or an all-False (B, T) mask for the T positions of ``like`` (B, H, T, d)."""
    if mask is not None:
        return mask
    return torch.zeros(like.shape[0], like.shape[2], dtype=torch.bool, device=like.device)


class TwoBranchBlock(LayerModule):
    """ShiftAddNAS's "attention + X": channels [0, C/2) go through multi-head attention, channels
    [C/2, C) through a lightweight block of ``variant``; the two halves are concatenated.

    ``heads`` is split between the branches (H/2 attention heads of width C/H, H/2 conv heads).
    """

    def __init__(self, embed_dim: int, heads: int, kernel_size: int, variant: str = "mult", causal: bool = False,
                 dropout: float = 0.0, proj_op: str = "conv", glu: bool = True, weight_dropout: float = 0.0,
                 **options: Any) -> None:
        super().__init__()
        if embed_dim % 2 or heads % 2:
            raise ValueError(f"attention+X splits channels and heads in two: embed_dim={embed_dim} and "
                             f"heads={heads} must be even")
        half = embed_dim // 2
        self.split = half
        self.attention = MultiheadAttention(half, heads // 2, causal, dropout, proj_op, **options)
        self.branch = LightweightBlock(half, kernel_size, heads // 2, variant, causal, proj_op, glu, weight_dropout,
                                       **options)

    @property
    def causal(self) -> bool:
        return self.attention.causal

    def forward(self, x: torch.Tensor, padding_mask: Optional[torch.Tensor] = None,
                state: Optional[State] = None) -> torch.Tensor:
        a_state = b_state = None
        if state is not None:
            a_state = state.setdefault("attention", {})  # type: ignore[arg-type]
            b_state = state.setdefault("branch", {})  # type: ignore[arg-type]
        a = self.attention(x[..., : self.split], padding_mask, a_state)
        b = self.branch(x[..., self.split:], padding_mask, b_state)
        return torch.cat([a, b], dim=-1)



#: Token-mixing block kinds of the sequence models, by name.
TOKEN_MIXERS = ("attention", "lightweight", "lightweight-adder", "lightweight-shiftadd",
                "attention+lightweight", "attention+lightweight-adder", "attention+lightweight-shiftadd")
_VARIANT = {"lightweight": "mult", "lightweight-adder": "adder", "lightweight-shiftadd": "shiftadd"}


def token_mixer(kind: str, embed_dim: int, heads: int, kernel_size: int = 3, causal: bool = False,
                dropout: float = 0.0, proj_op: str = "conv", glu: bool = True, weight_dropout: float = 0.0,
                **options: Any) -> nn.Module:
    """The self-attention / lightweight / two-branch block ``kind`` (one of :data:`TOKEN_MIXERS`)."""
    if kind == "attention":
        return MultiheadAttention(embed_dim, heads, causal, dropout, proj_op, **options)
    if kind in _VARIANT:
        return LightweightBlock(embed_dim, kernel_size, heads, _VARIANT[kind], causal, proj_op, glu, weight_dropout,
                                **options)
    if kind.startswith("attention+") and kind[len("attention+"):] in _VARIANT:
        return TwoBranchBlock(embed_dim, heads, kernel_size, _VARIANT[kind[len("attention+"):]], causal, dropout,
                              proj_op, glu, weight_dropout, **options)
    raise ValueError(f"unknown block type {kind!r}; choose one of: {', '.join(TOKEN_MIXERS)}")


__all__ = ["MultiheadAttention", "TwoBranchBlock", "TOKEN_MIXERS", "token_mixer"]
