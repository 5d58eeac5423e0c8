"""Modify a layer's computation from outside, without editing its class.

A :class:`LayerTransform` is a small child module attached to a layer (``layer.quantizer``,
``layer.pruning``, ...), so that its buffers are part of the layer's ``state_dict`` and it moves,
copies and prints with the model. Two module-level hooks run the attached transforms around
every forward call:

* before: every transform's ``begin(layer, x)`` sees the raw input; then each weight parameter
  (``weight``; ``shift``/``sign`` of DeepShift-PS layers; ``latent_weight`` of DeepShift-Q
  layers) is replaced *for the duration of the call* by ``transform_param(layer, name, p)``
  (the parameter itself stays a leaf, so its ``.grad``, optimizers and the adaptive learning
  rate work unchanged), and the input goes through ``transform_input``;
* after (also when forward raises): the parameters are put back and the output goes through
  ``transform_output``.

Transforms run in increasing ``priority`` (pruning masks 0, quantizers 10 and 20).
Because the hooks are plain functions and the state lives in child modules, models stay
deep-copyable and picklable.
"""
from __future__ import annotations

from typing import Any, List, Optional, Tuple

import torch
import torch.nn as nn

from shiftadd.nn import ADDER_TYPES, SHIFT_TYPES

KINDS = ("adder", "shift", "conv", "linear")
_CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def layer_kind(module: nn.Module) -> Optional[str]:
    """``"adder"``, ``"shift"``, ``"conv"``, ``"linear"`` for the layers quantization/pruning act on, else None.

    Shift-add layers are containers: their ``.shift`` and ``.adder`` children are the layers.
    """
    if isinstance(module, ADDER_TYPES):
        return "adder"
    if isinstance(module, SHIFT_TYPES):
        return "shift"
    if isinstance(module, _CONV_TYPES):
        return "conv"
    if isinstance(module, nn.Linear):
        return "linear"
    return None


def check_kinds(layer_types: Any) -> Tuple[str, ...]:
    """Validate a layer-type selection (a kind name or a sequence of them)."""
    kinds = (layer_types,) if isinstance(layer_types, str) else tuple(layer_types)
    bad = [k for k in kinds if k not in KINDS]
    if bad:
        raise ValueError(f"unknown layer type(s) {bad}; choose from {list(KINDS)}")
    return kinds


def weight_param_names(module: nn.Module) -> Tuple[str, ...]:
    """The parameters that make up a layer's weight."""
    if isinstance(module, SHIFT_TYPES):
        return ("shift", "sign") if module.mode == "ps" else ("latent_weight",)
    return ("weight",)


def is_conv_like(module: nn.Module) -> bool:
    """True for layers whose activations are (N, C, ...) (channel dim 1), False for linear layers."""
    return hasattr(module, "kernel_size")


class LayerTransform(nn.Module):
    """Base class of the transforms attached to a layer (see the module docstring)."""

    priority: int = 0

    def begin(self, layer: nn.Module, x: Optional[torch.Tensor]) -> None:
        """Called first, with the raw input (None when the layer got no positional tensor)."""

    def param_names(self, layer: nn.Module) -> Tuple[str, ...]:
        return ()

    def transform_param(self, layer: nn.Module, name: str, p: torch.Tensor) -> torch.Tensor:
        return p

    def transform_input(self, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return x

    def transform_output(self, layer: nn.Module, y: Any) -> Any:
        return y


def transforms(layer: nn.Module) -> List[LayerTransform]:
    """The transforms attached to ``layer``, in the order they run."""
    found = [m for m in layer._modules.values() if isinstance(m, LayerTransform)]
    return sorted(found, key=lambda t: t.priority)


def _restore(layer: nn.Module) -> None:
    saved = layer.__dict__.pop("_sa_saved", None)
    if saved:
        for name, p in saved.items():
            layer._parameters[name] = p


def _pre_hook(layer: nn.Module, args: Tuple[Any, ...]) -> Optional[Tuple[Any, ...]]:
    ts = transforms(layer)
    if not ts:
        return None
    _restore(layer)  # a previous call that raised inside a hook
    saved = {}
    layer.__dict__["_sa_saved"] = saved
    try:
        x0 = args[0] if args and isinstance(args[0], torch.Tensor) else None
        for t in ts:
            t.begin(layer, x0)
        for t in ts:
            for name in t.param_names(layer):
                p = layer._parameters[name]
                saved.setdefault(name, p)
                layer._parameters[name] = t.transform_param(layer, name, p)
        if x0 is not None:
            x = x0
            for t in ts:
                x = t.transform_input(layer, x)
            return (x,) + tuple(args[1:])
    except BaseException:
        _restore(layer)
        raise
    return None


def _post_hook(layer: nn.Module, args: Tuple[Any, ...], output: Any) -> Any:
    _restore(layer)
    if output is None:  # forward raised
        return None
    for t in transforms(layer):
        output = t.transform_output(layer, output)
    return output


def _hooked(layer: nn.Module) -> bool:
    return any(h is _pre_hook for h in layer._forward_pre_hooks.values())


def attach(layer: nn.Module, name: str, transform: LayerTransform) -> LayerTransform:
    """Attach ``transform`` to ``layer`` as child ``name`` (replacing one already there)."""
    existing = layer._modules.get(name)
    if existing is None and hasattr(layer, name):
        raise ValueError(f"{type(layer).__name__} already has an attribute {name!r}")
    if existing is not None and not isinstance(existing, LayerTransform):
        raise ValueError(f"{type(layer).__name__}.{name} is a {type(existing).__name__}, not a transform")
    layer.add_module(name, transform)
    if not _hooked(layer):
        layer.register_forward_pre_hook(_pre_hook)
        layer.register_forward_hook(_post_hook, always_call=True)
    return transform


def detach(layer: nn.Module, name: str) -> Optional[LayerTransform]:
    """Remove transform ``name`` from ``layer``; the hooks go when no transform is left."""
    t = layer._modules.get(name)
    if not isinstance(t, LayerTransform):
        return None
    del layer._modules[name]
    if not transforms(layer):
        for key in [k for k, h in layer._forward_pre_hooks.items() if h is _pre_hook]:
            del layer._forward_pre_hooks[key]
        for key in [k for k, h in layer._forward_hooks.items() if h is _post_hook]:
            del layer._forward_hooks[key]
            getattr(layer, "_forward_hooks_always_called", {}).pop(key, None)
    return t
