"""Fixed-point quantization-aware training: attach per-layer quantizers to a model, in place.

>>> quantize_model(model, "fix8")                          # every adder/shift/conv/linear layer
>>> quantize_model(model, {"adder": "fix8", "shift": "fix16"})   # per layer type
>>> quantized_layers(model); dequantize_model(model)       # inspect / undo

Each quantized layer gets a child ``quantizer`` (:class:`LayerQuantizer`) that, around every forward
call, fake-quantizes the weight and the input (straight-through estimator) and installs autograd
identities whose gradients are quantized: the output error (dLoss/d output, on its way into the
layer) and the weight gradient (dLoss/d weight produced by this call). No parameter, buffer or
state_dict key is added or renamed, so checkpoints load into quantized and float models alike,
``weight.grad`` exists as usual and the AdderNet adaptive learning rate works unchanged.
Nothing needs to be called during training.

Bit-shift layers: their weight already is a ``weight_bits``-bit power of two, so the ``weight``
quantizer is not applied to them (the layer's own ``weight_bits`` governs); their input, output
error and the gradients of ``shift``/``sign`` (or ``latent_weight``) are quantized.
Biases are not quantized.
"""
from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Sequence, Union

import torch
import torch.nn as nn

from shiftadd.quant.config import TENSOR_KINDS, ConfigLike, QuantConfig, as_config
from shiftadd.quant.functional import fake_quantize, quantize_grad
from shiftadd.quant.hooks import (
    KINDS, LayerTransform, attach, check_kinds, detach, is_conv_like, layer_kind, weight_param_names,
)
from shiftadd.utils import Patterns, name_matches

QUANTIZER_NAME = "quantizer"
SHARED_NAME = "shared_quantizer"


class LayerQuantizer(LayerTransform):
    """Quantizes one layer's weight, input, output error and weight gradient (see :class:`QuantConfig`).

    Stochastic rounding of weights/activations is used in training mode only (deterministic in eval).
    """

    priority = 20

    def __init__(self, config: QuantConfig, kind: str, conv_like: bool) -> None:
        super().__init__()
        self.config, self.kind = config, kind
        self.act_dim = 1 if conv_like else -1  # channel dim of inputs and output errors

    def _quantizes_weight(self) -> bool:
        return self.config.weight is not None and self.kind != "shift"

    def param_names(self, layer: nn.Module):
        if self._quantizes_weight() or self.config.weight_grad is not None:
            return weight_param_names(layer)
        return ()

    def transform_param(self, layer: nn.Module, name: str, p: torch.Tensor) -> torch.Tensor:
        p = quantize_grad(p, self.config.weight_grad, channel_dim=0)
        if self._quantizes_weight():
            spec = self.config.weight
            p = fake_quantize(p, spec, channel_dim=0, stochastic=spec.rounding == "stochastic" and self.training)
        return p

    def transform_input(self, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
        spec = self.config.activation
        if spec is None or not x.is_floating_point():
            return x
        return fake_quantize(x, spec, channel_dim=self.act_dim,
                             stochastic=spec.rounding == "stochastic" and self.training)

    def transform_output(self, layer: nn.Module, y: Any) -> Any:
        if isinstance(y, torch.Tensor) and y.is_floating_point():
            return quantize_grad(y, self.config.grad_output, channel_dim=self.act_dim)
        return y

    def extra_repr(self) -> str:
        parts = [f"{k}={getattr(self.config, k)}" for k in TENSOR_KINDS if getattr(self.config, k) is not None]
        if self.kind == "shift" and self.config.weight is not None:
            parts.append("weight: layer's own weight_bits")
        return ", ".join(parts)


def select_layers(model: nn.Module, layer_types: Sequence[str] = KINDS, include: Patterns = None,
                  exclude: Patterns = None) -> Dict[str, nn.Module]:
    """``{name: layer}`` of the adder/shift/conv/linear layers of ``model`` of the given kinds,
    filtered by fnmatch patterns on names (``include``/``exclude``)."""
    kinds = check_kinds(layer_types)
    out = {}
    for name, m in model.named_modules():
        k = layer_kind(m)
        if k is None or k not in kinds:
            continue
        if name_matches(name, include, exclude):
            out[name] = m
    return out


def _per_kind(config: Any) -> Dict[str, Optional[QuantConfig]]:
    """One QuantConfig (or None) per layer kind."""
    if isinstance(config, Mapping) and config and set(config) <= set(KINDS):
        return {k: as_config(config.get(k)) for k in KINDS}
    if isinstance(config, Mapping) and set(config) - set(TENSOR_KINDS):
        raise ValueError(f"config keys must be layer types {list(KINDS)} or tensor kinds {list(TENSOR_KINDS)}, "
                         f"got {sorted(config)}")
    c = as_config(config)
    return {k: c for k in KINDS}


def quantize_model(model: nn.Module, config: Union[ConfigLike, Mapping[str, ConfigLike]],
                   layer_types: Sequence[str] = KINDS, include: Patterns = None,
                   exclude: Patterns = None) -> Dict[str, QuantConfig]:
    """Attach fixed-point quantizers to ``model``'s layers, in place; returns ``{layer name: config}``.

    ``config``: a preset name (``"fix32"``, ``"fix16"``, ``"fix8"``, ``"fixN"``, ``"float"``), a
    :class:`QuantConfig`, or a dict ``{layer type: preset | QuantConfig | None}`` with layer types
    ``"adder"``, ``"shift"``, ``"conv"``, ``"linear"`` (types not named are left in float).
    ``layer_types``/``include``/``exclude`` restrict the layers further. Calling it again replaces
    the quantizers of the selected layers; a config that quantizes nothing removes them.
    """
    per_kind = _per_kind(config)
    done: Dict[str, QuantConfig] = {}
    for name, layer in select_layers(model, layer_types, include, exclude).items():
        kind = layer_kind(layer)
        cfg = per_kind[kind]
        if cfg is None or not cfg.enabled:
            detach(layer, QUANTIZER_NAME)
            continue
        if isinstance(layer._modules.get(SHARED_NAME), LayerTransform) and (cfg.weight or cfg.activation):
            raise ValueError(f"layer {name!r} already has a shared-scale quantizer; give adder layers a config "
                             "without weight/activation quantizers (backward only) or call dequantize_model first")
        attach(layer, QUANTIZER_NAME, LayerQuantizer(cfg, kind, is_conv_like(layer)))
        done[name] = cfg
    return done


def dequantize_model(model: nn.Module, shared: bool = True) -> int:
    """Remove every quantizer (and, with ``shared``, every shared-scale quantizer); returns how many."""
    n = 0
    for m in list(model.modules()):
        if layer_kind(m) is None:
            continue
        n += detach(m, QUANTIZER_NAME) is not None
        if shared:
            n += detach(m, SHARED_NAME) is not None
    return n


def quantized_layers(model: nn.Module) -> Dict[str, Dict[str, Any]]:
    """``{layer name: {"kind", "config" (QuantConfig or None), "shared_scale" (dict or None)}}``."""
    out = {}
    for name, m in model.named_modules():
        kind = layer_kind(m)
        if kind is None:
            continue
        q, s = m._modules.get(QUANTIZER_NAME), m._modules.get(SHARED_NAME)
        if q is None and s is None:
            continue
        out[name] = {"kind": kind, "config": getattr(q, "config", None),
                     "shared_scale": s.describe(m) if s is not None else None}
    return out
