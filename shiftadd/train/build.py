"""Building a run's parts: seeding, the device, the model, the optimizer and the learning-rate schedule."""
from __future__ import annotations

import contextlib
import math
import random
from typing import Any, ContextManager, Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn as nn

from shiftadd.errors import CheckpointError, UserError
from shiftadd.train.config import TrainConfig


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cuda`` -> the local rank's GPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError(f"device {name!r} requested but CUDA is not available; use --device cpu "
                            "(a run trained on a GPU continues on CPU with --resume OUT --device cpu)")
        if name == "cuda":
            name = f"cuda:{local_rank}"
        idx = int(name.split(":")[1])
        if idx >= torch.cuda.device_count():
            raise UserError(f"device {name!r} does not exist ({torch.cuda.device_count()} GPUs)")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UserError("device 'mps' requested but it is not available")
    try:
        return torch.device(name)
    except (RuntimeError, ValueError):
        raise UserError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps") from None


AMP_DTYPES: Dict[str, torch.dtype] = {"bf16": torch.bfloat16, "fp16": torch.float16}


def amp_context(amp: str, device: torch.device) -> ContextManager:
    """The context of a training step's forward and loss: ``torch.autocast(device.type, dtype)`` for
    ``amp`` bf16/fp16 (adder layers still compute in float32 inside it), a no-op for ``off``."""
    if amp == "off":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=AMP_DTYPES[amp])


def check_amp(amp: str, device: torch.device) -> None:
    """Raise UserError when this PyTorch cannot autocast to ``amp`` on ``device`` (one line, before any work)."""
    if amp == "off":
        return
    available = getattr(torch.amp, "is_autocast_available", None)
    if callable(available) and not available(device.type):
        raise UserError(f"--amp {amp}: PyTorch {torch.__version__} has no autocast on device {device.type!r}; "
                        "use --amp off")
    if amp == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise UserError(f"--amp bf16: GPU {torch.cuda.get_device_name(device)} does not support bfloat16; "
                        "use --amp fp16 or off")


def make_grad_scaler(amp: str, device: torch.device) -> Optional["torch.amp.GradScaler"]:
    """A ``torch.amp.GradScaler`` for fp16 (float16 gradients underflow without loss scaling), else None
    (bfloat16 has float32's exponent range). UserError when this PyTorch has no scaler for the device."""
    if amp != "fp16":
        return None
    try:
        return torch.amp.GradScaler(device.type)
    except (AttributeError, RuntimeError, TypeError, ValueError) as exc:
        raise UserError(f"--amp fp16: PyTorch {torch.__version__} cannot scale float16 gradients on "
                        f"{device.type} ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); "
                        "use --amp bf16 or off") from None


def saved_model_build(meta: Dict[str, Any]) -> Dict[str, Any]:
    """The model description a checkpoint's weights were saved from (``{}`` for old checkpoints);
    raise CheckpointError when its configuration names another model or op than those weights."""
    from shiftadd.models import resolve_model_name

    mb = meta.get("model_build") or {}
    config = meta.get("config") or {}
    if mb and config:
        def canonical(field: str, value: Any) -> Any:
            try:
                return resolve_model_name(str(value)) if field == "model" else value
            except ValueError:
                return value

        for key, field in (("name", "model"), ("op", "op")):
            if field in config and canonical(field, config[field]) != canonical(field, mb.get(key)):
                raise CheckpointError(
                    f"checkpoint is inconsistent: its configuration names {field} {config[field]!r} but its weights "
                    f"are of {field} {mb.get(key)!r}; the checkpoint.json was edited or mixed with another run's")
    return mb


#: value types of the common architecture/layer options (-O KEY=VALUE), checked before building
OPTION_TYPES: Dict[str, type] = {"keep_first_last": bool, "weight_bits": int, "activation_bits": int,
                                 "expansion": int, "hidden": int, "grad_mode": str, "rounding": str, "eta": float}


def check_option_types(options: Dict[str, Any]) -> None:
    """Raise UserError when a known option has a value of the wrong type (``weight_bits=abc``, ``keep_first_last=maybe``)."""
    for key, value in options.items():
        want = OPTION_TYPES.get(key)
        if want is None:
            continue
        ok = isinstance(value, want) and not (want is not bool and isinstance(value, bool))
        if want is float:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not ok:
            example = {bool: "true or false", int: "an integer", float: "a number", str: "a name"}[want]
            raise UserError(f"-O {key}={value!r}: expected {example}")


def build_model(name: str, op: str, num_classes: Optional[int], options: Dict[str, Any],
                in_channels: Optional[int] = None, image_size: Optional[int] = None,
                from_data: Optional[Dict[str, Any]] = None) -> Tuple[nn.Module, Dict[str, Any]]:
    """Create a zoo model; ``in_channels``/``image_size`` go to the architectures whose builder takes them
    (read from the model registry's metadata, so the model is built exactly once). ``from_data``: other
    options that come from the data (e.g. a translation model's ``vocab_size``); explicit options win.

    Returns the model and the exact options used (saved in checkpoints to rebuild it).
    """
    from shiftadd.models import create, data_options

    opts = {**(from_data or {}), **options}
    check_option_types(opts)
    try:
        data = data_options(name, None if "in_channels" in opts else in_channels,
                            None if "image_size" in opts else image_size)
        model = create(name, op=op, num_classes=num_classes, **opts, **data)
    except (TypeError, ValueError) as exc:
        raise UserError(f"cannot build model {name!r} with op {op!r}: {exc}") from None
    opts.update(data)
    return model, opts


def shift_sign_parameters(model: nn.Module) -> List[nn.Parameter]:
    """The ``shift`` and ``sign`` parameters of every DeepShift-PS layer (incl. inside shift-add layers)."""
    from shiftadd.nn import SHIFT_TYPES

    out = []
    for m in model.modules():
        if isinstance(m, SHIFT_TYPES) and getattr(m, "mode", None) == "ps":
            out += [p for p in (getattr(m, "shift", None), getattr(m, "sign", None)) if isinstance(p, nn.Parameter)]
    return out


def build_optimizer(config: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    """The recipe's optimizer; with ``shift_param_groups`` (or a ``shift_lr``) the DeepShift-PS shift/sign
    parameters form a second group without weight decay (and with ``shift_lr`` if set)."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups: List[Dict[str, Any]]
    if config.shift_param_groups or config.shift_lr is not None:
        special = {id(p) for p in shift_sign_parameters(model) if p.requires_grad}
        rest = [p for p in params if id(p) not in special]
        shift = [p for p in params if id(p) in special]
        groups = [{"params": rest, "weight_decay": config.weight_decay, "base_lr": config.lr}]
        if shift:
            lr = config.shift_lr or config.lr
            groups.append({"params": shift, "weight_decay": 0.0, "base_lr": lr, "lr": lr})
    else:
        groups = [{"params": params, "weight_decay": config.weight_decay, "base_lr": config.lr}]
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=config.nesterov)
    betas = (float(config.adam_betas[0]), float(config.adam_betas[1]))
    if config.optimizer == "adam":
        return torch.optim.Adam(groups, lr=config.lr, betas=betas)
    return torch.optim.RAdam(groups, lr=config.lr, betas=betas)


def milestone_epoch(fraction: float, epochs: int) -> int:
    """0-based epoch at which a step-schedule milestone (a fraction of ``epochs``) takes effect (>= 1)."""
    return max(1, int(math.floor(fraction * epochs + 0.5)))


def per_step_schedule(config: TrainConfig) -> bool:
    """True when the learning rate changes every optimizer step (see :func:`step_lr_factor`)."""
    return config.schedule == "inverse_sqrt"


def step_lr_factor(config: TrainConfig, step: int) -> float:
    """Learning-rate multiplier at (0-based) optimizer ``step`` of a per-step schedule: Vaswani et al.'s
    linear warm-up over ``warmup_steps`` then inverse-square-root decay (peak = ``lr``)."""
    from shiftadd.seq.schedule import inverse_sqrt_factor

    return inverse_sqrt_factor(step, config.warmup_steps)


def lr_factor(config: TrainConfig, epoch: int) -> float:
    """Learning-rate multiplier of (0-based) ``epoch``: warmup, then cosine/step/constant (1 for a
    per-step schedule, which :func:`step_lr_factor` sets inside the epoch)."""
    if per_step_schedule(config):
        return 1.0
    if config.warmup_epochs and epoch < config.warmup_epochs:
        return (epoch + 1) / (config.warmup_epochs + 1)
    if config.schedule == "cosine":  # AdderNet: lr = lr0/2 * (1 + cos(pi * epoch / epochs))
        e, total = epoch - config.warmup_epochs, max(config.epochs - config.warmup_epochs, 1)
        return 0.5 * (1 + math.cos(math.pi * e / total))
    if config.schedule == "step":  # ShiftAddNet: x0.1 at 50% and 75% of training (80, 120 of 160)
        passed = sum(1 for m in config.milestones if epoch >= milestone_epoch(m, config.epochs))
        return config.gamma ** passed
    return 1.0
