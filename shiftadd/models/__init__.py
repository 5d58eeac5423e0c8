"""Model zoo: ``create(name, op=...)`` and ``list_models()``."""
from shiftadd.models.registry import OPS, create, list_models, register_model

__all__ = ["OPS", "create", "list_models", "register_model"]
