"""Model registry: one builder per architecture, the operator family is a parameter."""
from __future__ import annotations

from typing import Callable, Dict, List

import torch.nn as nn

from shiftadd.nn.factory import OPS

_MODELS: Dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator: register ``builder(op=..., num_classes=..., **options)`` under ``name``."""

    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _MODELS:
            raise ValueError(f"model {name!r} is registered twice")
        _MODELS[name] = fn
        return fn

    return deco


def list_models() -> List[str]:
    """Names of all registered architectures, sorted."""
    _load_all()
    return sorted(_MODELS)


def create(name: str, op: str = "conv", num_classes: int = 10, **options) -> nn.Module:
    """Build architecture ``name`` with operator family ``op``."""
    _load_all()
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(sorted(_MODELS))}")
    if op not in OPS:
        raise ValueError(f"unknown op {op!r}; choose one of: {', '.join(OPS)}")
    return _MODELS[name](op=op, num_classes=num_classes, **options)


def _load_all() -> None:
    # Importing the package registers every architecture module it lists.
    import shiftadd.models  # noqa: F401
