"""What to quantize and how: one :class:`TensorQuant` per tensor kind, grouped in a :class:`QuantConfig`.

A ``TensorQuant`` describes an ``n``-bit fixed-point (integer) format: every value becomes
``q * scale`` with ``q`` an integer in ``[qmin, qmax]``; values outside ``[qmin * scale, qmax * scale]``
are clipped. The scale is

* ``scale="pow2"`` (fixed point proper): ``scale = 2^-f``. With ``frac_bits=None`` the number of
  fraction bits ``f`` is chosen from the tensor's largest magnitude ``m`` as the *largest* ``f``
  with ``qmax * 2^-f >= m`` (``m`` is representable, one more fraction bit would clip it); with
  ``frac_bits=f`` the format is fixed (Q(n-f).f) and anything outside its range is clipped.
* ``scale="free"``: ``scale = m / qmax`` (symmetric linear quantization; not a power of two).

``m`` is taken over the whole tensor (``granularity="tensor"``) or per channel
(``granularity="channel"``: dim 0 of weights and weight gradients, dim 1 of conv activations and
output errors, the last dim of linear-layer activations and output errors).

The ShiftAddNet presets ``fix32``/``fix16``/``fix8`` quantize weights and activations to 32/16/8 bits
and the backward pass (output errors and weight gradients) to 8 bits, as in ShiftAddNet
(You et al., NeurIPS 2020, Sec. 4: "FIX32/16/8 forward, FIX8 backward"); the backward pass uses
stochastic rounding, forward deterministic (round half to even).
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass, fields
from typing import Any, Dict, Mapping, Optional, Union

from shiftadd.ops.quant import ROUNDING_MODES

ROUNDINGS = ROUNDING_MODES  # the rounding modes of shiftadd.ops.quant.round_values
GRANULARITIES = ("tensor", "channel")
SCALES = ("pow2", "free")
TENSOR_KINDS = ("weight", "activation", "grad_output", "weight_grad")
MAX_BITS = 32


@dataclass(frozen=True)
class TensorQuant:
    """An n-bit fixed-point format for one kind of tensor (see the module docstring)."""

    bits: int = 8
    signed: bool = True
    granularity: str = "tensor"
    scale: str = "pow2"
    rounding: str = "deterministic"
    frac_bits: Optional[int] = None

    def __post_init__(self) -> None:
        if isinstance(self.bits, bool) or not isinstance(self.bits, int):
            raise ValueError(f"bits must be an integer, got {self.bits!r}")
        low = 2 if self.signed else 1
        if not low <= self.bits <= MAX_BITS:
            raise ValueError(f"bits must be in [{low}, {MAX_BITS}] for a {'signed' if self.signed else 'unsigned'} "
                             f"format, got {self.bits}")
        if self.granularity not in GRANULARITIES:
            raise ValueError(f"granularity must be one of {GRANULARITIES}, got {self.granularity!r}")
        if self.scale not in SCALES:
            raise ValueError(f"scale must be one of {SCALES}, got {self.scale!r}")
        if self.rounding not in ROUNDINGS:
            raise ValueError(f"rounding must be one of {ROUNDINGS}, got {self.rounding!r}")
        if self.frac_bits is not None:
            if isinstance(self.frac_bits, bool) or not isinstance(self.frac_bits, int):
                raise ValueError(f"frac_bits must be an integer or None, got {self.frac_bits!r}")
            if not -126 <= self.frac_bits <= 126:
                raise ValueError(f"frac_bits must be in [-126, 126], got {self.frac_bits}")
            if self.scale != "pow2":
                raise ValueError("frac_bits (a fixed fixed-point format) needs scale='pow2'")

    @property
    def qmin(self) -> int:
        """Smallest integer code (two's complement when signed)."""
        return -(2 ** (self.bits - 1)) if self.signed else 0

    @property
    def qmax(self) -> int:
        """Largest integer code."""
        return 2 ** (self.bits - 1) - 1 if self.signed else 2 ** self.bits - 1

    def replace(self, **changes: Any) -> "TensorQuant":
        """A copy with some fields changed."""
        return TensorQuant(**{**asdict(self), **changes})

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "TensorQuant":
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown TensorQuant field(s) {sorted(unknown)}")
        return cls(**d)

    def __str__(self) -> str:
        s = f"{'' if self.signed else 'u'}fix{self.bits}"
        s += f"(Q.{self.frac_bits})" if self.frac_bits is not None else f"/{self.scale}"
        if self.granularity == "channel":
            s += "/channel"
        if self.rounding == "stochastic":
            s += "/stochastic"
        return s


@dataclass(frozen=True)
class QuantConfig:
    """Quantizers for the four tensors of a layer's training step; ``None`` leaves a tensor in float.

    * ``weight``: the layer's weight in the forward pass (ignored for bit-shift layers, whose
      weights are already ``weight_bits``-bit powers of two),
    * ``activation``: the layer's input,
    * ``grad_output``: the output error, i.e. dLoss/d(layer output) flowing back into the layer,
    * ``weight_grad``: dLoss/d(weight parameters) produced by this layer's forward call.
    """

    weight: Optional[TensorQuant] = None
    activation: Optional[TensorQuant] = None
    grad_output: Optional[TensorQuant] = None
    weight_grad: Optional[TensorQuant] = None

    def __post_init__(self) -> None:
        for k in TENSOR_KINDS:
            v = getattr(self, k)
            if v is not None and not isinstance(v, TensorQuant):
                raise ValueError(f"QuantConfig.{k} must be a TensorQuant or None, got {v!r}")

    @property
    def enabled(self) -> bool:
        return any(getattr(self, k) is not None for k in TENSOR_KINDS)

    @classmethod
    def preset(cls, name: str) -> "QuantConfig":
        """A named configuration; see :func:`preset`."""
        return preset(name)

    def replace(self, **changes: Any) -> "QuantConfig":
        return QuantConfig(**{**{k: getattr(self, k) for k in TENSOR_KINDS}, **changes})

    def to_dict(self) -> Dict[str, Any]:
        return {k: (None if getattr(self, k) is None else getattr(self, k).to_dict()) for k in TENSOR_KINDS}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "QuantConfig":
        unknown = set(d) - set(TENSOR_KINDS)
        if unknown:
            raise ValueError(f"unknown QuantConfig field(s) {sorted(unknown)}; known: {list(TENSOR_KINDS)}")
        return cls(**{k: (None if d.get(k) is None else TensorQuant.from_dict(d[k])) for k in TENSOR_KINDS})

    def __str__(self) -> str:
        parts = [f"{k}={getattr(self, k)}" for k in TENSOR_KINDS if getattr(self, k) is not None]
        return "QuantConfig(" + (", ".join(parts) if parts else "float") + ")"


PRESETS = ("float", "fix32", "fix16", "fix8")
_FIX = re.compile(r"^fix(\d+)$")


def fixed_point_config(bits: int, backward_bits: Optional[int] = 8, granularity: str = "tensor",
                       scale: str = "pow2") -> QuantConfig:
    """FIX``bits`` forward (weights and activations, deterministic rounding) and FIX``backward_bits``
    backward (output errors and weight gradients, stochastic rounding); ``backward_bits=None``
    keeps the backward pass in float."""
    fwd = TensorQuant(bits=bits, granularity=granularity, scale=scale)
    bwd = None if backward_bits is None else TensorQuant(bits=backward_bits, scale=scale, rounding="stochastic")
    return QuantConfig(weight=fwd, activation=fwd, grad_output=bwd, weight_grad=bwd)


def preset(name: str) -> QuantConfig:
    """``"float"`` (nothing quantized) or ``"fixN"`` (N-bit forward, 8-bit backward, ShiftAddNet);
    ``fix32``, ``fix16`` and ``fix8`` are the paper's settings, any N in [2, 32] is accepted."""
    key = str(name).strip().lower()
    if key in ("float", "none", "fp32"):
        return QuantConfig()
    m = _FIX.match(key)
    if m and 2 <= int(m.group(1)) <= MAX_BITS:
        return fixed_point_config(int(m.group(1)))
    raise ValueError(f"unknown quantization preset {name!r}; choose one of {', '.join(PRESETS)} "
                     "(or fixN, 2 <= N <= 32)")


ConfigLike = Union[None, str, QuantConfig, Mapping[str, Any]]


def as_config(value: ConfigLike) -> Optional[QuantConfig]:
    """A QuantConfig from a preset name, a QuantConfig, a dict (``QuantConfig.to_dict`` form) or None."""
    if value is None:
        return None
    if isinstance(value, QuantConfig):
        return value
    if isinstance(value, str):
        return preset(value)
    if isinstance(value, Mapping):
        return QuantConfig.from_dict(value)
    raise ValueError(f"expected a preset name, a QuantConfig, a dict or None, got {type(value).__name__}")
