"""Pretrained weights: safetensors files with a model card, checked by SHA-256, never unpickled.

A pretrained entry ``NAME`` is two files in a weights folder:

* ``NAME.safetensors``: the model's ``state_dict`` (raw tensors only);
* ``NAME.json``: its model card — architecture, operator family, options, recipe, the command that
  trained it, epochs, wall time, accuracy, energy per image, date, the SHA-256 of the tensor file,
  and a reference-logits record used to check a load end to end.

Folders searched, first match wins: ``$SHIFTADD_WEIGHTS`` (``os.pathsep``-separated), then the
``weights/`` folder shipped inside the package.
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from shiftadd.errors import CheckpointError, UserError
from shiftadd.paths import umask_mode
from shiftadd.utils import sha256_file

CARD_FORMAT = "shiftadd-model-card"
CARD_VERSION = 1
PACKAGE_WEIGHTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "weights")
ENV_VAR = "SHIFTADD_WEIGHTS"


@dataclass
class ModelCard:
    """What a pretrained weight file is, how it was made and how good it is (all measured)."""

    name: str
    model: str
    op: str
    num_classes: int
    dataset: str
    sha256: str
    model_options: Dict[str, Any] = field(default_factory=dict)
    recipe: Optional[str] = None
    command: Optional[str] = None
    epochs: Optional[float] = None
    wall_time_s: Optional[float] = None
    val_acc: Optional[float] = None
    test_acc: Optional[float] = None
    test_images: Optional[int] = None
    check: Dict[str, Any] = field(default_factory=dict)  # {"dataset", "data_dir", "images", "acc"}: a quick
    # re-measurable accuracy (CIFAR: the embedded test subset; MNIST: the shared mnist10k test split)
    energy_uj_per_image: Optional[float] = None
    energy_setting: Optional[str] = None  # e.g. "asic45nm fp32 inference"
    int8_test_acc: Optional[float] = None  # shared-scale 8-bit adder quantization, where it applies
    date: Optional[str] = None
    notes: str = ""
    reference: Dict[str, Any] = field(default_factory=dict)  # {"input": "...", "logits": [[...]]}

    REQUIRED = ("name", "model", "op", "num_classes", "dataset", "sha256")

    def to_json(self) -> Dict[str, Any]:
        return {"format": CARD_FORMAT, "version": CARD_VERSION, **dataclasses.asdict(self)}

    @classmethod
    def from_json(cls, data: Dict[str, Any], path: str) -> "ModelCard":
        if not isinstance(data, dict) or data.get("format") != CARD_FORMAT:
            raise CheckpointError(f"{path} is not a shiftadd model card (format {CARD_FORMAT!r} expected)")
        missing = [k for k in cls.REQUIRED if k not in data]
        if missing:
            raise CheckpointError(f"model card {path} lacks the field(s) {', '.join(missing)}")
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def weight_dirs() -> List[str]:
    """The folders searched for pretrained weights, in order."""
    env = [d for d in os.environ.get(ENV_VAR, "").split(os.pathsep) if d]
    return env + [PACKAGE_WEIGHTS]


def _card_path(name: str) -> str:
    for d in weight_dirs():
        p = os.path.join(d, f"{name}.json")
        if os.path.isfile(p):
            return p
    known = ", ".join(list_pretrained()) or "none installed"
    raise UserError(f"no pretrained weights named {name!r} (searched {', '.join(weight_dirs())}); "
                    f"available: {known}")


def list_pretrained() -> List[str]:
    """Names of every pretrained entry found in :func:`weight_dirs`."""
    names = set()
    for d in weight_dirs():
        if os.path.isdir(d):
            names.update(f[:-5] for f in os.listdir(d) if f.endswith(".json"))
    return sorted(names)


def load_card(name: str) -> ModelCard:
    """The model card of pretrained entry ``name``."""
    path = _card_path(name)
    try:
        with open(path, "r", encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"cannot read model card {path}: {exc}") from None
    return ModelCard.from_json(data, path)


def load_state_dict(name: str) -> Tuple[ModelCard, Dict[str, torch.Tensor]]:
    """(card, tensors) of ``name``; the tensor file's SHA-256 must match the card."""
    from safetensors.torch import load_file

    card = load_card(name)
    path = _card_path(name)[:-5] + ".safetensors"
    if not os.path.isfile(path):
        raise CheckpointError(f"pretrained weights {name!r}: tensor file {path} is missing")
    digest = sha256_file(path)
    if digest != card.sha256:
        raise CheckpointError(f"pretrained weights {name!r}: {path} is corrupt or altered "
                              f"(SHA-256 {digest[:12]}..., card says {card.sha256[:12]}...)")
    return card, load_file(path, device="cpu")


def find_pretrained(model: str, op: str) -> str:
    """The pretrained entry for architecture ``model`` with operator family ``op``."""
    matches = [n for n in list_pretrained() if _matches(n, model, op)]
    if not matches:
        raise UserError(f"no pretrained weights for model {model!r} with op {op!r}; "
                        f"available: {', '.join(list_pretrained()) or 'none installed'}")
    return matches[0]


def _matches(name: str, model: str, op: str) -> bool:
    try:
        card = load_card(name)
    except (UserError, CheckpointError):
        return False
    return card.model == model and card.op == op


def load_pretrained(name: str, **overrides: Any) -> nn.Module:
    """Build the model a card describes and load its checked weights (strict)."""
    from shiftadd.models.registry import create

    card, tensors = load_state_dict(name)
    options = {**card.model_options, **overrides}
    model = create(card.model, op=card.op, num_classes=card.num_classes, **options)
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise CheckpointError(f"pretrained weights {name!r} do not fit {card.model}/{card.op}: {first}") from None
    return model.eval()


def save_pretrained(model: nn.Module, out_dir: str, card: ModelCard,
                    reference_input: Optional[torch.Tensor] = None, reference_desc: str = "") -> ModelCard:
    """Write ``model``'s weights and ``card`` (SHA-256 and reference logits filled in) atomically."""
    from safetensors.torch import save_file

    os.makedirs(out_dir, exist_ok=True)
    tensor_path = os.path.join(out_dir, f"{card.name}.safetensors")
    tmp = tensor_path + ".tmp"
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, tmp)
    os.chmod(tmp, umask_mode())  # safetensors creates 0600; shipped weights must be readable by all
    os.replace(tmp, tensor_path)
    card.sha256 = sha256_file(tensor_path)
    if reference_input is not None:
        was_training = model.training
        model.eval()
        with torch.no_grad():
            logits = model(reference_input).float()
        model.train(was_training)
        card.reference = {"input": reference_desc, "logits": [[round(float(v), 5) for v in row] for row in logits]}
    card_path = os.path.join(out_dir, f"{card.name}.json")
    with open(card_path + ".tmp", "w", encoding="utf-8") as fh:
        json.dump(card.to_json(), fh, indent=2)
        fh.write("\n")
    os.replace(card_path + ".tmp", card_path)
    return card


__all__: Sequence[str] = (
    "ModelCard", "weight_dirs", "list_pretrained", "load_card", "load_state_dict", "find_pretrained",
    "load_pretrained", "save_pretrained",
)
