"""Model zoo: ``create(name, op=...)``, ``list_models()`` and ``model_info(name)``."""
from typing import Any

from shiftadd.models.registry import (
    ModelInfo, create, create_for_data, data_options, list_models, model_info, register_model, resolve_model_name,
)

# Architecture modules register themselves on import.
from shiftadd.models import har, hybrid, mnist, resnet, shiftnet, transformer, vgg  # noqa: E402,F401

__all__ = ["OPS", "ModelInfo", "create", "create_for_data", "data_options", "list_models", "model_info",
           "register_model", "resolve_model_name"]


def __getattr__(name: str) -> Any:
    if name == "OPS":  # the registered operator families, read when asked
        from shiftadd.nn.families import family_names

        return family_names()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
