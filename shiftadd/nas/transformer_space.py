"""The hybrid Transformer search space of ShiftAddNAS (You et al., ICML 2022) on HAT's elastic dimensions.

An architecture (:class:`TransformerArchitecture`, plain data, YAML/JSON like the CNN
:class:`~shiftadd.nas.arch.Architecture`) is one embedding dimension for the whole network and,
per encoder layer and per decoder layer, a :class:`LayerChoice`: the token-mixing block (one of
:data:`shiftadd.nn.TOKEN_MIXERS`), the FFN hidden size, the number of heads and the operator
family of the layer's linear layers (its FFN and every projection in it: ``conv`` =
multiplicative, ``shift-ps`` = the shift-layer FFN that makes a multiplication-free network
possible). The encoder has a fixed number of layers, the decoder 1..N. Kernel sizes of the
lightweight convolutions (per layer index) and the GLU switch are fixed by the space and stored in
the architecture, so an architecture file alone rebuilds the network::

    embed_dim: 256
    glu: true
    kernel_sizes: [3, 7, 15]
    encoder:
    - {block: attention+lightweight-adder, ffn_dim: 512, heads: 4, op: conv}
    ...
    decoder:
    - {block: attention, ffn_dim: 1024, heads: 8, op: conv}

:meth:`TransformerArchitecture.to_config` gives the :class:`~shiftadd.models.transformer.TransformerConfig`
of the stand-alone network (``create("transformer-seq", arch=FILE, vocab_size=V)``).
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Sequence, Tuple, Union

import numpy as np

from shiftadd.errors import UserError

#: Encoder block choices: the three lightweight convolutions, attention, and attention + each of them.
ENCODER_BLOCKS = ("lightweight", "lightweight-adder", "lightweight-shiftadd", "attention",
                  "attention+lightweight", "attention+lightweight-adder", "attention+lightweight-shiftadd")
#: Decoder block choices (ShiftAddNAS keeps attention in every decoder layer).
DECODER_BLOCKS = ("attention", "attention+lightweight", "attention+lightweight-adder",
                  "attention+lightweight-shiftadd")
#: Defaults scaled to Multi30k (issue 15): HAT's elastic dimensions at a third to a half of its WMT sizes.
DEFAULT_EMBED_DIMS = (256, 384, 512)
DEFAULT_FFN_DIMS = (512, 1024, 2048)
DEFAULT_HEADS = (4, 8)
DEFAULT_DECODER_LAYERS = (1, 2, 3, 4, 5, 6)
DEFAULT_KERNEL_SIZES = (3, 7, 15, 31, 31, 31)  # Wu et al.'s growing kernels (as the lightweight presets)
SIDES = ("encoder", "decoder")


@dataclass(frozen=True)
class LayerChoice:
    """One Transformer layer: token-mixing ``block``, FFN hidden size, heads, family of its linear layers."""

    block: str
    ffn_dim: int
    heads: int
    op: str = "conv"

    def as_dict(self) -> Dict[str, Any]:
        return {"block": self.block, "ffn_dim": self.ffn_dim, "heads": self.heads, "op": self.op}


def block_multiplication_free(block: str, op: str, glu: bool) -> bool:
    """Whether a layer's searched operators are all multiplication-free: an adder or shift-add
    lightweight convolution, multiplication-free linear layers (``op``), no GLU gate."""
    from shiftadd.nas.space import family_properties

    return block in ("lightweight-adder", "lightweight-shiftadd") and not glu and \
        family_properties(op)["multiplication_free"]


@dataclass(frozen=True)
class TransformerArchitecture:
    """A hybrid encoder-decoder Transformer: ``embed_dim``, one :class:`LayerChoice` per layer."""

    embed_dim: int
    encoder: Tuple[LayerChoice, ...]
    decoder: Tuple[LayerChoice, ...]
    kernel_sizes: Tuple[int, ...] = DEFAULT_KERNEL_SIZES
    glu: bool = True

    def __post_init__(self) -> None:
        for name in ("encoder", "decoder", "kernel_sizes"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if not self.encoder or not self.decoder:
            raise UserError("a Transformer architecture needs at least one encoder and one decoder layer")
        n = max(len(self.encoder), len(self.decoder))
        if len(self.kernel_sizes) < n:
            raise UserError(f"kernel_sizes has {len(self.kernel_sizes)} entries for {n} layers")

    @property
    def layers(self) -> List[Tuple[str, int, LayerChoice]]:
        """``(side, index, choice)`` of every layer, encoder first."""
        return [(s, i, c) for s in SIDES for i, c in enumerate(getattr(self, s))]

    def key(self) -> str:
        """A compact unique string (a dictionary key for caches and the search state)."""
        return json.dumps(self.as_dict(), separators=(",", ":"))

    @classmethod
    def from_key(cls, key: str) -> "TransformerArchitecture":
        return cls.from_dict(json.loads(key))

    def multiplication_free(self) -> bool:
        """Every layer's searched operators are multiplication-free (see :func:`block_multiplication_free`)."""
        return all(block_multiplication_free(c.block, c.op, self.glu) for _, _, c in self.layers)

    # ---- the stand-alone network
    def to_config(self, vocab_size: int, **overrides: Any):
        """The :class:`~shiftadd.models.transformer.TransformerConfig` of this architecture; ``overrides``
        set the fields that are not searched (dropout, max_positions, ...)."""
        from shiftadd.models.transformer import TransformerConfig

        searched = {"embed_dim", "encoder_blocks", "decoder_blocks", "kernel_sizes", "glu", "ffn_dim", "heads",
                    "encoder_ffn_dims", "decoder_ffn_dims", "encoder_heads", "decoder_heads", "encoder_ops",
                    "decoder_ops", "ffn_op", "proj_op"}
        clash = sorted(set(overrides) & searched)
        if clash:
            raise UserError(f"{', '.join(clash)} come(s) from the architecture file; do not set them as well")
        per_layer: Dict[str, Any] = {}
        for side in SIDES:
            layers = getattr(self, side)
            per_layer[f"{side}_blocks"] = tuple(c.block for c in layers)
            per_layer[f"{side}_ffn_dims"] = tuple(c.ffn_dim for c in layers)
            per_layer[f"{side}_heads"] = tuple(c.heads for c in layers)
            per_layer[f"{side}_ops"] = tuple(c.op for c in layers)
        first = self.encoder[0]
        try:
            return TransformerConfig(vocab_size=int(vocab_size), embed_dim=self.embed_dim, ffn_dim=first.ffn_dim,
                                     heads=first.heads, kernel_sizes=self.kernel_sizes, glu=self.glu,
                                     **per_layer, **overrides)
        except ValueError as exc:
            raise UserError(f"architecture does not give a valid Transformer: {exc}") from None

    @classmethod
    def from_config(cls, cfg: Any) -> "TransformerArchitecture":
        """The architecture of a :class:`~shiftadd.models.transformer.TransformerConfig` (the inverse of
        :meth:`to_config`), e.g. of a hand-designed preset, to price it or look it up in a supernet; a
        one-line :class:`UserError` when a layer's FFN and projections use different families (a layer
        has one ``op`` here)."""
        sides: Dict[str, List[LayerChoice]] = {}
        for side in SIDES:
            sides[side] = []
            for i, block in enumerate(getattr(cfg, f"{side}_blocks")):
                ffn, heads, ffn_op, proj_op = cfg.layer_dims(side, i)
                if ffn_op != proj_op:
                    raise UserError(f"{side} layer {i} has FFN family {ffn_op!r} and projection family {proj_op!r}; "
                                    "an architecture layer has one op for both")
                sides[side].append(LayerChoice(block, int(ffn), int(heads), ffn_op))
        n = max(len(sides["encoder"]), len(sides["decoder"]))
        kernels = tuple(cfg.kernel_size(i) for i in range(n))
        return cls(int(cfg.embed_dim), tuple(sides["encoder"]), tuple(sides["decoder"]), kernels, bool(cfg.glu))

    # ---- plain data
    def as_dict(self) -> Dict[str, Any]:
        return {"embed_dim": self.embed_dim, "glu": self.glu, "kernel_sizes": list(self.kernel_sizes),
                "encoder": [c.as_dict() for c in self.encoder], "decoder": [c.as_dict() for c in self.decoder]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], what: str = "Transformer architecture") -> "TransformerArchitecture":
        from shiftadd.nn.attention import TOKEN_MIXERS
        from shiftadd.nn.families import family_names

        if not isinstance(data, Mapping) or not isinstance(data.get("encoder"), list) \
                or not isinstance(data.get("decoder"), list):
            raise UserError(f"{what} must be a mapping with 'embed_dim', 'encoder' and 'decoder' lists")
        unknown = set(data) - {"embed_dim", "glu", "kernel_sizes", "encoder", "decoder"}
        if unknown:
            raise UserError(f"{what} has unknown key(s) {sorted(unknown)}; known: embed_dim, glu, kernel_sizes, "
                            "encoder, decoder")
        sides: Dict[str, List[LayerChoice]] = {}
        for side in SIDES:
            out = []
            for i, layer in enumerate(data[side]):
                if not isinstance(layer, Mapping) or "block" not in layer:
                    raise UserError(f"{what}: {side} layer {i} must be a mapping with a 'block' key, got {layer!r}")
                bad = set(layer) - {"block", "ffn_dim", "heads", "op"}
                if bad:
                    raise UserError(f"{what}: {side} layer {i} has unknown key(s) {sorted(bad)}; "
                                    "known: block, ffn_dim, heads, op")
                if layer["block"] not in TOKEN_MIXERS:
                    raise UserError(f"{what}: {side} layer {i} block {layer['block']!r} is not one of: "
                                    f"{', '.join(TOKEN_MIXERS)}")
                op = str(layer.get("op", "conv"))
                if op not in family_names():
                    raise UserError(f"{what}: {side} layer {i} op {op!r} is not an operator family; choose one "
                                    f"of: {', '.join(family_names())}")
                ffn, heads = _positive(layer.get("ffn_dim"), f"{what}: {side} layer {i} ffn_dim"), \
                    _positive(layer.get("heads"), f"{what}: {side} layer {i} heads")
                out.append(LayerChoice(str(layer["block"]), ffn, heads, op))
            sides[side] = out
        kernels = data.get("kernel_sizes", list(DEFAULT_KERNEL_SIZES))
        if not isinstance(kernels, list):
            raise UserError(f"{what}: kernel_sizes must be a list of positive integers")
        kernels = [_positive(k, f"{what}: kernel size") for k in kernels]
        glu = data.get("glu", True)
        if not isinstance(glu, bool):
            raise UserError(f"{what}: glu must be true or false, got {glu!r}")
        arch = cls(_positive(data.get("embed_dim"), f"{what}: embed_dim"), tuple(sides["encoder"]),
                   tuple(sides["decoder"]), tuple(kernels), glu)
        arch.to_config(8)  # the sizes fit together (heads divide the embedding, ...): one-line UserError
        return arch

    def save(self, path: Union[str, "os.PathLike[str]"]) -> None:
        """Write as JSON (``.json``) or YAML (anything else), atomically."""
        from shiftadd.nas.arch import write_text_atomic

        write_text_atomic(path, self.as_dict())

    @classmethod
    def load(cls, path: Union[str, "os.PathLike[str]"]) -> "TransformerArchitecture":
        from shiftadd.nas.arch import read_arch_data

        path = os.fspath(path)
        return cls.from_dict(read_arch_data(path), what=f"architecture file {path!r}")

    def __str__(self) -> str:
        def short(c: LayerChoice) -> str:
            name = c.block.replace("attention", "att").replace("lightweight", "lw")
            return f"{name}/f{c.ffn_dim}/h{c.heads}" + ("" if c.op == "conv" else f"/{c.op}")

        return (f"transformer[d{self.embed_dim} | enc " + " ".join(short(c) for c in self.encoder)
                + " | dec " + " ".join(short(c) for c in self.decoder) + "]")


def _positive(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UserError(f"{what} must be a positive integer, got {value!r}")
    return value


def is_transformer_data(data: Any) -> bool:
    """Whether architecture data (a parsed YAML/JSON file) describes a Transformer (it has an 'encoder')."""
    return isinstance(data, Mapping) and "encoder" in data


def as_transformer_architecture(arch: Any) -> TransformerArchitecture:
    """A :class:`TransformerArchitecture` from itself, its ``as_dict`` form or a YAML/JSON path."""
    if isinstance(arch, TransformerArchitecture):
        return arch
    if isinstance(arch, Mapping):
        return TransformerArchitecture.from_dict(arch)
    if isinstance(arch, (str, os.PathLike)):
        return TransformerArchitecture.load(arch)
    raise UserError(f"arch must be a TransformerArchitecture, a dict or a YAML/JSON path, got {type(arch).__name__}")


@dataclass(frozen=True)
class TransformerSearchSpace:
    """Per layer: block x FFN dim x heads x linear-layer family; the embedding dim and the decoder depth.

    ``encoder_blocks`` / ``decoder_blocks``: the block choices (defaults :data:`ENCODER_BLOCKS`,
    :data:`DECODER_BLOCKS`); ``ops``: the linear-layer families per layer (``("conv", "shift-ps")``
    adds the shift-layer FFN/projections); ``glu``: the lightweight blocks' GLU gate (off for a
    multiplication-free network); ``kernel_sizes``: the lightweight kernel of layer i.
    """

    embed_dims: Tuple[int, ...] = DEFAULT_EMBED_DIMS
    ffn_dims: Tuple[int, ...] = DEFAULT_FFN_DIMS
    heads: Tuple[int, ...] = DEFAULT_HEADS
    encoder_layers: int = 6
    decoder_layers: Tuple[int, ...] = DEFAULT_DECODER_LAYERS
    encoder_blocks: Tuple[str, ...] = ENCODER_BLOCKS
    decoder_blocks: Tuple[str, ...] = DECODER_BLOCKS
    ops: Tuple[str, ...] = ("conv",)
    glu: bool = True
    kernel_sizes: Tuple[int, ...] = DEFAULT_KERNEL_SIZES
    kind: str = field(default="transformer", init=False)

    def __post_init__(self) -> None:
        from shiftadd.nn.attention import TOKEN_MIXERS
        from shiftadd.nn.families import family_names

        for name, kind in (("embed_dims", int), ("ffn_dims", int), ("heads", int), ("decoder_layers", int),
                           ("encoder_blocks", str), ("decoder_blocks", str), ("ops", str), ("kernel_sizes", int)):
            try:
                values = tuple(kind(v) for v in getattr(self, name))
            except (TypeError, ValueError):
                raise UserError(f"{name} must be a list of {kind.__name__}, got {getattr(self, name)!r}") from None
            if not values or (name != "kernel_sizes" and len(set(values)) != len(values)):
                raise UserError(f"{name} needs distinct values, got {list(values)}")
            if kind is int and min(values) < 1:
                raise UserError(f"{name} must be positive, got {list(values)}")
            object.__setattr__(self, name, tuple(sorted(values)) if kind is int and name != "kernel_sizes" else values)
        if int(self.encoder_layers) < 1:
            raise UserError(f"encoder_layers must be >= 1, got {self.encoder_layers}")
        object.__setattr__(self, "encoder_layers", int(self.encoder_layers))
        for side in ("encoder_blocks", "decoder_blocks"):
            bad = [b for b in getattr(self, side) if b not in TOKEN_MIXERS]
            if bad:
                raise UserError(f"unknown block type(s) {bad} in {side}; choose from: {', '.join(TOKEN_MIXERS)}")
        bad = [o for o in self.ops if o not in family_names()]
        if bad:
            raise UserError(f"unknown operator famil(y/ies) {bad}; choose from: {', '.join(family_names())}")
        for c in self.embed_dims:
            for h in self.heads:
                two_branch = any("+" in b for b in self.encoder_blocks + self.decoder_blocks)
                if c % h or (two_branch and (h % 2 or c % 2)):
                    raise UserError(f"every heads choice must divide every embedding dim (and be even for the "
                                    f"two-branch blocks): heads {h}, embed_dim {c}")
        if len(self.kernel_sizes) < self.max_layers:
            raise UserError(f"kernel_sizes needs one entry per layer index ({self.max_layers}), got "
                            f"{list(self.kernel_sizes)}")

    @property
    def max_layers(self) -> int:
        return max(self.encoder_layers, max(self.decoder_layers))

    def blocks_of(self, side: str) -> Tuple[str, ...]:
        return self.encoder_blocks if side == "encoder" else self.decoder_blocks

    def layer_choices(self, side: str) -> List[LayerChoice]:
        """Every choice of one layer of ``side``."""
        return [LayerChoice(b, f, h, o) for b in self.blocks_of(side) for f in self.ffn_dims for h in self.heads
                for o in self.ops]

    def size(self) -> int:
        """Number of architectures in the space."""
        enc, dec = len(self.layer_choices("encoder")), len(self.layer_choices("decoder"))
        return len(self.embed_dims) * enc ** self.encoder_layers * sum(dec ** n for n in self.decoder_layers)

    def _arch(self, embed: int, enc: Sequence[LayerChoice], dec: Sequence[LayerChoice]) -> TransformerArchitecture:
        return TransformerArchitecture(embed, tuple(enc), tuple(dec), self.kernel_sizes[:self.max_layers], self.glu)

    def largest(self) -> TransformerArchitecture:
        """Widest dims, most decoder layers, the first block choice (the path the supernet validates)."""
        def big(side: str) -> LayerChoice:
            return LayerChoice(self.blocks_of(side)[0], max(self.ffn_dims), max(self.heads), self.ops[0])

        return self._arch(max(self.embed_dims), [big("encoder")] * self.encoder_layers,
                          [big("decoder")] * max(self.decoder_layers))

    def from_key(self, key: str) -> TransformerArchitecture:
        return TransformerArchitecture.from_key(key)

    # ---- checking
    def validate(self, arch: TransformerArchitecture, what: str = "architecture") -> TransformerArchitecture:
        """Raise a one-line :class:`UserError` if ``arch`` is not in this space."""
        if not isinstance(arch, TransformerArchitecture):
            raise UserError(f"{what} is not a Transformer architecture")
        if arch.embed_dim not in self.embed_dims:
            raise UserError(f"{what}: embed_dim {arch.embed_dim} is not one of {list(self.embed_dims)}")
        if len(arch.encoder) != self.encoder_layers:
            raise UserError(f"{what} has {len(arch.encoder)} encoder layers; the space has {self.encoder_layers}")
        if len(arch.decoder) not in self.decoder_layers:
            raise UserError(f"{what} has {len(arch.decoder)} decoder layers; the space allows "
                            f"{list(self.decoder_layers)}")
        if arch.glu != self.glu or tuple(arch.kernel_sizes[:self.max_layers]) != self.kernel_sizes[:self.max_layers]:
            raise UserError(f"{what}: glu/kernel_sizes ({arch.glu}, {list(arch.kernel_sizes)}) differ from the "
                            f"space's ({self.glu}, {list(self.kernel_sizes[:self.max_layers])})")
        for side, i, c in arch.layers:
            for name, allowed in (("block", self.blocks_of(side)), ("ffn_dim", self.ffn_dims),
                                  ("heads", self.heads), ("op", self.ops)):
                if getattr(c, name) not in allowed:
                    raise UserError(f"{what}: {side} layer {i} {name} {getattr(c, name)!r} is not one of "
                                    f"{list(allowed)}")
        return arch

    def member(self, arch: TransformerArchitecture, what: str = "architecture") -> TransformerArchitecture:
        """``arch`` as an architecture of this space (e.g. a hand-designed preset's, via
        :meth:`TransformerArchitecture.from_config`): ``glu`` and ``kernel_sizes`` shape only lightweight
        convolutions, so a network without one takes the space's values; then :meth:`validate`."""
        if not any("lightweight" in c.block for _, _, c in arch.layers):
            arch = dataclasses.replace(arch, glu=self.glu, kernel_sizes=self.kernel_sizes[:self.max_layers])
        return self.validate(arch, what)

    # ---- sampling and variation (numpy Generator: a search saves and restores its state exactly)
    def _pick(self, rng: np.random.Generator, values: Sequence[Any]) -> Any:
        return values[int(rng.integers(len(values)))]

    def random_layer(self, rng: np.random.Generator, side: str) -> LayerChoice:
        return LayerChoice(self._pick(rng, self.blocks_of(side)), self._pick(rng, self.ffn_dims),
                           self._pick(rng, self.heads), self._pick(rng, self.ops))

    def sample(self, rng: np.random.Generator) -> TransformerArchitecture:
        """A uniformly random architecture (every dimension and every layer's choice independently uniform)."""
        embed = self._pick(rng, self.embed_dims)
        enc = [self.random_layer(rng, "encoder") for _ in range(self.encoder_layers)]
        n = self._pick(rng, self.decoder_layers)
        return self._arch(embed, enc, [self.random_layer(rng, "decoder") for _ in range(n)])

    def _mutate_layer(self, c: LayerChoice, side: str, prob: float, rng: np.random.Generator) -> LayerChoice:
        fields = {}
        for name, values in (("block", self.blocks_of(side)), ("ffn_dim", self.ffn_dims), ("heads", self.heads),
                             ("op", self.ops)):
            fields[name] = self._pick(rng, values) if rng.random() < prob else getattr(c, name)
        return LayerChoice(**fields)

    def mutate(self, arch: TransformerArchitecture, prob: float, rng: np.random.Generator) -> TransformerArchitecture:
        """Resample the embedding dim, the decoder depth and every field of every layer, each with
        probability ``prob`` (new decoder layers are drawn uniformly)."""
        embed = self._pick(rng, self.embed_dims) if rng.random() < prob else arch.embed_dim
        enc = [self._mutate_layer(c, "encoder", prob, rng) for c in arch.encoder]
        n = self._pick(rng, self.decoder_layers) if rng.random() < prob else len(arch.decoder)
        dec = [self._mutate_layer(c, "decoder", prob, rng) for c in arch.decoder[:n]]
        dec += [self.random_layer(rng, "decoder") for _ in range(n - len(dec))]
        return self._arch(embed, enc, dec)

    def crossover(self, a: TransformerArchitecture, b: TransformerArchitecture,
                  rng: np.random.Generator) -> TransformerArchitecture:
        """Uniform crossover: the embedding dim, the decoder depth and each layer from ``a`` or ``b``
        with probability 1/2 (a decoder layer only one parent has comes from that parent)."""
        embed = a.embed_dim if rng.random() < 0.5 else b.embed_dim
        enc = [x if rng.random() < 0.5 else y for x, y in zip(a.encoder, b.encoder)]
        n = len(a.decoder) if rng.random() < 0.5 else len(b.decoder)
        dec = []
        for i in range(n):
            have = [p.decoder[i] for p in (a, b) if i < len(p.decoder)]
            dec.append(have[0] if len(have) == 1 or rng.random() < 0.5 else have[1])
        return self._arch(embed, enc, dec)

    def suggest(self, trial: Any) -> TransformerArchitecture:
        """The architecture an Optuna ``trial`` suggests (a fixed set of categorical parameters)."""
        def layer(prefix: str, side: str) -> LayerChoice:
            return LayerChoice(trial.suggest_categorical(f"{prefix}_block", list(self.blocks_of(side))),
                               int(trial.suggest_categorical(f"{prefix}_ffn", list(self.ffn_dims))),
                               int(trial.suggest_categorical(f"{prefix}_heads", list(self.heads))),
                               trial.suggest_categorical(f"{prefix}_op", list(self.ops)))

        embed = int(trial.suggest_categorical("embed_dim", list(self.embed_dims)))
        enc = [layer(f"e{i}", "encoder") for i in range(self.encoder_layers)]
        n = int(trial.suggest_categorical("decoder_layers", list(self.decoder_layers)))
        dec = [layer(f"d{i}", "decoder") for i in range(max(self.decoder_layers))][:n]
        return self._arch(embed, enc, dec)

    def as_dict(self) -> Dict[str, Any]:
        return {"kind": "transformer", "embed_dims": list(self.embed_dims), "ffn_dims": list(self.ffn_dims),
                "heads": list(self.heads), "encoder_layers": self.encoder_layers,
                "decoder_layers": list(self.decoder_layers), "encoder_blocks": list(self.encoder_blocks),
                "decoder_blocks": list(self.decoder_blocks), "ops": list(self.ops), "glu": self.glu,
                "kernel_sizes": list(self.kernel_sizes)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "TransformerSearchSpace":
        known = {k: v for k, v in d.items() if k != "kind"}
        try:
            return cls(**known)
        except TypeError as exc:
            raise UserError(f"not a Transformer search space: {exc}") from None


def space_from_dict(d: Mapping[str, Any]):
    """The CNN :class:`~shiftadd.nas.space.SearchSpace` or the :class:`TransformerSearchSpace` of ``as_dict`` data."""
    if d.get("kind") == "transformer":
        return TransformerSearchSpace.from_dict(d)
    from shiftadd.nas.space import SearchSpace

    return SearchSpace.from_dict(dict(d))


__all__ = ["ENCODER_BLOCKS", "DECODER_BLOCKS", "LayerChoice", "TransformerArchitecture", "TransformerSearchSpace",
           "as_transformer_architecture", "block_multiplication_free", "is_transformer_data", "space_from_dict"]
