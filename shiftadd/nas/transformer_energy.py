"""Energy per sentence (and parameters) of a Transformer architecture, from per-layer entries.

The energy of one sentence pair of ``tokens`` source and ``tokens`` target tokens (default 30,
the ShiftAddNAS energy sentence; teacher forcing, as ``shiftadd energy --tokens 30``) is the sum
of the layers' energies plus a part that depends only on the embedding dim (embedding, positions,
final LayerNorms, the tied output projection over the vocabulary). A layer's energy depends only
on the embedding dim, its index (the lightweight kernel), its side and its own
:class:`~shiftadd.nas.transformer_space.LayerChoice` (a decoder layer's encoder-decoder attention
reads a ``tokens``-long source), so each (embedding dim, side, index, choice) is counted once with
:func:`shiftadd.energy.count_ops` of that layer alone, when first needed, and kept (a JSON cache).
The sum equals the count of the whole stand-alone model up to float rounding (tested).
"""
from __future__ import annotations

import copy
import json
import os
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn as nn

from shiftadd.nas.transformer_space import LayerChoice, TransformerArchitecture, TransformerSearchSpace
from shiftadd.utils import atomic_write_json

PJ_PER_UJ = 1e6


class _RunLayer(nn.Module):
    """A single encoder (or decoder, reading a fixed source ``memory``) layer as a one-input module."""

    def __init__(self, layer: nn.Module, memory: Optional[torch.Tensor]) -> None:
        super().__init__()
        self.layer, self.memory = layer, memory

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.memory is None:
            return self.layer(x, None)
        return self.layer(x, None, self.memory, None)


def _entry_key(dim: int, side: str, index: int, c: LayerChoice) -> str:
    return f"{dim}|{side}|{index}|{c.block}|{c.ffn_dim}|{c.heads}|{c.op}"


class TransformerEnergyLookup:
    """Inference energy per sentence (pJ) and parameters of the architectures of ``space``."""

    def __init__(self, space: TransformerSearchSpace, vocab_size: int, tokens: int = 30,
                 platform: str = "asic45nm", fmt: str = "fp32", memory: Optional[str] = "sram") -> None:
        from shiftadd.energy import load_table

        table = load_table(platform)  # validates the platform and the format: one-line UserError
        table.format(fmt)
        self.space, self.vocab_size, self.tokens = space, int(vocab_size), int(tokens)
        self.table_space = space  # the space the table counts for (``space`` may be narrowed)
        self.platform, self.fmt, self.memory = table.name, fmt, memory
        self._table = platform
        self.entries: Dict[str, List[float]] = {}   # entry key -> [pJ, parameters]
        self.fixed: Dict[str, List[float]] = {}     # embed dim -> [pJ, parameters]
        self._path: Optional[str] = None

    # ---- counting
    def _price(self, module: nn.Module, shape: Tuple[int, ...], example: Optional[torch.Tensor] = None) -> float:
        from shiftadd.energy import count_ops, evaluate

        counts = count_ops(module, shape, example_input=example)
        return float(evaluate(counts, self._table, self.fmt, memory=self.memory).total_pj)

    def _config(self, dim: int, index: int, c: LayerChoice):
        from shiftadd.models.transformer import TransformerConfig

        n = index + 1
        return TransformerConfig(vocab_size=self.vocab_size, embed_dim=dim, ffn_dim=c.ffn_dim, heads=c.heads,
                                 encoder_blocks=(c.block,) * n, decoder_blocks=(c.block,) * n,
                                 kernel_sizes=self.space.kernel_sizes, glu=self.space.glu, ffn_op=c.op,
                                 proj_op=c.op, max_positions=max(256, 2 * self.tokens))

    def layer_entry(self, dim: int, side: str, index: int, c: LayerChoice) -> List[float]:
        """``[pJ, parameters]`` of layer ``index`` of ``side`` with choice ``c`` at embedding dim ``dim``."""
        key = _entry_key(dim, side, index, c)
        if key not in self.entries:
            from shiftadd.models.transformer import DecoderLayer, EncoderLayer

            with torch.random.fork_rng():
                torch.manual_seed(0)  # shift weights are drawn non-zero either way; fixed for reproducibility
                cfg = self._config(dim, index, c)
                layer = (EncoderLayer if side == "encoder" else DecoderLayer)(cfg, index).eval()
            memory = torch.zeros(1, self.tokens, dim) if side == "decoder" else None
            pj = self._price(_RunLayer(layer, memory), (1, self.tokens, dim))
            self.entries[key] = [pj, float(sum(p.numel() for p in layer.parameters()))]
            self._dirty = True
        return self.entries[key]

    def build(self, arch: TransformerArchitecture) -> nn.Module:
        """The stand-alone network of ``arch`` (what this lookup prices)."""
        from shiftadd.models.transformer import TransformerSeq2Seq

        return TransformerSeq2Seq(arch.to_config(self.vocab_size, max_positions=max(256, 2 * self.tokens)))

    def whole_model_pj(self, arch: TransformerArchitecture) -> float:
        """Energy of the whole stand-alone model of ``arch`` on one sentence pair, counted in one go."""
        from shiftadd.models.transformer import example_pair

        with torch.random.fork_rng():
            torch.manual_seed(0)
            net = self.build(arch).eval()
        pair = example_pair(self.vocab_size, self.tokens, self.tokens)
        return self._price(net.packed(self.tokens), (1, 2 * self.tokens), pair)

    def fixed_entry(self, dim: int) -> List[float]:
        """``[pJ, parameters]`` of the parts outside the layers at embedding dim ``dim``."""
        if str(dim) not in self.fixed:
            s = self.space
            ref = TransformerArchitecture(dim, (s.layer_choices("encoder")[0],) * s.encoder_layers,
                                          (s.layer_choices("decoder")[0],) * min(s.decoder_layers),
                                          s.kernel_sizes[:s.max_layers], s.glu)
            layers = [self.layer_entry(dim, side, i, c) for side, i, c in ref.layers]
            total_params = sum(p.numel() for p in self.build(ref).parameters())
            self.fixed[str(dim)] = [self.whole_model_pj(ref) - sum(e[0] for e in layers),
                                    float(total_params - sum(e[1] for e in layers))]
            self._dirty = True
        return self.fixed[str(dim)]

    # ---- lookups (the interface of the search)
    def layer_energies_pj(self, arch: TransformerArchitecture) -> List[float]:
        self.space.validate(arch)
        return [self.layer_entry(arch.embed_dim, side, i, c)[0] for side, i, c in arch.layers]

    def energy_pj(self, arch: TransformerArchitecture) -> float:
        """Inference energy of one ``tokens`` + ``tokens`` sentence pair (pJ)."""
        out = self.fixed_entry(arch.embed_dim)[0] + sum(self.layer_energies_pj(arch))
        self._autosave()
        return out

    def energy_uj(self, arch: TransformerArchitecture) -> float:
        return self.energy_pj(arch) / PJ_PER_UJ

    def params(self, arch: TransformerArchitecture) -> int:
        self.space.validate(arch)
        out = self.fixed_entry(arch.embed_dim)[1] + sum(self.layer_entry(arch.embed_dim, s, i, c)[1]
                                                         for s, i, c in arch.layers)
        return int(out)

    def _cheapest(self, dim: int, side: str, index: int, what: int, pick=min) -> LayerChoice:
        return pick(self.space.layer_choices(side), key=lambda c: self.layer_entry(dim, side, index, c)[what])

    def extreme(self, cheapest: bool = True) -> TransformerArchitecture:
        """The lowest- (highest-) energy architecture of the space: per embedding dim the cheapest
        (dearest) choice of every layer and the fewest (most) decoder layers, then the best dim."""
        pick = min if cheapest else max
        s = self.space
        options = []
        for dim in s.embed_dims:
            enc = tuple(self._cheapest(dim, "encoder", i, 0, pick) for i in range(s.encoder_layers))
            n = min(s.decoder_layers) if cheapest else max(s.decoder_layers)
            dec = tuple(self._cheapest(dim, "decoder", i, 0, pick) for i in range(n))
            options.append(TransformerArchitecture(dim, enc, dec, s.kernel_sizes[:s.max_layers], s.glu))
        return pick(options, key=self.energy_pj)

    def min_params(self) -> int:
        """Parameters of the smallest network of the space."""
        s, best = self.space, None
        for dim in s.embed_dims:
            total = self.fixed_entry(dim)[1]
            total += sum(self.layer_entry(dim, "encoder", i, self._cheapest(dim, "encoder", i, 1))[1]
                         for i in range(s.encoder_layers))
            total += sum(self.layer_entry(dim, "decoder", i, self._cheapest(dim, "decoder", i, 1))[1]
                         for i in range(min(s.decoder_layers)))
            best = total if best is None else min(best, total)
        return int(best)

    def narrowed(self, space: Any) -> "TransformerEnergyLookup":
        """This table for a sub-space of its space (:func:`shiftadd.nas.space.restrict_space`): the
        entries (shared, still cached) and settings are the table's; the extremes and the budget check
        range over ``space``."""
        new = copy.copy(self)
        new.space = space
        return new

    def check_budget(self, budget_uj: Optional[float]) -> None:
        """One-line UserError when no architecture of the space fits ``budget_uj``."""
        from shiftadd.errors import UserError

        if budget_uj is None:
            return
        low = self.energy_uj(self.extreme(True))
        if budget_uj < low:
            raise UserError(f"energy budget {budget_uj:g} uJ per sentence is below the cheapest network of the "
                            f"space ({low:.4g} uJ on {self.platform}/{self.fmt}); raise --energy-budget")

    def breakdown(self, arch: TransformerArchitecture) -> List[Dict[str, Any]]:
        """Per-layer rows (side, layer, block, ffn_dim, heads, op, energy_pj, share) plus the fixed part."""
        total = self.energy_pj(arch)
        fixed = self.fixed_entry(arch.embed_dim)[0]
        rows = [{"side": "embedding+output", "layer": "-", "block": "-", "ffn_dim": "-", "heads": "-", "op": "conv",
                 "energy_pj": fixed, "share": fixed / total}]
        for (side, i, c), e in zip(arch.layers, self.layer_energies_pj(arch)):
            rows.append({"side": side, "layer": str(i), **c.as_dict(), "energy_pj": e, "share": e / total})
        return rows

    # ---- persistence
    def settings(self) -> Dict[str, Any]:
        return {"space": self.table_space.as_dict(), "vocab_size": self.vocab_size, "tokens": self.tokens,
                "platform": self.platform, "format": self.fmt, "memory": self.memory}

    def save(self, path: str) -> None:
        atomic_write_json(path, {"settings": self.settings(), "entries": self.entries, "fixed": self.fixed},
                          indent=None)
        self._dirty = False

    def _autosave(self) -> None:
        if self._path and getattr(self, "_dirty", False):
            self.save(self._path)

    @classmethod
    def cached(cls, path: Optional[str], space: TransformerSearchSpace, vocab_size: int, tokens: int = 30,
               platform: str = "asic45nm", fmt: str = "fp32",
               memory: Optional[str] = "sram") -> "TransformerEnergyLookup":
        """A lookup that reads the entries counted before from ``path`` (same settings) and adds new ones to it."""
        table = cls(space, vocab_size, tokens, platform, fmt, memory)
        if path and os.path.isfile(path):
            with open(path) as f:
                data = json.load(f)
            if data.get("settings") == table.settings():
                table.entries, table.fixed = data["entries"], data["fixed"]
        table._path = path
        return table


__all__ = ["TransformerEnergyLookup"]
