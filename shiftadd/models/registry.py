"""Model registry: one builder per architecture, the operator family is a parameter.

Names are lowercase words joined by hyphens, a number written against the word it counts
(``resnet20``, ``vgg19-small``, ``mnist-cnn``, ``fe-net``). Older spellings stay usable as aliases, and
an underscore is read as a hyphen (``vgg_small`` is ``vgg-small``), so checkpoints that store an old
name still load.
"""
from __future__ import annotations

import inspect
import typing
from dataclasses import dataclass
from typing import Any, Callable, Dict, FrozenSet, List, Optional, Sequence, Tuple

import torch.nn as nn

from shiftadd.nn.families import family_names, get_family, known_options

Builder = Callable[..., nn.Module]

#: Builder parameters that are not architecture options (every builder takes them).
_FIXED_PARAMETERS = ("op", "num_classes")


@dataclass(frozen=True)
class ModelInfo:
    """What the registry knows about an architecture."""

    name: str
    #: Shape of one input sample without the batch: (C, H, W) for images, (C, L) for sequences.
    input_shape: Optional[Tuple[int, ...]]
    #: Options the builder takes besides ``op``/``num_classes`` (read from its signature and, for a
    #: ``**options`` builder, from the class it is annotated to return, including the operator families'
    #: layer options when that class forwards ``**layer_options``); None if they cannot be read.
    options: Optional[FrozenSet[str]]
    description: str
    aliases: Tuple[str, ...]
    #: The builder's default number of classes (``create()`` itself defaults to 10 for every model).
    num_classes: int
    paper: str = ""
    #: What the model does: "classification" (images/signals in, class logits out) or "translation"
    #: (token ids in, vocabulary logits out); selects the trainer's task.
    task: str = "classification"

    def accepts(self, option: str) -> bool:
        """True when the builder is known to take architecture option ``option``."""
        return self.options is not None and option in self.options


@dataclass(frozen=True)
class _Entry:
    builder: Builder
    input_shape: Optional[Tuple[int, ...]]
    description: str
    aliases: Tuple[str, ...]
    paper: str
    task: str


_MODELS: Dict[str, _Entry] = {}
_ALIASES: Dict[str, str] = {}


def register_model(name: str, *, input_shape: Optional[Sequence[int]] = None, description: str = "",
                   aliases: Sequence[str] = (), paper: str = "",
                   task: str = "classification") -> Callable[[Builder], Builder]:
    """Decorator: register ``builder(op=..., num_classes=..., **options)`` under ``name``.

    ``input_shape`` is one sample's shape (no batch); ``description`` defaults to the builder's
    docstring up to "Options:"; ``aliases`` are other names that resolve to this one; ``task`` is
    "classification" or "translation".
    """

    def deco(fn: Builder) -> Builder:
        for n in (name, *aliases):
            if n in _MODELS or n in _ALIASES:
                raise ValueError(f"model {n!r} is registered twice")
        shape = None if input_shape is None else tuple(int(s) for s in input_shape)
        _MODELS[name] = _Entry(fn, shape, description or _doc_summary(fn), tuple(aliases), paper, task)
        _ALIASES.update({a: name for a in aliases})
        return fn

    return deco


def list_models(task: Optional[str] = None) -> List[str]:
    """Canonical names of all registered architectures (of ``task``, if given), sorted (aliases:
    :func:`model_info`)."""
    _load_all()
    return sorted(n for n, e in _MODELS.items() if task is None or e.task == task)


def resolve_model_name(name: str) -> str:
    """The canonical name of ``name`` (a name, an alias, or either spelled with underscores)."""
    _load_all()
    for candidate in (name, str(name).lower().replace("_", "-")):
        if candidate in _MODELS:
            return candidate
        if candidate in _ALIASES:
            return _ALIASES[candidate]
    raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(sorted(_MODELS))}")


def model_info(name: str) -> ModelInfo:
    """Metadata of architecture ``name`` (aliases accepted)."""
    canonical = resolve_model_name(name)
    entry = _MODELS[canonical]
    num_classes = inspect.signature(entry.builder).parameters.get("num_classes")
    default = num_classes.default if num_classes is not None else inspect.Parameter.empty
    return ModelInfo(canonical, entry.input_shape, _builder_options(entry.builder), entry.description,
                     entry.aliases, default if isinstance(default, int) else 10, entry.paper, entry.task)


def create(name: str, op: str = "conv", num_classes: int = 10, pretrained: bool = False,
           **options: Any) -> nn.Module:
    """Build architecture ``name`` (aliases accepted) with operator family ``op``.

    ``pretrained=True`` loads the shipped (or ``$SHIFTADD_WEIGHTS``) weights of that architecture and
    family, SHA-256 checked (:mod:`shiftadd.models.pretrained`); the model is returned in eval mode.
    """
    canonical = resolve_model_name(name)
    get_family(op)
    if pretrained:
        from shiftadd.models.pretrained import find_pretrained, load_pretrained

        return load_pretrained(find_pretrained(canonical, op), **options)
    return _MODELS[canonical].builder(op=op, num_classes=num_classes, **options)


def data_options(name: str, in_channels: Optional[int] = None,
                 image_size: Optional[int] = None) -> Dict[str, int]:
    """``in_channels``/``image_size`` (those given) that architecture ``name``'s builder takes."""
    info = model_info(name)
    given = {"in_channels": in_channels, "image_size": image_size}
    return {k: v for k, v in given.items() if v is not None and info.accepts(k)}


def create_for_data(name: str, op: str = "conv", num_classes: int = 10, in_channels: Optional[int] = None,
                    image_size: Optional[int] = None, **options: Any) -> nn.Module:
    """:func:`create`, passing the data's ``in_channels``/``image_size`` only to builders that take them.

    The model is built once, so its weights equal those of
    ``create(name, op, num_classes, **data_options(name, in_channels, image_size), **options)`` under the
    same seed. A builder that only takes ``**options`` and returns no annotated class gets neither.
    """
    return create(name, op=op, num_classes=num_classes, **data_options(name, in_channels, image_size), **options)


def _builder_options(fn: Builder) -> Optional[FrozenSet[str]]:
    """Options read from ``fn``'s signature; a ``**options`` builder is followed to the class it returns."""
    params = inspect.signature(fn).parameters.values()
    names = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    if not any(p.kind is p.VAR_KEYWORD for p in params):
        return frozenset(names - set(_FIXED_PARAMETERS))
    try:
        returned = typing.get_type_hints(fn).get("return")
    except Exception:  # an annotation that does not resolve: options unknown
        returned = None
    if not inspect.isclass(returned):
        return None
    init = inspect.signature(returned.__init__).parameters.values()
    # Parameters without a default (``depth``, ``cfg``) are the builder's to give, not options.
    names |= {p.name for p in init if p.name != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
              and p.default is not p.empty}
    if any(p.kind is p.VAR_KEYWORD for p in init):
        names |= known_options()
    return frozenset(names - set(_FIXED_PARAMETERS))


def _doc_summary(fn: Builder) -> str:
    doc = " ".join((fn.__doc__ or "").split())
    return doc.split(" Options:")[0]


def __getattr__(name: str) -> Any:
    if name == "OPS":  # the registered operator families, read when asked
        return family_names()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _load_all() -> None:
    # Importing the package registers every architecture module it lists.
    import shiftadd.models  # noqa: F401
