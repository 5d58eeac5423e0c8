"""Training configuration: a validated dataclass, the papers' named recipes and YAML loading.

A configuration is resolved in layers: the dataclass defaults, then the chosen recipe, then a
YAML file (``--config``), then explicit command-line flags. Every layer is checked; an unknown
key is rejected with its name.
"""
from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional

from shiftadd.errors import CheckpointError, UserError

OPTIMIZERS = ("sgd", "adam", "radam")
SCHEDULES = ("cosine", "step", "constant", "inverse_sqrt")
#: Mixed-precision modes of the trainer: off (float32), bf16 or fp16 autocast (fp16 with a gradient scaler).
AMP_MODES = ("off", "bf16", "fp16")


@dataclass
class TrainConfig:
    """Everything that defines a training run (saved in every checkpoint)."""

    # what to train
    task: str = "classification"  # a task registered in shiftadd.train.task (what the loop trains on)
    model: str = "resnet20"
    op: str = "conv"
    model_options: Dict[str, Any] = field(default_factory=dict)
    # data
    dataset: str = "cifar10"
    data_dir: Optional[str] = None
    subset: Optional[int] = None  # class-balanced subset of the training split
    test_subset: Optional[int] = None  # class-balanced subset of the test split (quicker evaluation)
    val_split: Optional[int] = None  # hold out this many training images (class-balanced) for validation:
    # per-epoch evaluation and model selection then use them, the test split only at the end
    augment: Optional[bool] = None  # None: the data set's default (crop+flip for CIFAR, none otherwise)
    # recipe / optimisation
    recipe: str = "shiftaddnet"
    epochs: int = 160
    batch_size: int = 256  # global batch, split over data-parallel processes
    test_batch_size: int = 500
    optimizer: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 1e-4
    schedule: str = "step"
    milestones: List[float] = field(default_factory=lambda: [0.5, 0.75])  # fractions of `epochs`
    gamma: float = 0.1
    warmup_epochs: int = 0
    adaptive_eta: Optional[float] = 0.2  # AdderNet adaptive LR for adder layers; None/0 turns it off
    shift_param_groups: bool = False  # DeepShift: shift & sign parameters in their own group, no decay
    shift_lr: Optional[float] = None  # learning rate of that group (None: lr); setting it creates the group
    bn_recalibration: Optional[int] = None  # images used to re-estimate BatchNorm statistics before each
    # evaluation; None: 1024 when the model has adder layers, else 0 (off)
    label_smoothing: float = 0.0
    # compression (shiftadd.train.compress): fixed point, pruning, freezing, fine-tuning
    quant: Optional[str] = None  # fixed-point QAT preset: fix32, fix16, fix8 (n-bit forward, 8-bit backward), fixN
    quant_types: List[str] = field(default_factory=lambda: ["adder", "shift", "conv", "linear"])
    init_from: Optional[str] = None  # start from the weights (and pruning masks) of this run
    prune: Optional[float] = None  # prune this fraction of the weights before training
    prune_method: str = "magnitude"  # magnitude | random
    prune_scope: str = "global"  # global (one threshold per layer type) | layer
    prune_types: List[str] = field(default_factory=lambda: ["adder", "shift"])
    freeze: List[str] = field(default_factory=list)  # "sign" and/or "shift" of bit-shift layers (DeepShift)
    grad_clip: Optional[float] = None
    max_loss: float = 1e4  # a loss above this (or NaN/inf) stops training
    adam_betas: List[float] = field(default_factory=lambda: [0.9, 0.999])  # Adam/RAdam (beta1, beta2)
    warmup_steps: int = 4000  # schedule "inverse_sqrt": linear warm-up over these optimizer steps, then 1/sqrt
    # translation (task "translation", shiftadd.train.translation)
    src_lang: str = "en"
    tgt_lang: str = "de"
    vocab_size: int = 8000  # joint SentencePiece vocabulary (an upper bound for small corpora)
    max_tokens: int = 4096  # padded tokens per side of a training batch (replaces batch_size)
    beam: int = 5  # beam width of the final test BLEU (per-epoch validation BLEU decodes greedily)
    length_penalty: float = 1.0  # beam search: score / length ** length_penalty
    # run
    seed: int = 0
    device: str = "auto"
    amp: str = "off"  # mixed precision: off | bf16 | fp16 (forward and loss under torch.autocast; fp16 also
    # scales the loss with torch.amp.GradScaler). Adder layers compute in float32 either way.
    workers: int = 0  # background threads preparing batches (0: in the training thread)
    threads: Optional[int] = None  # torch.set_num_threads
    tensorboard: bool = False
    progress: bool = True
    sync_batchnorm: bool = True  # synchronise BatchNorm statistics across data-parallel processes

    def validate(self) -> "TrainConfig":
        """Check ranges and choices; raise :class:`UserError` naming the bad field."""
        from shiftadd.models import OPS, resolve_model_name

        try:
            resolve_model_name(self.model)  # an old name (alias) of a checkpoint is fine
        except ValueError as exc:
            raise UserError(str(exc)) from None
        if self.op not in OPS:
            raise UserError(f"unknown op {self.op!r}; choose one of: {', '.join(OPS)}")
        if self.recipe not in RECIPES:
            raise UserError(f"unknown recipe {self.recipe!r}; choose one of: {', '.join(RECIPES)}")
        if self.optimizer not in OPTIMIZERS:
            raise UserError(f"unknown optimizer {self.optimizer!r}; choose one of: {', '.join(OPTIMIZERS)}")
        if self.schedule not in SCHEDULES:
            raise UserError(f"unknown schedule {self.schedule!r}; choose one of: {', '.join(SCHEDULES)}")
        for name in ("epochs", "batch_size", "test_batch_size"):
            if getattr(self, name) < 1:
                raise UserError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("subset", "test_subset", "val_split"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise UserError(f"{name} must be >= 1, got {v}")
        for name in ("lr", "max_loss"):
            v = getattr(self, name)
            if not (v > 0 and math.isfinite(v)):
                raise UserError(f"{name} must be a positive number, got {v}")
        for name in ("momentum", "weight_decay", "label_smoothing"):
            v = getattr(self, name)
            if not (0 <= v < math.inf):
                raise UserError(f"{name} must be >= 0, got {v}")
        if self.momentum >= 1 and self.optimizer == "sgd":
            raise UserError(f"momentum must be < 1, got {self.momentum}")
        if self.label_smoothing >= 1:
            raise UserError(f"label_smoothing must be < 1, got {self.label_smoothing}")
        if not 0 < self.gamma <= 1:
            raise UserError(f"gamma must be in (0, 1], got {self.gamma}")
        if any(not (0 < m < 1) for m in self.milestones):
            raise UserError(f"milestones are fractions of the epochs, each in (0, 1); got {self.milestones}")
        if self.warmup_epochs < 0 or (self.warmup_epochs > 0 and self.warmup_epochs >= self.epochs):
            raise UserError(f"warmup_epochs must be in [0, epochs), got {self.warmup_epochs}")
        if self.adaptive_eta is not None and not (0 <= self.adaptive_eta < math.inf):
            raise UserError(f"adaptive_eta must be >= 0 (0 or null turns it off), got {self.adaptive_eta}")
        if self.shift_lr is not None and not self.shift_lr > 0:
            raise UserError(f"shift_lr must be > 0, got {self.shift_lr}")
        if self.bn_recalibration is not None and self.bn_recalibration < 0:
            raise UserError(f"bn_recalibration must be >= 0 images, got {self.bn_recalibration}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise UserError(f"grad_clip must be > 0, got {self.grad_clip}")
        if self.workers < 0:
            raise UserError(f"workers must be >= 0, got {self.workers}")
        if self.threads is not None and self.threads < 1:
            raise UserError(f"threads must be >= 1, got {self.threads}")
        if self.amp not in AMP_MODES:
            raise UserError(f"unknown amp {self.amp!r}; choose one of: {', '.join(AMP_MODES)}")
        if self.amp != "off" and self.quant is not None:
            raise UserError(f"amp {self.amp} cannot be combined with fixed-point training (quant {self.quant}): "
                            "it simulates its own number format in float32; use --amp off")
        self._validate_compression()
        self._validate_translation()
        if not isinstance(self.model_options, dict):
            raise UserError("model_options must be a mapping of option names to values")
        dev = self.device
        if not (dev in ("auto", "cpu", "cuda", "mps") or dev.startswith("cuda:")):
            raise UserError(f"unknown device {dev!r}; use auto, cpu, cuda or cuda:N")
        return self

    def _validate_translation(self) -> None:
        if len(self.adam_betas) != 2 or not all(0 <= b < 1 for b in self.adam_betas):
            raise UserError(f"adam_betas must be two numbers in [0, 1), got {self.adam_betas}")
        for name in ("warmup_steps", "vocab_size", "max_tokens", "beam"):
            if getattr(self, name) < (0 if name == "warmup_steps" else 1):
                raise UserError(f"{name} must be >= {0 if name == 'warmup_steps' else 1}, got {getattr(self, name)}")
        if not (self.length_penalty >= 0 and math.isfinite(self.length_penalty)):
            raise UserError(f"length_penalty must be >= 0, got {self.length_penalty}")
        if self.task == "translation":
            if self.dataset != "multi30k":
                raise UserError(f"the translation task trains on dataset 'multi30k' (any folder with its layout "
                                f"via --data-dir), got {self.dataset!r}")
            if self.src_lang == self.tgt_lang:
                raise UserError(f"src_lang and tgt_lang are both {self.src_lang!r}; choose two languages "
                                "(Multi30k: en, de, fr)")

    def _validate_compression(self) -> None:
        from shiftadd.prune import METHODS, SCOPES
        from shiftadd.quant import KINDS, preset

        if self.quant is not None:
            try:
                preset(self.quant)
            except ValueError as exc:
                raise UserError(f"quant: {exc}") from None
        if self.prune is not None and not 0 <= self.prune < 1:
            raise UserError(f"prune is the fraction of weights to prune, in [0, 1); got {self.prune}")
        if self.prune_method not in METHODS:
            raise UserError(f"unknown prune_method {self.prune_method!r}; choose one of: {', '.join(METHODS)}")
        if self.prune_scope not in SCOPES:
            raise UserError(f"unknown prune_scope {self.prune_scope!r}; choose one of: {', '.join(SCOPES)}")
        for name in ("quant_types", "prune_types"):
            bad = [k for k in getattr(self, name) if k not in KINDS]
            if bad or not getattr(self, name):
                raise UserError(f"{name} must list layer types from {', '.join(KINDS)}; got {getattr(self, name)}")
        bad = [k for k in self.freeze if k not in ("sign", "shift")]
        if bad:
            raise UserError(f"freeze takes 'sign' and/or 'shift', got {bad[0]!r}")

    def to_dict(self) -> Dict[str, Any]:
        """A JSON-serialisable dict of every field."""
        return dataclasses.asdict(self)


#: The papers' recipes. Each entry overrides TrainConfig defaults; every field stays overridable.
RECIPES: Dict[str, Dict[str, Any]] = {
    # AdderNet (Chen et al., CVPR 2020): SGD(momentum 0.9), lr 0.1 with a cosine schedule,
    # weight decay 5e-4, batch 256, adaptive learning rate eta = 0.2 (Eq. 8); 400 epochs on CIFAR.
    "addernet": dict(optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=5e-4, schedule="cosine",
                     batch_size=256, epochs=400, adaptive_eta=0.2, shift_param_groups=False),
    # ShiftAddNet (You et al., NeurIPS 2020): SGD momentum 0.9, lr 0.1 divided by 10 at epochs 80
    # and 120 of 160, weight decay 1e-4, batch 256.
    "shiftaddnet": dict(optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=1e-4, schedule="step",
                        milestones=[0.5, 0.75], gamma=0.1, batch_size=256, epochs=160, adaptive_eta=0.2,
                        shift_param_groups=False),
    # DeepShift (Elhoushi et al., 2021; CIFAR script): SGD momentum 0.9, lr 0.1, weight decay 1e-4,
    # batch 128, 200 epochs with step decay; the shift and sign parameters of DeepShift-PS layers
    # get their own parameter group without weight decay. Set optimizer: radam for DeepShift-PS.
    "deepshift": dict(optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=1e-4, schedule="step",
                      milestones=[0.5, 0.75], gamma=0.1, batch_size=128, epochs=200, adaptive_eta=0.2,
                      shift_param_groups=True),
    # Few-epoch CIFAR recipe of this library (docs/results.md): SGD with Nesterov momentum, batch 128,
    # one warm-up epoch then cosine decay, weight decay 5e-4; adder layers keep the adaptive LR, DeepShift-PS
    # shift/sign parameters their own group. Meant for 1/4 of the papers' epochs (40 for conv/shift/shiftadd,
    # 100 for AdderNet's 400): pass --epochs.
    "cifar-fast": dict(optimizer="sgd", lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4, schedule="cosine",
                       warmup_epochs=1, batch_size=128, epochs=40, adaptive_eta=0.2, shift_param_groups=True),
    # Transformer for translation (Vaswani et al. 2017, Sec. 5.3-5.4): Adam (0.9, 0.98), linear warm-up then
    # inverse-square-root decay per step, label smoothing 0.1; token batches (max_tokens) on Multi30k. The peak
    # lr and the short warm-up suit Multi30k's ~100 batches of 4,096 tokens per epoch. Adder layers keep the
    # adaptive LR.
    "transformer": dict(task="translation", dataset="multi30k", model="transformer-seq", optimizer="adam",
                        adam_betas=[0.9, 0.98], lr=1e-3, weight_decay=0.0, schedule="inverse_sqrt",
                        warmup_steps=400, label_smoothing=0.1, max_tokens=4096, epochs=30, adaptive_eta=0.2,
                        shift_param_groups=False),
}

#: The recipe a task trains with when none is named.
DEFAULT_RECIPES: Dict[str, str] = {"translation": "transformer"}

_FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}


def _coerce(name: str, value: Any) -> Any:
    """Check/convert one value against the field's declared type; raise UserError otherwise."""
    f = _FIELDS[name]
    t = f.type if isinstance(f.type, str) else str(f.type)
    optional = t.startswith("Optional[")
    base = t[len("Optional["):-1] if optional else t
    if value is None:
        if optional:
            return None
        raise UserError(f"{name} must not be null")
    if base == "bool":
        if isinstance(value, bool):
            return value
        raise UserError(f"{name} must be true or false, got {value!r}")
    if base == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise UserError(f"{name} must be an integer, got {value!r}")
        return value
    if base == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(f"{name} must be a number, got {value!r}")
        return float(value)
    if base == "str":
        if not isinstance(value, str):
            raise UserError(f"{name} must be a string, got {value!r}")
        return value
    if base.startswith("List[float]"):
        if not isinstance(value, (list, tuple)) or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
            raise UserError(f"{name} must be a list of numbers, got {value!r}")
        return [float(v) for v in value]
    if base.startswith("List[str]"):
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise UserError(f"{name} must be a list of names, got {value!r}")
        return list(value)
    if base.startswith("Dict"):
        if not isinstance(value, Mapping):
            raise UserError(f"{name} must be a mapping, got {value!r}")
        return dict(value)
    return value


def coerce_values(values: Mapping[str, Any]) -> Dict[str, Any]:
    """``values`` checked and converted field by field (unknown names and bad types raise UserError)."""
    unknown = sorted(set(values) - set(_FIELDS))
    if unknown:
        raise UserError(f"unknown configuration key {unknown[0]!r}; known keys: {', '.join(sorted(_FIELDS))}")
    return {k: _coerce(k, v) for k, v in values.items()}


def make_config(recipe: Optional[str] = None, overrides: Optional[Mapping[str, Any]] = None,
                **kwargs: Any) -> TrainConfig:
    """Build a validated :class:`TrainConfig`: defaults, then ``recipe``, then overrides.

    ``overrides`` (and keyword arguments) may name any field; unknown names raise UserError.
    """
    values: Dict[str, Any] = {}
    values.update(overrides or {})
    values.update(kwargs)
    recipe = recipe or values.get("recipe") or DEFAULT_RECIPES.get(values.get("task"), TrainConfig.recipe)
    if recipe not in RECIPES:
        raise UserError(f"unknown recipe {recipe!r}; choose one of: {', '.join(RECIPES)}")
    unknown = sorted(set(values) - set(_FIELDS))
    if unknown:
        raise UserError(f"unknown configuration key {unknown[0]!r}; known keys: {', '.join(sorted(_FIELDS))}")
    merged: Dict[str, Any] = dict(RECIPES[recipe])
    merged.update(values)
    merged["recipe"] = recipe
    checked = {k: _coerce(k, v) for k, v in merged.items()}
    return TrainConfig(**checked).validate()


def load_config_file(path: str) -> Dict[str, Any]:
    """Read a YAML (or JSON) file of configuration overrides; checked key by key.

    A ``config`` block nested under the top-level key ``train`` is accepted too.
    """
    import yaml

    if not os.path.isfile(path):
        raise UserError(f"config file not found: {path}")
    try:
        with open(path, "r", encoding="utf-8") as fh:
            data = yaml.safe_load(fh)
    except yaml.YAMLError as exc:
        line = getattr(getattr(exc, "problem_mark", None), "line", None)
        where = f" (line {line + 1})" if line is not None else ""
        raise UserError(f"config file {path} is not valid YAML{where}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read config file {path}: {exc}") from None
    if data is None:
        return {}
    if isinstance(data, dict) and set(data) == {"train"} and isinstance(data["train"], dict):
        data = data["train"]
    if not isinstance(data, dict):
        raise UserError(f"config file {path} must contain a mapping of keys to values")
    unknown = sorted(str(k) for k in data if k not in _FIELDS)
    if unknown:
        raise UserError(f"config file {path}: unknown key {unknown[0]!r}")
    return {k: _coerce(k, v) for k, v in data.items()}


def config_from_dict(data: Mapping[str, Any]) -> TrainConfig:
    """Rebuild a configuration saved in a checkpoint (keys must all be known)."""
    unknown = sorted(set(data) - set(_FIELDS))
    if unknown:
        raise CheckpointError(f"checkpoint configuration has unknown key {unknown[0]!r}")
    return TrainConfig(**{k: _coerce(k, v) for k, v in data.items()}).validate()
