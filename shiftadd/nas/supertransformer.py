"""The SuperTransformer: every architecture of a :class:`TransformerSearchSpace` in one network.

Weight sharing is HAT's (Wang et al., ACL 2020) across widths: every layer holds, at the
space's largest sizes (embedding dim, FFN dim, heads), one token-mixing block per (block type,
linear-layer family), one FFN and one encoder-decoder attention per family, and the LayerNorms;
a sub-network uses the *leading slice* of each of these tensors (rows and columns up to its own
sizes, the first H rows of a lightweight kernel for H heads, the first d columns of the
embedding). The one exception is the GLU input projection (C -> 2C, gate in the second half),
which is sliced per half so that a narrow layer's value and gate rows are the leading rows of the
wide layer's value and gate rows. Block types and families do not share weights with each other
(ShiftAddNAS's SuperTransformer): a layer's attention, lightweight, adder and shift-add blocks are
separate modules.

A sub-network runs through the stand-alone model's own code: the :class:`TransformerSeq2Seq` of
the architecture is built once on the ``meta`` device (no memory, cached per architecture) and
called with :func:`torch.func.functional_call` on the sliced tensors, so a sampled path computes
exactly what :meth:`SuperTransformer.subnet` (the stand-alone model with the slices copied in)
computes, incremental decoding included, and gradients reach the shared tensors.

Training samples one path per step, uniformly, from ``numpy.random.default_rng([seed, step])``
with ``step`` a buffer in the state dict (the same path in every data-parallel process, and a
resumed run continues the sequence). In evaluation mode the active path runs
(:meth:`~SuperTransformer.set_active`, default the largest architecture), so the trainer's
translation task validates and decodes it like any translation model.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn as nn

from shiftadd.errors import UserError
from shiftadd.nas.transformer_space import SIDES, TransformerArchitecture, TransformerSearchSpace

#: Fields of the stand-alone model that are not searched (options of the SuperTransformer).
FIXED_FIELDS = ("dropout", "attention_dropout", "weight_dropout", "pre_norm", "max_positions", "layer_options")


def mixer_key(block: str, op: str) -> str:
    """The name of a layer's (block type, family) token mixer in the SuperTransformer."""
    return f"{block}@{op}"


class _SuperLayer(nn.Module):
    """One encoder or decoder layer at the largest sizes: a token mixer per (block, family), an FFN
    (and for the decoder an encoder-decoder attention) per family, the LayerNorms."""

    def __init__(self, space: TransformerSearchSpace, side: str, index: int, fixed: Dict[str, Any]) -> None:
        super().__init__()
        from shiftadd.models.transformer import FeedForward, _Residual
        from shiftadd.nn.attention import MultiheadAttention, token_mixer

        C, F, H = max(space.embed_dims), max(space.ffn_dims), max(space.heads)
        causal = side == "decoder"
        options = dict(fixed.get("layer_options") or {})
        self.mixers = nn.ModuleDict({
            mixer_key(b, op): token_mixer(b, C, H, kernel_size=space.kernel_sizes[index], causal=causal,
                                          dropout=fixed["attention_dropout"], proj_op=op, glu=space.glu,
                                          weight_dropout=fixed["weight_dropout"], **options)
            for b in space.blocks_of(side) for op in space.ops})
        self.ffns = nn.ModuleDict({op: FeedForward(C, F, op, fixed["dropout"], **options) for op in space.ops})
        self.mix_res = _Residual(C, fixed["pre_norm"], fixed["dropout"])
        self.ffn_res = _Residual(C, fixed["pre_norm"], fixed["dropout"])
        if causal:
            self.crosses = nn.ModuleDict({op: MultiheadAttention(C, H, False, fixed["attention_dropout"], op,
                                                                 **options) for op in space.ops})
            self.cross_res = _Residual(C, fixed["pre_norm"], fixed["dropout"])


class _Call(nn.Module):
    """``forward(method, *args)`` = ``net.<method>(*args)``: lets functional_call reach encode/decode."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, method: str, *args: Any) -> Any:
        return getattr(self.net, method)(*args)


Slicer = Callable[[torch.Tensor], torch.Tensor]


def _leading(shape: Tuple[int, ...]) -> Slicer:
    index = tuple(slice(0, s) for s in shape)
    return lambda t: t[index]


def _glu_rows(shape: Tuple[int, ...], full_rows: int) -> Slicer:
    """Rows [0, n) and [N, N + n) of a (2N, ...) GLU projection tensor (value and gate halves)."""
    n, rest = shape[0] // 2, tuple(slice(0, s) for s in shape[1:])

    def cut(t: torch.Tensor) -> torch.Tensor:
        half = full_rows // 2
        return torch.cat([t[(slice(0, n),) + rest], t[(slice(half, half + n),) + rest]], 0)

    return cut


class SuperTransformer(nn.Module):
    """All architectures of ``space`` with HAT-style shared weights (see the module doc).

    ``vocab_size``: the joint subword vocabulary; ``seed``: the path-sampling seed; the other
    options (``dropout``, ``attention_dropout``, ``weight_dropout``, ``pre_norm``,
    ``max_positions``, ``layer_options``) are those of every sub-network.
    """

    def __init__(self, space: TransformerSearchSpace, vocab_size: int, seed: int = 0, dropout: float = 0.1,
                 attention_dropout: float = 0.0, weight_dropout: float = 0.0, pre_norm: bool = True,
                 max_positions: int = 256, layer_options: Optional[Dict[str, Any]] = None) -> None:
        super().__init__()
        from shiftadd.models.transformer import TransformerConfig

        self.space, self.vocab_size, self.seed = space, int(vocab_size), int(seed)
        self.fixed = {"dropout": float(dropout), "attention_dropout": float(attention_dropout),
                      "weight_dropout": float(weight_dropout), "pre_norm": bool(pre_norm),
                      "max_positions": int(max_positions), "layer_options": dict(layer_options or {})}
        C = max(space.embed_dims)
        #: the configuration of the largest path (what decoders read: pad/bos/eos ids, max_positions)
        self.cfg: TransformerConfig = space.largest().to_config(self.vocab_size, **self.fixed)
        self.embed = nn.Embedding(self.vocab_size, C, padding_idx=self.cfg.pad_id)
        nn.init.normal_(self.embed.weight, 0.0, C ** -0.5)  # as TransformerSeq2Seq
        with torch.no_grad():
            self.embed.weight[self.cfg.pad_id].zero_()
        self.encoder = nn.ModuleList(_SuperLayer(space, "encoder", i, self.fixed) for i in range(space.encoder_layers))
        self.decoder = nn.ModuleList(_SuperLayer(space, "decoder", i, self.fixed)
                                     for i in range(max(space.decoder_layers)))
        self.encoder_norm = nn.LayerNorm(C) if pre_norm else nn.Identity()
        self.decoder_norm = nn.LayerNorm(C) if pre_norm else nn.Identity()
        self.register_buffer("sample_step", torch.zeros((), dtype=torch.long))
        self.active = space.largest()
        self._paths: "OrderedDict[str, Tuple[_Call, List[Tuple[str, str, Slicer]]]]" = OrderedDict()
        self._positions: Dict[Tuple[int, str], torch.Tensor] = {}

    @classmethod
    def from_options(cls, vocab_size: int, space: Optional[Dict[str, Any]] = None, seed: int = 0,
                     **options: Any) -> "SuperTransformer":
        """Build from zoo/trainer options: ``space`` is :meth:`TransformerSearchSpace.as_dict` data."""
        unknown = set(options) - set(FIXED_FIELDS)
        if unknown:
            raise UserError(f"unknown SuperTransformer option(s) {sorted(unknown)}; known: space, seed, "
                            f"{', '.join(FIXED_FIELDS)}")
        return cls(TransformerSearchSpace.from_dict(space or {}), vocab_size, seed, **options)

    # ---- paths
    def sample_path(self, step: int) -> TransformerArchitecture:
        """The path of training step ``step``: uniform over the space, from a generator seeded by (seed, step)."""
        return self.space.sample(np.random.default_rng([self.seed, int(step)]))

    def set_active(self, arch: TransformerArchitecture) -> "SuperTransformer":
        """The path evaluation-mode calls run."""
        self.active = self.space.validate(arch)
        return self

    def _path(self, arch: TransformerArchitecture) -> Tuple[_Call, List[Tuple[str, str, Slicer]]]:
        """The meta-device stand-alone model of ``arch`` and, per parameter, (its name, the shared
        parameter's name, the slice), cached (least recently used first out)."""
        from shiftadd.models.transformer import TransformerSeq2Seq
        from shiftadd.nn.lightweight import LightweightBlock

        key = arch.key()
        if key in self._paths:
            self._paths.move_to_end(key)
            return self._paths[key]
        with torch.device("meta"):
            net = TransformerSeq2Seq(arch.to_config(self.vocab_size, **self.fixed))
        glu_modules = {name for name, m in net.named_modules() if isinstance(m, LightweightBlock) and m.glu}
        shared = dict(self.named_parameters())
        plan = []
        for name, p in net.named_parameters():
            parts = name.split(".")
            if parts[0] in SIDES:
                choice = getattr(arch, parts[0])[int(parts[1])]
                if parts[2] == "mixer":
                    parts[2:3] = ["mixers", mixer_key(choice.block, choice.op)]
                elif parts[2] in ("ffn", "cross"):
                    parts[2:3] = [{"ffn": "ffns", "cross": "crosses"}[parts[2]], choice.op]
            full = ".".join(parts)
            if full not in shared:
                raise RuntimeError(f"SuperTransformer has no tensor {full} for {name}")  # a bug, not user input
            owner = name.rsplit(".", 2)[0] if name.count(".") >= 2 else ""
            shape = tuple(p.shape)
            if owner in glu_modules and name.split(".")[-2] == "in_proj":
                slicer = _glu_rows(shape, shared[full].shape[0])
            else:
                slicer = _leading(shape)
            if any(s > f for s, f in zip(shape, shared[full].shape)):
                raise RuntimeError(f"{name} {shape} is larger than the shared {full} {tuple(shared[full].shape)}")
            plan.append((name, full, slicer))
        bufs = [n for n, _ in net.named_buffers()]
        if bufs != ["positions"]:
            raise RuntimeError(f"unexpected buffers {bufs} in the stand-alone Transformer")
        entry = (_Call(net), plan)
        self._paths[key] = entry
        while len(self._paths) > 32:
            self._paths.popitem(last=False)
        return entry

    def sliced_state(self, arch: TransformerArchitecture) -> Dict[str, torch.Tensor]:
        """The stand-alone model's parameters of ``arch``, as (differentiable) slices of the shared tensors."""
        _, plan = self._path(self.space.validate(arch))
        shared = dict(self.named_parameters())
        return {name: slicer(shared[full]) for name, full, slicer in plan}

    def _positions_for(self, dim: int) -> torch.Tensor:
        from shiftadd.models.transformer import sinusoidal_positions

        device = self.embed.weight.device
        key = (dim, str(device))
        if key not in self._positions:
            self._positions[key] = sinusoidal_positions(self.fixed["max_positions"], dim).to(device)
        return self._positions[key]

    def call_path(self, arch: TransformerArchitecture, method: str, *args: Any) -> Any:
        """``TransformerSeq2Seq(arch).<method>(*args)`` on the shared weights (``forward``, ``encode``, ``decode``)."""
        call, plan = self._path(arch)
        shared = dict(self.named_parameters())
        tensors = {f"net.{name}": slicer(shared[full]) for name, full, slicer in plan}
        tensors["net.positions"] = self._positions_for(arch.embed_dim)
        call.net.train(self.training)
        return torch.func.functional_call(call, tensors, (method,) + args)

    # ---- the model interface of the translation task and the decoders
    def forward(self, src: torch.Tensor, tgt_in: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return self.call_path(self.active, "forward", src, tgt_in)
        step = int(self.sample_step)
        self.sample_step.add_(1)
        return self.call_path(self.sample_path(step), "forward", src, tgt_in)

    def encode(self, src: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """The active path's encoder (see :meth:`TransformerSeq2Seq.encode`)."""
        return self.call_path(self.active, "encode", src)

    def decode(self, tgt_in: torch.Tensor, memory: torch.Tensor, memory_mask: Optional[torch.Tensor],
               state: Optional[Dict[str, Any]] = None) -> torch.Tensor:
        """The active path's decoder, incremental with ``state`` (see :meth:`TransformerSeq2Seq.decode`)."""
        return self.call_path(self.active, "decode", tgt_in, memory, memory_mask, state)

    def regularization_loss(self) -> torch.Tensor:
        """Zero, with an exact zero gradient for every parameter off this step's path: DDP (built
        without ``find_unused_parameters``) then all-reduces every parameter in every process."""
        if not self.training:
            return self.embed.weight.new_zeros(())
        return sum(p.sum() for p in self.parameters() if p.requires_grad) * 0.0

    # ---- stand-alone networks
    def subnet(self, arch: TransformerArchitecture) -> nn.Module:
        """The stand-alone :class:`TransformerSeq2Seq` of ``arch`` with the shared weights' slices copied in."""
        from shiftadd.models.transformer import TransformerSeq2Seq

        state = {k: v.detach().clone() for k, v in self.sliced_state(arch).items()}
        net = TransformerSeq2Seq(arch.to_config(self.vocab_size, **self.fixed))
        net.load_state_dict(state, strict=True)
        return net.to(self.embed.weight.device).train(self.training)

    def extra_repr(self) -> str:
        return f"vocab_size={self.vocab_size}, seed={self.seed}, space={self.space.as_dict()}"


__all__ = ["SuperTransformer", "mixer_key"]
