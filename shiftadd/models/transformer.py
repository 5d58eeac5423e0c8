"""Encoder-decoder Transformer for translation whose every layer's token mixer comes from a
configuration (attention, lightweight convolutions of any operator family, attention + X).

* Embeddings: one table over the joint source/target vocabulary, shared by the encoder, the
  decoder and the output projection (tied, Press & Wolf 2017), scaled by sqrt(d), plus fixed
  sinusoidal positions (Vaswani et al. 2017).
* Layers are **pre-norm** by default (LayerNorm before each sub-block, a final LayerNorm after
  the stack; ``pre_norm=False`` gives the original post-norm). Encoder layer: token mixer,
  FFN. Decoder layer: causal token mixer, encoder-decoder attention, FFN.
* ``ffn_op`` / ``proj_op``: operator family (:data:`shiftadd.nn.OPS`) of the FFN layers and of
  every projection inside the token mixers (attention Q/K/V/out, lightweight in/out).

What stays multiplicative in every preset: LayerNorm, the embedding scale, the tied output
projection, and, in the decoder, the encoder-decoder attention's Q K^T and A V products (the
decoder needs some way to read the source; ShiftAddNAS keeps attention there too). The
"multiplication-free" preset makes every *searched* operator multiplication-free: adder /
shift-add lightweight convolutions, shift FFNs and shift projections, no GLU gate.

Incremental decoding: ``decode(tokens, memory, memory_mask, state)`` with a dict ``state``
takes only the new target positions and caches the rest (see :mod:`shiftadd.decode`).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from shiftadd.models.registry import register_model
from shiftadd.nn.attention import TOKEN_MIXERS, MultiheadAttention, token_mixer
from shiftadd.nn.factory import OPS, linear_layer

LAYER_OPTION_NAMES = ("weight_bits", "rounding", "grad_mode", "eta")


@dataclass
class TransformerConfig:
    """Sizes and per-layer block types of :class:`TransformerSeq2Seq`.

    ``encoder_blocks`` / ``decoder_blocks``: one name of :data:`shiftadd.nn.TOKEN_MIXERS` per
    layer. ``kernel_sizes``: the lightweight kernel of every layer (one int, or one per encoder
    layer; the decoder uses the same list). ``layer_options``: ``weight_bits``, ``rounding``,
    ``grad_mode``, ``eta`` for the shift/adder layers.
    """

    vocab_size: int
    embed_dim: int = 256
    ffn_dim: int = 1024
    heads: int = 4
    encoder_blocks: Tuple[str, ...] = ("attention",) * 3
    decoder_blocks: Tuple[str, ...] = ("attention",) * 3
    kernel_sizes: Union[int, Tuple[int, ...]] = 3
    ffn_op: str = "conv"
    proj_op: str = "conv"
    glu: bool = True
    dropout: float = 0.1
    attention_dropout: float = 0.0
    weight_dropout: float = 0.0
    pre_norm: bool = True
    max_positions: int = 256
    pad_id: int = 0
    bos_id: int = 1
    eos_id: int = 2
    layer_options: Dict[str, Any] = field(default_factory=dict)
    encoder_ffn_dims: Optional[Tuple[int, ...]] = None
    decoder_ffn_dims: Optional[Tuple[int, ...]] = None
    encoder_heads: Optional[Tuple[int, ...]] = None
    decoder_heads: Optional[Tuple[int, ...]] = None
    encoder_ops: Optional[Tuple[str, ...]] = None
    decoder_ops: Optional[Tuple[str, ...]] = None

    def __post_init__(self) -> None:
        self.encoder_blocks = tuple(self.encoder_blocks)
        self.decoder_blocks = tuple(self.decoder_blocks)
        for side in ("encoder", "decoder"):
            n = len(getattr(self, f"{side}_blocks"))
            for name, kind in (("ffn_dims", int), ("heads", int), ("ops", str)):
                value = getattr(self, f"{side}_{name}")
                if value is None:
                    continue
                value = tuple(kind(v) for v in value)
                if len(value) != n:
                    raise ValueError(f"TransformerConfig.{side}_{name} has {len(value)} entries for {n} {side} layers")
                setattr(self, f"{side}_{name}", value)
        if isinstance(self.kernel_sizes, (list, tuple)):
            self.kernel_sizes = tuple(int(k) for k in self.kernel_sizes)
        for name in ("vocab_size", "embed_dim", "ffn_dim", "heads", "max_positions"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"TransformerConfig.{name} must be a positive integer, got {getattr(self, name)!r}")
        for h in (self.heads,) + (self.encoder_heads or ()) + (self.decoder_heads or ()):
            if int(h) < 1 or self.embed_dim % h:
                raise ValueError(f"heads={h} must be positive and divide embed_dim={self.embed_dim}")
        if any(int(f) < 1 for f in (self.encoder_ffn_dims or ()) + (self.decoder_ffn_dims or ())):
            raise ValueError("TransformerConfig ffn dims must be positive integers")
        for side in ("encoder_blocks", "decoder_blocks"):
            blocks = getattr(self, side)
            if not blocks:
                raise ValueError(f"TransformerConfig.{side} needs at least one layer")
            bad = [b for b in blocks if b not in TOKEN_MIXERS]
            if bad:
                raise ValueError(f"unknown block type(s) {bad} in {side}; choose from: {', '.join(TOKEN_MIXERS)}")
        for name in ("ffn_op", "proj_op"):
            if getattr(self, name) not in OPS:
                raise ValueError(f"{name}={getattr(self, name)!r} is not an operator family; choose one of: "
                                 f"{', '.join(OPS)}")
        bad_ops = [o for o in (self.encoder_ops or ()) + (self.decoder_ops or ()) if o not in OPS]
        if bad_ops:
            raise ValueError(f"per-layer ops {bad_ops} are not operator families; choose from: {', '.join(OPS)}")
        n = max(len(self.encoder_blocks), len(self.decoder_blocks))
        if isinstance(self.kernel_sizes, tuple) and len(self.kernel_sizes) < n:
            raise ValueError(f"kernel_sizes has {len(self.kernel_sizes)} entries for {n} layers")
        unknown = set(self.layer_options) - set(LAYER_OPTION_NAMES)
        if unknown:
            raise ValueError(f"unknown layer_options {sorted(unknown)}; known: {', '.join(LAYER_OPTION_NAMES)}")

    def kernel_size(self, layer: int) -> int:
        k = self.kernel_sizes
        return int(k) if isinstance(k, int) else k[layer]

    def layer_dims(self, side: str, layer: int) -> Tuple[int, int, str, str]:
        """``(ffn_dim, heads, ffn_op, proj_op)`` of ``layer`` of ``side`` ("encoder" or "decoder"): the
        per-layer value (``<side>_ffn_dims``, ``<side>_heads``, ``<side>_ops``) where given, else the global one.
        A per-layer op is the family of that layer's FFN and of every projection in it."""
        ffn, heads, ops = (getattr(self, f"{side}_{n}") for n in ("ffn_dims", "heads", "ops"))
        op = ops[layer] if ops is not None else None
        return (ffn[layer] if ffn is not None else self.ffn_dim, heads[layer] if heads is not None else self.heads,
                op or self.ffn_op, op or self.proj_op)

    def to_dict(self) -> Dict[str, Any]:
        """A JSON-friendly dict (tuples become lists); ``TransformerConfig(**d)`` rebuilds it."""
        d = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


def _preset_fields(layers: int) -> Dict[str, Dict[str, Any]]:
    kernels = tuple([3, 7, 15, 31, 31, 31][:layers] + [31] * max(0, layers - 6))  # Wu et al.'s growing kernels
    lw = {"kernel_sizes": kernels}
    return {
        "transformer": {"encoder_blocks": ("attention",) * layers, "decoder_blocks": ("attention",) * layers},
        "lightweight": {**lw, "encoder_blocks": ("lightweight",) * layers, "decoder_blocks": ("lightweight",) * layers},
        "lightweight-adder": {**lw, "encoder_blocks": ("lightweight-adder",) * layers,
                              "decoder_blocks": ("lightweight-adder",) * layers},
        "lightweight-shiftadd": {**lw, "encoder_blocks": ("lightweight-shiftadd",) * layers,
                                 "decoder_blocks": ("lightweight-shiftadd",) * layers},
        "multiplication-free": {**lw, "encoder_blocks": ("lightweight-shiftadd",) * layers,
                                "decoder_blocks": ("lightweight-shiftadd",) * layers,
                                "ffn_op": "shift-ps", "proj_op": "shift-ps", "glu": False},
    }


#: Preset names of :func:`preset_config`.
PRESETS = tuple(_preset_fields(3))


def preset_config(name: str, vocab_size: int, layers: int = 3, **overrides: Any) -> TransformerConfig:
    """A :class:`TransformerConfig` preset: "transformer" (all attention), "lightweight" (Wu et al.),
    "lightweight-adder", "lightweight-shiftadd", "multiplication-free" (shift-add lightweight
    convolutions, shift FFNs and projections, no GLU); ``overrides`` replace any field."""
    presets = _preset_fields(layers)
    if name not in presets:
        raise ValueError(f"unknown preset {name!r}; choose one of: {', '.join(presets)}")
    return TransformerConfig(vocab_size=vocab_size, **{**presets[name], **overrides})


def sinusoidal_positions(length: int, dim: int) -> torch.Tensor:
    """PE[pos, 2i] = sin(pos / 10000^(2i/d)), PE[pos, 2i+1] = cos(...) (Vaswani et al. 2017, Sec. 3.5)."""
    pos = torch.arange(length, dtype=torch.float32)[:, None]
    inv = torch.exp(-math.log(10000.0) * torch.arange(0, dim, 2, dtype=torch.float32) / dim)
    pe = torch.zeros(length, dim)
    pe[:, 0::2] = torch.sin(pos * inv)
    pe[:, 1::2] = torch.cos(pos * inv)[:, : dim // 2]
    return pe


class FeedForward(nn.Module):
    """linear(C -> F), ReLU, dropout, linear(F -> C), both of operator family ``op``."""

    def __init__(self, embed_dim: int, ffn_dim: int, op: str = "conv", dropout: float = 0.0, **options: Any) -> None:
        super().__init__()
        self.fc1 = linear_layer(op, embed_dim, ffn_dim, **options)
        self.fc2 = linear_layer(op, ffn_dim, embed_dim, **options)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.dropout(F.relu(self.fc1(x))))



class _Residual(nn.Module):
    """x + dropout(f(norm(x))) (pre-norm) or norm(x + dropout(f(x))) (post-norm)."""

    def __init__(self, dim: int, pre_norm: bool, dropout: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.pre_norm = pre_norm
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, fn) -> torch.Tensor:
        if self.pre_norm:
            return x + self.dropout(fn(self.norm(x)))
        return self.norm(x + self.dropout(fn(x)))


class EncoderLayer(nn.Module):
    def __init__(self, cfg: TransformerConfig, layer: int) -> None:
        super().__init__()
        ffn_dim, heads, ffn_op, proj_op = cfg.layer_dims("encoder", layer)
        kw = _mixer_kwargs(cfg, layer, proj_op)
        self.mixer = token_mixer(cfg.encoder_blocks[layer], cfg.embed_dim, heads, causal=False, **kw)
        self.ffn = FeedForward(cfg.embed_dim, ffn_dim, ffn_op, cfg.dropout, **cfg.layer_options)
        self.mix_res = _Residual(cfg.embed_dim, cfg.pre_norm, cfg.dropout)
        self.ffn_res = _Residual(cfg.embed_dim, cfg.pre_norm, cfg.dropout)

    def forward(self, x: torch.Tensor, padding_mask: Optional[torch.Tensor]) -> torch.Tensor:
        x = self.mix_res(x, lambda h: self.mixer(h, padding_mask))
        return self.ffn_res(x, self.ffn)


class DecoderLayer(nn.Module):
    def __init__(self, cfg: TransformerConfig, layer: int) -> None:
        super().__init__()
        ffn_dim, heads, ffn_op, proj_op = cfg.layer_dims("decoder", layer)
        kw = _mixer_kwargs(cfg, layer, proj_op)
        self.mixer = token_mixer(cfg.decoder_blocks[layer], cfg.embed_dim, heads, causal=True, **kw)
        self.cross = MultiheadAttention(cfg.embed_dim, heads, False, cfg.attention_dropout, proj_op,
                                        **cfg.layer_options)
        self.ffn = FeedForward(cfg.embed_dim, ffn_dim, ffn_op, cfg.dropout, **cfg.layer_options)
        self.mix_res = _Residual(cfg.embed_dim, cfg.pre_norm, cfg.dropout)
        self.cross_res = _Residual(cfg.embed_dim, cfg.pre_norm, cfg.dropout)
        self.ffn_res = _Residual(cfg.embed_dim, cfg.pre_norm, cfg.dropout)

    def forward(self, x: torch.Tensor, padding_mask: Optional[torch.Tensor], memory: torch.Tensor,
                memory_mask: Optional[torch.Tensor], state: Optional[Dict[str, Any]] = None) -> torch.Tensor:
        s_mix = s_cross = None
        if state is not None:
            s_mix, s_cross = state.setdefault("mixer", {}), state.setdefault("cross", {})
        x = self.mix_res(x, lambda h: self.mixer(h, padding_mask, s_mix))
        x = self.cross_res(x, lambda h: self.cross(h, None, s_cross, memory, memory_mask))
        return self.ffn_res(x, self.ffn)


def _mixer_kwargs(cfg: TransformerConfig, layer: int, proj_op: str) -> Dict[str, Any]:
    return dict(kernel_size=cfg.kernel_size(layer), dropout=cfg.attention_dropout, proj_op=proj_op,
                glu=cfg.glu, weight_dropout=cfg.weight_dropout, **cfg.layer_options)


class TransformerSeq2Seq(nn.Module):
    """Encoder-decoder Transformer built from a :class:`TransformerConfig`.

    ``forward(src, tgt_in)`` -> logits (B, T, V); ``src`` (B, S) and ``tgt_in`` (B, T) are token
    ids padded with ``cfg.pad_id``; ``tgt_in`` starts with ``cfg.bos_id``.
    """

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        C = cfg.embed_dim
        self.embed = nn.Embedding(cfg.vocab_size, C, padding_idx=cfg.pad_id)
        nn.init.normal_(self.embed.weight, 0.0, C ** -0.5)
        with torch.no_grad():
            self.embed.weight[cfg.pad_id].zero_()
        self.register_buffer("positions", sinusoidal_positions(cfg.max_positions, C), persistent=False)
        self.embed_dropout = nn.Dropout(cfg.dropout)
        self.encoder = nn.ModuleList(EncoderLayer(cfg, i) for i in range(len(cfg.encoder_blocks)))
        self.decoder = nn.ModuleList(DecoderLayer(cfg, i) for i in range(len(cfg.decoder_blocks)))
        self.encoder_norm = nn.LayerNorm(C) if cfg.pre_norm else nn.Identity()
        self.decoder_norm = nn.LayerNorm(C) if cfg.pre_norm else nn.Identity()

    def _embed(self, tokens: torch.Tensor, offset: int = 0) -> torch.Tensor:
        T = tokens.shape[1]
        if offset + T > self.cfg.max_positions:
            raise ValueError(f"sequence of {offset + T} tokens is longer than max_positions={self.cfg.max_positions}")
        x = self.embed(tokens) * math.sqrt(self.cfg.embed_dim) + self.positions[offset:offset + T]
        return self.embed_dropout(x)

    def encode(self, src: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(memory (B, S, C), source padding mask (B, S), True at padding)."""
        mask = src.eq(self.cfg.pad_id)
        x = self._embed(src)
        for layer in self.encoder:
            x = layer(x, mask)
        return self.encoder_norm(x), mask

    def decode(self, tgt_in: torch.Tensor, memory: torch.Tensor, memory_mask: Optional[torch.Tensor],
               state: Optional[Dict[str, Any]] = None) -> torch.Tensor:
        """Logits (B, T, V) for the target prefix ``tgt_in``; with ``state``, ``tgt_in`` holds only the
        positions after those already decoded (their keys/values and conv buffers are cached)."""
        offset = 0
        if state is not None:
            offset = int(state.get("length", 0))
            state["length"] = offset + tgt_in.shape[1]
        padding_mask = tgt_in.eq(self.cfg.pad_id) if state is None else None
        if padding_mask is not None and not padding_mask.any():
            padding_mask = None
        x = self._embed(tgt_in, offset)
        for i, layer in enumerate(self.decoder):
            layer_state = None if state is None else state.setdefault(f"layer{i}", {})
            x = layer(x, padding_mask, memory, memory_mask, layer_state)
        return F.linear(self.decoder_norm(x), self.embed.weight)  # tied output projection

    def forward(self, src: torch.Tensor, tgt_in: torch.Tensor) -> torch.Tensor:
        memory, mask = self.encode(src)
        return self.decode(tgt_in, memory, mask)


    def packed(self, src_len: int) -> "PackedPair":
        """This model taking one tensor ``[src | tgt_in]`` (B, S + T) with S = ``src_len`` (for tools that
        feed a model one input, such as :func:`shiftadd.energy.count_ops`)."""
        return PackedPair(self, src_len)


class PackedPair(nn.Module):
    """``forward(x)`` = ``model(x[:, :src_len], x[:, src_len:])``: a sentence pair as one tensor of token ids."""

    def __init__(self, model: TransformerSeq2Seq, src_len: int) -> None:
        super().__init__()
        self.model, self.src_len = model, int(src_len)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x[:, : self.src_len], x[:, self.src_len:])


def example_pair(vocab_size: int, src_len: int, tgt_len: int, seed: int = 0, first_id: int = 4) -> torch.Tensor:
    """One packed sentence pair (1, S + T) of random non-special token ids (no padding), BOS first on the target."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(first_id, max(vocab_size, first_id + 1), (1, src_len + tgt_len), generator=g)
    ids[0, src_len] = TransformerConfig.bos_id
    return ids


@register_model("transformer-seq", task="translation")
def transformer_seq(op: str = "conv", num_classes: Optional[int] = None, vocab_size: Optional[int] = None,
                    preset: str = "transformer", layers: int = 3, arch: Any = None,
                    **overrides: Any) -> TransformerSeq2Seq:
    """Encoder-decoder Transformer for translation (token ids in, logits over the vocabulary out).
    Options: vocab_size (required), preset (transformer, lightweight, lightweight-adder,
    lightweight-shiftadd, multiplication-free), layers, any TransformerConfig field; or
    arch=FILE.yaml, a searched architecture (:mod:`shiftadd.nas.transformer_space`) that sets every
    layer (then only the unsearched fields: dropout, max_positions, ...). ``op`` other than "conv"
    sets the FFN and projection family; ``num_classes`` is not used."""
    if vocab_size is None:
        raise ValueError("transformer-seq needs vocab_size=... (the joint subword vocabulary size)")
    if arch is not None:
        from shiftadd.errors import UserError
        from shiftadd.nas.transformer_space import as_transformer_architecture

        if op != "conv" or preset != "transformer" or layers != 3:
            raise UserError("give either an architecture (arch) or op/preset/layers, not both")
        return TransformerSeq2Seq(as_transformer_architecture(arch).to_config(vocab_size, **overrides))
    if op != "conv":
        overrides.setdefault("ffn_op", op)
        overrides.setdefault("proj_op", op)
    return TransformerSeq2Seq(preset_config(preset, vocab_size, layers, **overrides))


@register_model("supertransformer", task="translation", paper="ShiftAddNAS (You et al., ICML 2022); HAT (Wang et "
                "al., ACL 2020)")
def supertransformer(op: str = "conv", num_classes: Optional[int] = None, vocab_size: Optional[int] = None,
                     space: Optional[Dict[str, Any]] = None, seed: int = 0, **options: Any) -> nn.Module:
    """Weight-sharing SuperTransformer over a hybrid Transformer search space (one sampled path per
    training step; shiftadd.nas.supertransformer). Options: space (TransformerSearchSpace.as_dict()
    data), seed, dropout, attention_dropout, weight_dropout, pre_norm, max_positions."""
    from shiftadd.errors import UserError
    from shiftadd.nas.supertransformer import SuperTransformer

    if vocab_size is None:
        raise ValueError("supertransformer needs vocab_size=... (the joint subword vocabulary size)")
    if op != "conv":
        raise UserError("the SuperTransformer's families are chosen in its space (ops), not with --op")
    return SuperTransformer.from_options(vocab_size, space, seed, **options)


__all__ = ["TransformerConfig", "TransformerSeq2Seq", "FeedForward", "PackedPair", "PRESETS",
           "example_pair", "preset_config", "sinusoidal_positions", "supertransformer", "transformer_seq"]

