"""Model zoo: ``create(name, op=...)`` and ``list_models()``."""
from shiftadd.models.registry import OPS, create, list_models, register_model

# Architecture modules register themselves on import.
from shiftadd.models import har, hybrid, mnist, resnet, shiftnet, vgg  # noqa: E402,F401

__all__ = ["OPS", "create", "list_models", "register_model"]
