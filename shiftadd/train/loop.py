"""The training loop: data, model, optimizer, schedule, checkpoints, metrics, data parallelism."""
from __future__ import annotations

import json
import math
import os
import queue
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Tuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from shiftadd.errors import CheckpointError, UserError
from shiftadd.train import checkpoint as ckpt
from shiftadd.train import distributed as D
from shiftadd.train.config import TrainConfig, config_from_dict

METRICS_NAME = "metrics.jsonl"
CURVES_NAME = "curves.png"
BEST_DIR = "best"  # the best-by-validation checkpoint of a run trained with val_split
RESULTS_NAME = "results.json"  # test metrics measured once at the end of a run trained with val_split

#: Fields that may change when a run is resumed (they do not affect the numbers it produces).
RESUMABLE_OVERRIDES = ("device", "workers", "threads", "progress", "tensorboard", "data_dir", "epochs")


class TrainingDiverged(RuntimeError):
    """The loss became NaN/inf or exceeded ``max_loss``; the last good checkpoint is kept."""


@dataclass
class TrainResult:
    """What :func:`train` returns."""

    config: TrainConfig
    out: Optional[str]
    history: List[Dict[str, Any]]
    model: nn.Module
    params: int
    train_seconds: float
    extra: Dict[str, Any] = field(default_factory=dict)
    #: test metrics: ``{"final": {"epoch", "test_loss", "test_acc", ...}}``, plus ``"best"`` (the
    #: best-validation model, also with ``val_acc``) for runs with ``val_split``
    results: Dict[str, Any] = field(default_factory=dict)

    @property
    def final(self) -> Dict[str, Any]:
        return self.history[-1] if self.history else {}


# --------------------------------------------------------------------------- setup helpers
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
            raise UserError(f"device {name!r} requested but CUDA is not available")
        if name == "cuda":
            name = f"cuda:{local_rank}"
        idx = int(name.split(":")[1])
        if idx >= torch.cuda.device_count():
            raise UserError(f"device {name!r} does not exist ({torch.cuda.device_count()} GPUs)")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UserError("device 'mps' requested but it is not available")
    return torch.device(name)


def default_augment(dataset: str) -> bool:
    """Random crop + flip for natural-image data sets; none for digits and sensor data."""
    return dataset in ("cifar10", "cifar100", "folder")


def load_data(config: TrainConfig):
    """``(train, test)`` data sets of ``config`` via :func:`shiftadd.data.load_dataset`."""
    from shiftadd.data import load_dataset

    try:
        train, test = load_dataset(config.dataset, data_dir=config.data_dir, subset=config.subset, seed=config.seed)
        if config.test_subset is not None and config.test_subset < len(test):
            test = test.balanced_subset(config.test_subset, config.seed)
        return train, test
    except UserError:
        raise
    except (ValueError, KeyError) as exc:
        raise UserError(f"cannot load data set {config.dataset!r}: {exc}") from None


def split_validation(train_ds, n: int, seed: int):
    """``(train, val)``: a class-balanced, seed-fixed slice of ``n`` training images held out as ``val``."""
    from shiftadd.data.dataset import balanced_subset_indices

    total = len(train_ds.labels)
    if n >= total:
        raise UserError(f"val_split={n} must be smaller than the training set ({total} images); "
                        "pass a smaller --val-split")
    held_out = balanced_subset_indices(train_ds.labels.cpu(), n, seed)
    keep = torch.ones(total, dtype=torch.bool)
    keep[held_out] = False
    return train_ds.subset(torch.nonzero(keep).flatten()), train_ds.subset(held_out)


def dataset_shape(ds) -> Tuple[int, int, int]:
    """(num_classes, channels, image size) of a data set following the shiftadd.data contract."""
    images = ds.images
    channels = int(images.shape[1]) if images.ndim >= 3 else 1
    size = int(images.shape[2]) if images.ndim >= 4 else int(images.shape[-1])
    return len(ds.classes), channels, size


def build_model(name: str, op: str, num_classes: int, options: Dict[str, Any], in_channels: Optional[int] = None,
                image_size: Optional[int] = None) -> Tuple[nn.Module, Dict[str, Any]]:
    """Create a zoo model; ``in_channels``/``image_size`` are passed to models that take them.

    Returns the model and the exact options used (saved in checkpoints to rebuild it).
    """
    from shiftadd.models import create

    opts = dict(options)
    data_opts = {}
    if in_channels is not None and "in_channels" not in opts:
        data_opts["in_channels"] = in_channels
    if image_size is not None and "image_size" not in opts:
        data_opts["image_size"] = image_size
    while True:
        try:
            model = create(name, op=op, num_classes=num_classes, **opts, **data_opts)
            opts.update(data_opts)
            return model, opts
        except (TypeError, ValueError) as exc:
            msg = str(exc)
            dropped = [k for k in data_opts if k in msg]
            if dropped:  # this architecture does not take that data-derived option
                for k in dropped:
                    data_opts.pop(k)
                continue
            raise UserError(f"cannot build model {name!r} with op {op!r}: {msg}") from None


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
    if config.optimizer == "adam":
        return torch.optim.Adam(groups, lr=config.lr)
    return torch.optim.RAdam(groups, lr=config.lr)


def milestone_epoch(fraction: float, epochs: int) -> int:
    """0-based epoch at which a step-schedule milestone (a fraction of ``epochs``) takes effect (>= 1)."""
    return max(1, int(math.floor(fraction * epochs + 0.5)))


def lr_factor(config: TrainConfig, epoch: int) -> float:
    """Learning-rate multiplier of (0-based) ``epoch``: warmup, then cosine/step/constant."""
    if config.warmup_epochs and epoch < config.warmup_epochs:
        return (epoch + 1) / (config.warmup_epochs + 1)
    if config.schedule == "cosine":  # AdderNet: lr = lr0/2 * (1 + cos(pi * epoch / epochs))
        e, total = epoch - config.warmup_epochs, max(config.epochs - config.warmup_epochs, 1)
        return 0.5 * (1 + math.cos(math.pi * e / total))
    if config.schedule == "step":  # ShiftAddNet: x0.1 at 50% and 75% of training (80, 120 of 160)
        passed = sum(1 for m in config.milestones if epoch >= milestone_epoch(m, config.epochs))
        return config.gamma ** passed
    return 1.0


def _prefetch(it: Iterable, depth: int) -> Iterator:
    """Yield the items of ``it`` prepared by a background thread (order and RNG use unchanged)."""
    if depth <= 0:
        yield from it
        return
    q: "queue.Queue" = queue.Queue(maxsize=2 * depth)
    done = object()
    stop = threading.Event()

    def work() -> None:
        try:
            for item in it:
                if stop.is_set():
                    return
                q.put(item)
            q.put(done)
        except BaseException as exc:  # re-raised in the consumer
            q.put(exc)

    t = threading.Thread(target=work, daemon=True)
    t.start()
    try:
        while True:
            item = q.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while t.is_alive():
            try:
                q.get_nowait()
            except queue.Empty:
                t.join(0.05)


def _as_tensors(batch, device: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
    x, y = batch[0], batch[1]
    x = torch.as_tensor(x)
    y = torch.as_tensor(y).long()
    return x.to(device, non_blocking=True), y.to(device, non_blocking=True)


def _fmt_time(seconds: float) -> str:
    seconds = max(0, int(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}"


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable, device: torch.device, info: Optional[D.DistInfo] = None,
             label_smoothing: float = 0.0) -> Dict[str, float]:
    """Mean cross-entropy and accuracy of ``model`` on ``loader`` (each process takes a slice of every batch)."""
    info = info or D.DistInfo()
    was_training = model.training
    model.eval()
    stats = torch.zeros(3, dtype=torch.float64)
    for batch in loader:
        x, y = _as_tensors(batch, device)
        if info.enabled:
            x = torch.tensor_split(x, info.world_size)[info.rank]
            y = torch.tensor_split(y, info.world_size)[info.rank]
            if len(y) == 0:
                continue
        out = model(x)
        loss = F.cross_entropy(out.float(), y, reduction="sum", label_smoothing=label_smoothing)
        stats += torch.tensor([loss.item(), (out.argmax(1) == y).sum().item(), len(y)], dtype=torch.float64)
    D.all_reduce_sum(stats, info)
    model.train(was_training)
    n = max(stats[2].item(), 1.0)
    return {"loss": stats[0].item() / n, "acc": stats[1].item() / n, "n": int(stats[2].item())}


def has_adder_layers(model: nn.Module) -> bool:
    """True when ``model`` contains an adder layer (alone or inside a shift-add layer)."""
    from shiftadd.nn import ADDER_TYPES

    return any(isinstance(m, ADDER_TYPES) for m in model.modules())


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, loader: Iterable, num_images: int, device: torch.device,
                          info: Optional[D.DistInfo] = None) -> int:
    """Re-estimate every BatchNorm's running mean/variance from ``num_images`` training images.

    Adder layers output large sums (-sum|x - w|) whose mean drifts quickly while the weights move,
    so the exponential running averages lag behind and evaluation falls to chance level after
    short or high-learning-rate training. This recomputes them as a plain average over fresh
    batches (BatchNorm in training mode, everything else, e.g. dropout, in eval mode; no
    gradients). Returns the number of images used.
    """
    from torch.nn.modules.batchnorm import _BatchNorm

    info = info or D.DistInfo()
    bns = [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]
    if not bns or num_images <= 0:
        return 0
    was_training = model.training
    model.eval()
    momenta = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average over the batches below
        bn.train()
    seen = 0
    for batch in loader:
        x, y = _as_tensors(batch, device)
        if len(y) < max(2, info.world_size):
            continue
        if info.enabled:
            x = torch.tensor_split(x, info.world_size)[info.rank]
        model(x)
        seen += len(y)
        if seen >= num_images:
            break
    for bn, mom in zip(bns, momenta):
        bn.momentum = mom
    model.train(was_training)
    return seen


# --------------------------------------------------------------------------- the loop
class _Writer:
    """Metrics file, curves and optional TensorBoard (main process only)."""

    def __init__(self, out: Optional[str], config: TrainConfig, enabled: bool) -> None:
        self.out, self.enabled, self.tb = out, enabled and out is not None, None
        if self.enabled and config.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # raised before training starts
                raise UserError("--tensorboard needs the tensorboard package: pip install 'shiftadd[tensorboard]'"
                                ) from None
            self.tb = SummaryWriter(os.path.join(out, "tensorboard"))

    def rewrite(self, history: List[Dict[str, Any]]) -> None:
        if not self.enabled:
            return
        path = os.path.join(self.out, METRICS_NAME)
        tmp = f"{path}.tmp-{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as fh:
            for row in history:
                fh.write(json.dumps(row) + "\n")
        os.replace(tmp, path)

    def epoch(self, row: Dict[str, Any], history: List[Dict[str, Any]], title: str) -> None:
        if not self.enabled:
            return
        with open(os.path.join(self.out, METRICS_NAME), "a", encoding="utf-8") as fh:
            fh.write(json.dumps(row) + "\n")
        try:
            from shiftadd.train.plots import plot_curves

            plot_curves(history, os.path.join(self.out, CURVES_NAME), title)
        except Exception as exc:  # a plotting problem must not stop training
            print(f"warning: could not draw training curves: {exc}")
        if self.tb is not None:
            for k in ("train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc", "lr",
                      "images_per_second"):
                if k in row:
                    self.tb.add_scalar(k, row[k], row["epoch"])
            self.tb.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def train(config: TrainConfig, out: Optional[str] = None, *, resume: bool = False, data=None,
          log: Optional[Callable[[str], None]] = None) -> TrainResult:
    """Train ``config`` (see :class:`TrainConfig`); write checkpoints/metrics/curves under ``out``.

    ``resume=True`` continues the run saved in ``out`` (its saved configuration is used; only
    :data:`RESUMABLE_OVERRIDES` may differ). ``data`` may pass pre-loaded ``(train, test)`` data sets.
    Runs data-parallel when launched by ``torchrun`` with several processes.
    """
    log = log or print
    config.validate()
    if config.threads:
        torch.set_num_threads(config.threads)
    saved: Optional[ckpt.Checkpoint] = None
    if resume:
        if out is None:
            raise UserError("resume needs the run directory")
        saved = ckpt.load_checkpoint(out)
        base = config_from_dict(saved.meta["config"])
        for k in RESUMABLE_OVERRIDES:
            setattr(base, k, getattr(config, k))
        config = base.validate()
        if saved.epoch >= config.epochs:
            raise UserError(f"run in {out} already finished {saved.epoch} of {config.epochs} epochs "
                            "(pass a larger --epochs to continue it)")
    elif out is not None and os.path.isfile(os.path.join(out, ckpt.META_NAME)):
        raise UserError(f"{out} already holds a run; use --resume {out} to continue it or choose another --out")

    device_probe = resolve_device(config.device)
    info = D.setup(device_probe.type)
    try:
        return _train(config, out, saved, data, log, info)
    finally:
        D.teardown(info)


def _train(config: TrainConfig, out: Optional[str], saved: Optional[ckpt.Checkpoint], data, log,
           info: D.DistInfo) -> TrainResult:
    device = resolve_device(config.device, info.local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    main = info.is_main
    say = log if main else (lambda *_: None)
    if out is not None and main:
        os.makedirs(out, exist_ok=True)
    writer = _Writer(out, config, main)

    seed_everything(config.seed)
    train_ds, test_ds = data if data is not None else load_data(config)
    val_ds = None
    if config.val_split:  # model selection on held-out training images; the test split only at the end
        train_ds, val_ds = split_validation(train_ds, config.val_split, config.seed)
    num_classes, channels, size = dataset_shape(train_ds)
    if saved is not None and "model_build" in saved.meta:
        mb = saved.meta["model_build"]
        model, model_opts = build_model(mb["name"], mb["op"], mb["num_classes"], mb["options"])
    else:
        model, model_opts = build_model(config.model, config.op, num_classes, config.model_options, channels, size)
    from shiftadd.train.compress import prepare_model

    if saved is not None:
        compression = prepare_model(model, config, saved.model_state, new_run=False)
    elif config.init_from:
        start = ckpt.load_checkpoint(config.init_from)
        compression = prepare_model(model, config, start.model_state, what=f"the run in {config.init_from}")
    else:
        compression = prepare_model(model, config)
    model.to(device)
    params = sum(p.numel() for p in model.parameters())
    optimizer = build_optimizer(config, model)

    from shiftadd.data import BatchLoader

    if device.type == "cuda":  # batches are then cut, augmented and normalised on the GPU
        train_ds, test_ds = train_ds.to(device), test_ds.to(device)
        val_ds = val_ds.to(device) if val_ds is not None else None
    augment = default_augment(config.dataset) if config.augment is None else config.augment
    # Every process draws the same global batch and keeps its slice: identical data to one process.
    train_loader = BatchLoader(train_ds, config.batch_size, shuffle=True, augment=augment, seed=config.seed)
    test_loader = BatchLoader(test_ds, config.test_batch_size, shuffle=False, augment=False, seed=config.seed)
    # the split evaluated after every epoch: validation images when held out, else the test split
    split = "val" if val_ds is not None else "test"
    epoch_loader = (BatchLoader(val_ds, config.test_batch_size, shuffle=False, augment=False, seed=config.seed)
                    if val_ds is not None else test_loader)

    recal_images = config.bn_recalibration
    if recal_images is None:
        recal_images = 1024 if has_adder_layers(model) else 0
    recal_loader = BatchLoader(train_ds, config.batch_size, shuffle=True, augment=False, seed=config.seed + 7919)

    history: List[Dict[str, Any]] = []
    start_epoch = 0
    if saved is not None:
        try:
            if saved.optimizer_state is not None:
                optimizer.load_state_dict(saved.optimizer_state)
        except (RuntimeError, ValueError, KeyError) as exc:
            raise CheckpointError(f"checkpoint does not match the model: {str(exc).splitlines()[0]}") from None
        history = list(saved.meta.get("history", []))
        start_epoch = saved.epoch
        writer.rewrite(history)  # drop metrics of an epoch that was interrupted after its line was written
    best_epoch, best_acc, best_state = 0, -math.inf, None
    if val_ds is not None and history:
        best = max(history, key=lambda h: h["val_acc"])  # the first epoch with the highest accuracy
        best_epoch, best_acc = best["epoch"], best["val_acc"]

    raw_model = model
    if info.enabled:
        if device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model) if config.sync_batchnorm else model
        elif config.sync_batchnorm:
            import torch.distributed as dist

            model = D.convert_batchnorm(model, dist.new_group(backend="gloo"))
        raw_model = model
        model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
        if saved is None:
            optimizer = build_optimizer(config, raw_model)  # same parameters, possibly replaced BN modules
        else:
            state = optimizer.state_dict()
            optimizer = build_optimizer(config, raw_model)
            optimizer.load_state_dict(state)

    if saved is not None:
        rngs = saved.rng
        if rngs:
            rt, rm = rngs[info.rank] if info.rank < len(rngs) else rngs[0]
            ckpt.set_rng_state(rt, rm)
        say(f"resuming {out} after epoch {start_epoch} of {config.epochs}")
    elif main:
        say(f"training {config.model} ({config.op}) on {config.dataset}: {len(train_ds.labels)} train / "
            + (f"{len(val_ds.labels)} validation / " if val_ds is not None else "")
            + f"{len(test_ds.labels)} test images, {params:,} parameters, recipe {config.recipe}, "
            f"{config.epochs} epochs, batch {config.batch_size}"
            + (f", {info.world_size} processes" if info.enabled else "") + f", device {device}")
        if config.init_from:
            say(f"starting from the weights of {config.init_from}")
        if compression["pruned"] is not None:
            by_kind = compression["pruned"]["by_kind"]
            say("pruned (" + config.prune_method + "): " + ", ".join(
                f"{k} layers {100 * v['sparsity']:.1f}% zero" for k, v in by_kind.items()))
        if compression["quantized"]:
            say(f"fixed-point training {config.quant} on {compression['quantized']} layers "
                f"({', '.join(config.quant_types)})")
        if compression["frozen"]:
            say(f"frozen: {' and '.join(config.freeze)} of the bit-shift layers")

    from shiftadd.optim import scale_adder_gradients

    eta = config.adaptive_eta or None
    from shiftadd.prune import apply_masks, get_mask

    masked = any(get_mask(m) is not None for m in raw_model.modules())
    min_batch = max(2, info.world_size)
    steps_per_epoch = len(train_loader)
    run_start, steps_done = time.time(), 0
    total_steps = steps_per_epoch * (config.epochs - start_epoch)
    train_seconds = sum(h.get("train_seconds", 0.0) for h in history)
    title = f"{config.model} / {config.op} on {config.dataset}"

    for epoch in range(start_epoch, config.epochs):
        factor = lr_factor(config, epoch)
        for g in optimizer.param_groups:
            g["lr"] = g["base_lr"] * factor
        lr = optimizer.param_groups[0]["lr"]
        model.train()
        train_loader.set_epoch(epoch)
        stats = torch.zeros(3, dtype=torch.float64)
        t0 = time.time()
        bar = None
        if main and config.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=steps_per_epoch, desc=f"epoch {epoch + 1}/{config.epochs}", unit="batch",
                       dynamic_ncols=True, leave=False)
        for step, batch in enumerate(_prefetch(train_loader, config.workers)):
            x, y = _as_tensors(batch, device)
            n_global = len(y)
            if n_global < min_batch:  # BatchNorm needs 2+ samples (per process: 1+)
                if bar is not None:
                    bar.update(1)
                continue
            if info.enabled:
                x = torch.tensor_split(x, info.world_size)[info.rank]
                y = torch.tensor_split(y, info.world_size)[info.rank]
            outputs = model(x)
            loss_sum = F.cross_entropy(outputs.float(), y, reduction="sum", label_smoothing=config.label_smoothing)
            # DDP averages gradients over processes: scale so the result is the global-batch mean.
            loss = loss_sum * (info.world_size / n_global)
            regularizer = getattr(raw_model, "regularization_loss", None)
            if callable(regularizer):  # e.g. the sparse-shift L1 penalty (Chen et al., CVPR 2019)
                loss = loss + regularizer()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if eta:
                scale_adder_gradients(raw_model, eta)  # AdderNet Eq. 8, on the all-reduced gradient
            if config.grad_clip:
                nn.utils.clip_grad_norm_(raw_model.parameters(), config.grad_clip)
            step_stats = torch.tensor([loss_sum.item(), (outputs.argmax(1) == y).sum().item(), len(y)],
                                      dtype=torch.float64)
            D.all_reduce_sum(step_stats, info)
            batch_loss = step_stats[0].item() / max(step_stats[2].item(), 1)
            if not math.isfinite(batch_loss) or batch_loss > config.max_loss:
                if bar is not None:
                    bar.close()
                kept = (f"last good checkpoint (epoch {history[-1]['epoch']}) kept in {out}"
                        if out and history else "no checkpoint was written")
                raise TrainingDiverged(
                    f"training diverged at epoch {epoch + 1}, step {step + 1}: loss = {batch_loss:.4g}; {kept}. "
                    "Try a lower --lr or a gradient clip (grad_clip).")
            optimizer.step()
            if masked:
                apply_masks(raw_model)  # pruned weights stay exactly zero
            stats += step_stats
            steps_done += 1
            if bar is not None:
                elapsed = time.time() - t0
                seen = stats[2].item()
                rate = (time.time() - run_start) / steps_done
                bar.set_postfix(loss=f"{stats[0].item() / seen:.3f}", acc=f"{stats[1].item() / seen:.3f}",
                                img_s=f"{seen / max(elapsed, 1e-9):.0f}",
                                eta_total=_fmt_time(rate * (total_steps - steps_done)), refresh=False)
                bar.update(1)
        if bar is not None:
            bar.close()
        epoch_train = time.time() - t0
        n = max(stats[2].item(), 1.0)
        train_loss, train_acc = stats[0].item() / n, stats[1].item() / n
        if recal_images:
            recal_loader.set_epoch(epoch)
            recalibrate_batchnorm(raw_model, recal_loader, recal_images, device, info)
        evaluated = evaluate(raw_model, epoch_loader, device, info, config.label_smoothing)
        if not math.isfinite(evaluated["loss"]):
            kept = (f"last good checkpoint (epoch {history[-1]['epoch']}) kept in {out}"
                    if out and history else "no checkpoint was written")
            raise TrainingDiverged(f"{split} loss is {evaluated['loss']} after epoch {epoch + 1}; {kept}")
        train_seconds += epoch_train
        row = {"epoch": epoch + 1, "train_loss": train_loss, "train_acc": train_acc,
               f"{split}_loss": evaluated["loss"], f"{split}_acc": evaluated["acc"], "lr": lr,
               "seconds": time.time() - t0, "train_seconds": epoch_train,
               "images_per_second": n / max(epoch_train, 1e-9)}
        history.append(row)
        improved = val_ds is not None and evaluated["acc"] > best_acc
        if improved:
            best_epoch, best_acc = epoch + 1, evaluated["acc"]
            best_state = {k: v.detach().cpu().clone() for k, v in raw_model.state_dict().items()}
        if out is not None:
            rng = D.gather_objects(ckpt.get_rng_state(), info)
            if main:
                meta = {"epoch": epoch + 1, "config": config.to_dict(), "history": history,
                        "scheduler": {"name": config.schedule, "epoch": epoch + 1,
                                      "last_lr": [g["lr"] for g in optimizer.param_groups]},
                        "model_build": {"name": config.model, "op": config.op, "num_classes": num_classes,
                                        "options": model_opts},
                        "dataset": {"name": config.dataset, "classes": list(map(str, train_ds.classes)),
                                    "train_size": len(train_ds.labels), "test_size": len(test_ds.labels),
                                    "val_size": len(val_ds.labels) if val_ds is not None else 0},
                        "params": params, "world_size": info.world_size,
                        "versions": {"torch": torch.__version__}}
                if improved:  # written before the latest checkpoint: a resumed epoch rewrites it identically
                    ckpt.save_checkpoint(os.path.join(out, BEST_DIR), raw_model, None, meta)
                ckpt.save_checkpoint(out, raw_model, optimizer, meta, rng)
            D.barrier(info)
        writer.epoch(row, history, title)
        say(f"epoch {epoch + 1}/{config.epochs}  train loss {train_loss:.4f} acc {100 * train_acc:.2f}%  "
            f"{split} loss {evaluated['loss']:.4f} acc {100 * evaluated['acc']:.2f}%  lr {lr:.4g}  "
            f"{row['seconds']:.1f}s ({row['images_per_second']:.0f} img/s)")
    writer.close()
    if val_ds is None:
        last = history[-1]
        results = {"final": {"epoch": last["epoch"], "test_loss": last["test_loss"], "test_acc": last["test_acc"]}}
    else:
        if best_state is None:  # the best epoch was trained before this process resumed the run
            best_state = ckpt.load_checkpoint(os.path.join(out, BEST_DIR)).model_state
        results = _final_test(raw_model, best_state, best_epoch, best_acc, history[-1]["epoch"], test_loader,
                              device, info, config.label_smoothing)
        for name, r in results.items():
            say(f"test ({name} model, epoch {r['epoch']}): loss {r['test_loss']:.4f} acc {100 * r['test_acc']:.2f}% "
                f"({r['test_images']} images)")
        if out is not None and main:
            ckpt.atomic_write_text(os.path.join(out, RESULTS_NAME), json.dumps(results, indent=1))
    return TrainResult(config, out, history, raw_model, params, train_seconds,
                       {"model_options": model_opts, "world_size": info.world_size, "rank": info.rank}, results)


def _final_test(model: nn.Module, best_state: Dict[str, torch.Tensor], best_epoch: int, best_val_acc: float,
                last_epoch: int, test_loader, device: torch.device, info: D.DistInfo,
                label_smoothing: float) -> Dict[str, Dict[str, Any]]:
    """Test metrics of the final model and of the best-validation model (evaluated once, after training)."""
    import copy

    def measure(m: nn.Module, epoch: int) -> Dict[str, Any]:
        r = evaluate(m, test_loader, device, info, label_smoothing)
        return {"epoch": epoch, "test_loss": r["loss"], "test_acc": r["acc"], "test_images": r["n"]}

    final = measure(model, last_epoch)
    if best_epoch == last_epoch:
        best = dict(final)
    else:
        best_model = copy.deepcopy(model)
        best_model.load_state_dict(best_state)
        best = measure(best_model, best_epoch)
    best["val_acc"] = best_val_acc
    return {"final": final, "best": best}


def load_trained_model(path: str, device: str = "cpu", data=None) -> Tuple[nn.Module, TrainConfig, ckpt.Checkpoint]:
    """``(model, config, checkpoint)`` of the run saved in ``path``: the model rebuilt with its pruning
    masks and quantisers, weights loaded, in eval mode on ``device``. ``data`` (train, test) is only
    needed for checkpoints that predate the saved model description."""
    from shiftadd.train.compress import prepare_model

    saved = ckpt.load_checkpoint(path)
    config = config_from_dict(saved.meta["config"])
    mb = saved.meta.get("model_build") or {}
    if mb:
        model, _ = build_model(mb["name"], mb["op"], mb["num_classes"], mb["options"])
    else:
        num_classes, channels, size = dataset_shape((data or load_data(config))[0])
        model, _ = build_model(config.model, config.op, num_classes, config.model_options, channels, size)
    prepare_model(model, config, saved.model_state, new_run=False)
    return model.to(resolve_device(device)).eval(), config, saved


def best_checkpoint_path(run: str) -> str:
    """The directory of the best-validation checkpoint of the run in ``run`` (trained with ``val_split``)."""
    meta_path = ckpt.resolve_checkpoint_path(run)
    best = os.path.join(os.path.dirname(meta_path), BEST_DIR)
    if not os.path.isfile(os.path.join(best, ckpt.META_NAME)):
        raise CheckpointError(f"{run} has no best-validation checkpoint ({BEST_DIR}/); only runs trained with "
                              "--val-split keep one")
    return best


def checkpoint_config(path: str, data_dir: Optional[str] = None, test_subset: Optional[int] = None) -> TrainConfig:
    """The configuration saved with a run, with the data location and the test subset (0: the whole
    test split) overridden when given."""
    config = config_from_dict(ckpt.load_checkpoint_meta(path)["config"])
    if data_dir is not None:
        config.data_dir = data_dir
    if test_subset is not None:
        config.test_subset = test_subset or None
    return config


def evaluate_checkpoint(path: str, data_dir: Optional[str] = None, device: str = "auto",
                        batch_size: Optional[int] = None, data=None,
                        test_subset: Optional[int] = None, prune: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Rebuild the model saved in ``path`` and evaluate it on its data set's test split.

    ``test_subset`` overrides the run's test subset (0: the whole test split). ``prune`` (keyword
    arguments of :func:`shiftadd.prune.prune`) prunes the model first; the result then has its
    ``"sparsity"`` report.
    """
    config = checkpoint_config(path, data_dir, test_subset)
    if data is None:
        data = load_data(config)
    model, _, saved = load_trained_model(path, device, data)
    dev = next(model.parameters()).device
    report = None
    if prune is not None:
        from shiftadd.prune import prune as prune_model

        try:
            report = prune_model(model, seed=config.seed, **prune)
        except ValueError as exc:
            raise UserError(f"cannot prune: {exc}") from None
    from shiftadd.data import BatchLoader

    loader = BatchLoader(data[1], batch_size or config.test_batch_size, shuffle=False, augment=False,
                         seed=config.seed)
    res = evaluate(model, loader, dev)
    res.update({"epoch": saved.epoch, "model": config.model, "op": config.op, "dataset": config.dataset})
    if report is not None:
        res["sparsity"] = report
    return res
