"""The training loop: epochs, steps, schedule, divergence guard, progress, data parallelism.

What is trained on comes from a :class:`~shiftadd.train.task.Task`; the parts of a run from
:mod:`~shiftadd.train.build`; what is written to the run directory from :mod:`~shiftadd.train.writer`.
"""
from __future__ import annotations

import copy
import math
import os
import queue
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional

import torch
import torch.nn as nn

from shiftadd.errors import CheckpointError, UserError
from shiftadd.paths import check_output_dir
from shiftadd.train import checkpoint as ckpt
from shiftadd.train import distributed as D
from shiftadd.train.build import (
    amp_context, build_model, build_optimizer, check_amp, lr_factor, make_grad_scaler, per_step_schedule,
    resolve_device, saved_model_build, seed_everything, step_lr_factor,
)
from shiftadd.train.compress import prepare_model, start_state
from shiftadd.train.config import TrainConfig, config_from_dict
from shiftadd.train.evaluate import has_adder_layers, recalibrate_batchnorm
from shiftadd.train.task import Task, TaskData, get_task
from shiftadd.train.writer import BEST_DIR, RESULTS_NAME, RunWriter, check_tensorboard, remove_stale_temporaries

#: Fields that may change when a run is resumed (they do not affect the numbers it produces).
RESUMABLE_OVERRIDES = ("device", "workers", "threads", "progress", "tensorboard", "data_dir", "epochs")
#: Seed offset of the batches used for BatchNorm recalibration (their own order: training is unchanged).
RECALIBRATION_SEED = 7919


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
    #: test metrics: ``{"final": {"epoch", "test_loss", "test_<metric>", ...}}``, plus ``"best"`` (the
    #: best-validation model, also with ``val_<metric>``) for runs with ``val_split``
    results: Dict[str, Any] = field(default_factory=dict)

    @property
    def final(self) -> Dict[str, Any]:
        return self.history[-1] if self.history else {}


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




def _fmt_time(seconds: float) -> str:
    seconds = max(0, int(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}"



def show_progress_bar(config: TrainConfig, stream=None) -> bool:
    """A live progress bar only when asked for (``progress``), ``NO_PROGRESS`` is not set and ``stream``
    (default stderr) is a terminal; otherwise (logs, files) only one plain line per epoch is printed."""
    stream = stream if stream is not None else sys.stderr
    isatty = getattr(stream, "isatty", None)
    return bool(config.progress and not os.environ.get("NO_PROGRESS") and callable(isatty) and isatty())


def train(config: TrainConfig, out: Optional[str] = None, *, resume: bool = False, data=None,
          log: Optional[Callable[[str], None]] = None, task: Optional[Task] = None) -> TrainResult:
    """Train ``config`` (see :class:`TrainConfig`); write checkpoints/metrics/curves under ``out``.

    ``resume=True`` continues the run saved in ``out`` (its saved configuration is used; only
    :data:`RESUMABLE_OVERRIDES` may differ). ``data`` may pass pre-loaded ``(train, test)`` data sets.
    ``task`` replaces the task named by ``config.task``. Runs data-parallel when launched by
    ``torchrun`` with several processes.
    """
    log = log or print
    config.validate()
    if out is not None:
        check_output_dir(out, "--out")  # before any work: not after the first epoch
    if config.tensorboard:
        check_tensorboard()
    if config.threads:
        torch.set_num_threads(config.threads)
    saved: Optional[ckpt.Checkpoint] = None
    if resume:
        if out is None:
            raise UserError("resume needs the run directory")
        saved = ckpt.load_checkpoint(out)
        remove_stale_temporaries(out)
        base = config_from_dict(saved.meta["config"])
        for k in RESUMABLE_OVERRIDES:
            setattr(base, k, getattr(config, k))
        config = base.validate()
        if saved.epoch >= config.epochs and not _final_test_pending(out, saved, config.epochs):
            raise UserError(f"run in {out} already finished {saved.epoch} of {config.epochs} epochs "
                            "(pass a larger --epochs to continue it)")
    elif out is not None and os.path.isfile(os.path.join(out, ckpt.META_NAME)):
        raise UserError(f"{out} already holds a run; use --resume {out} to continue it or choose another --out")
    if config.data_dir:  # stored in the run: eval/--resume from another folder must find the data
        config.data_dir = os.path.abspath(os.path.expanduser(config.data_dir))
    task = task if task is not None else get_task(config.task)

    device_probe = resolve_device(config.device)
    info = D.setup(device_probe.type)
    try:
        return _train(config, task, out, saved, data, log, info)
    finally:
        D.teardown(info)


def _final_test_pending(out: str, saved: ckpt.Checkpoint, epochs: int) -> bool:
    """True for a run with a validation split whose last epoch (``epochs``) is saved but whose end-of-run
    test (``results.json``) is not, e.g. one interrupted during that test: resuming it runs just the test."""
    history = saved.meta.get("history") or [{}]
    return (saved.epoch == epochs and any(k.startswith("val_") for k in history[-1])
            and not os.path.isfile(os.path.join(out, RESULTS_NAME)))


def _build(config: TrainConfig, dims: Dict[str, Any], saved: Optional[ckpt.Checkpoint]):
    """``(model, build options, compression summary)``: a new model, or the saved run's, prepared by
    :func:`~shiftadd.train.compress.prepare_model` (checkpoint or fine-tuning start weights)."""
    if saved is not None and saved_model_build(saved.meta):
        mb = saved_model_build(saved.meta)
        model, model_opts = build_model(mb["name"], mb["op"], mb["num_classes"], mb["options"])
    else:
        model, model_opts = build_model(config.model, config.op, options=config.model_options, **dims)
    if saved is not None:
        compression = prepare_model(model, config, saved.model_state, new_run=False)
    elif config.init_from:
        state, what = start_state(config.init_from)
        compression = prepare_model(model, config, state, what=what)
    else:
        compression = prepare_model(model, config)
    return model, model_opts, compression


def _announce(say, config: TrainConfig, task: Task, data: TaskData, params: int, compression: Dict[str, Any],
              info: D.DistInfo, device: torch.device) -> None:
    """The log lines that start a new run."""
    sizes = [f"{len(data.train)} train"] + ([f"{len(data.val)} validation"] if data.val is not None else [])
    say(f"training {config.model} ({config.op}) on {config.dataset}: {' / '.join(sizes + [f'{len(data.test)} test'])} "
        f"{task.unit}, {params:,} parameters, recipe {config.recipe}, {config.epochs} epochs, "
        + (task.describe_batch(config) if hasattr(task, "describe_batch") else f"batch {config.batch_size}")
        + (f", {info.world_size} processes" if info.enabled else "") + f", device {device}"
        + (f", mixed precision {config.amp} (adder layers in float32)" if config.amp != "off" else ""))
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


def _diverged(what: str, history: List[Dict[str, Any]], out: Optional[str], hint: str = "") -> TrainingDiverged:
    kept = (f"last good checkpoint (epoch {history[-1]['epoch']}) kept in {out}"
            if out and history else "no checkpoint was written")
    return TrainingDiverged(f"{what}; {kept}{hint}")


def _train(config: TrainConfig, task: Task, out: Optional[str], saved: Optional[ckpt.Checkpoint], data, log,
           info: D.DistInfo) -> TrainResult:
    device = resolve_device(config.device, info.local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    check_amp(config.amp, device)
    main = info.is_main
    say = log if main else (lambda *_: None)

    seed_everything(config.seed)
    splits = task.load(config, data)
    if min(len(splits.train), config.batch_size) < max(2, info.world_size):  # steps of 1 sample are skipped (BatchNorm)
        raise UserError(f"no training step would run: {len(splits.train)} training {task.unit} with batch "
                        f"{config.batch_size} on {info.world_size} process(es), and a batch needs at least "
                        f"{max(2, info.world_size)}; use a larger --subset (or fewer in --val-split)")
    dims = task.model_dims(splits)
    model, model_opts, compression = _build(config, dims, saved)
    model.to(device)
    params = sum(p.numel() for p in model.parameters())
    optimizer = build_optimizer(config, model)
    scaler = make_grad_scaler(config.amp, device)  # fp16 only: loss scaling against gradient underflow
    writer = RunWriter(out, config.tensorboard, main)  # the run is valid: only now create its folder

    if device.type == "cuda":  # batches are then cut, augmented and normalised on the GPU
        splits = splits.to(device)
    # Every process draws the same global batch and keeps its slice: identical data to one process.
    train_loader = task.loader(splits.train, config, config.batch_size, config.seed, shuffle=True, augment=True)
    test_loader = task.loader(splits.test, config, config.test_batch_size, config.seed)
    # the split evaluated after every epoch: the validation slice when held out, else the test split
    split = "val" if splits.val is not None else "test"
    epoch_loader = (task.loader(splits.val, config, config.test_batch_size, config.seed)
                    if splits.val is not None else test_loader)
    metric = task.metric

    recal_images = config.bn_recalibration
    if recal_images is None:
        # adder outputs drift faster than running averages follow; a supernet's per-path BatchNorms
        # saw inputs from other paths: both evaluate on freshly estimated statistics
        recal_images = 1024 if has_adder_layers(model) or getattr(model, "needs_bn_recalibration", False) else 0
    recal_loader = task.loader(splits.train, config, config.batch_size, config.seed + RECALIBRATION_SEED,
                               shuffle=True)

    history: List[Dict[str, Any]] = []
    start_epoch = 0
    if saved is not None:
        try:
            if saved.optimizer_state is not None:
                optimizer.load_state_dict(saved.optimizer_state)
        except (RuntimeError, ValueError, KeyError) as exc:
            raise CheckpointError(f"checkpoint does not match the model: {str(exc).splitlines()[0]}") from None
        if scaler is not None and saved.meta.get("grad_scaler"):
            scaler.load_state_dict(saved.meta["grad_scaler"])
        history = list(saved.meta.get("history", []))
        start_epoch = saved.epoch
        writer.rewrite(history)  # drop metrics of an epoch that was interrupted after its line was written
    sign = 1.0 if task.higher_is_better else -1.0
    best_epoch, best_score, best_state = 0, -math.inf, None
    if splits.val is not None and history:
        best = max(history, key=lambda h: sign * h[f"val_{metric}"])  # the first epoch with the best score
        best_epoch, best_score = best["epoch"], sign * best[f"val_{metric}"]

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
        _announce(say, config, task, splits, params, compression, info, device)

    from shiftadd.optim import scale_adder_gradients
    from shiftadd.prune import apply_masks, get_mask

    eta = config.adaptive_eta or None
    masked = any(get_mask(m) is not None for m in raw_model.modules())
    min_batch = max(getattr(task, "min_batch", 2), info.world_size)  # 2: BatchNorm needs two samples
    steps_per_epoch = len(train_loader)
    run_start, steps_done = time.time(), 0
    total_steps = steps_per_epoch * (config.epochs - start_epoch)
    train_seconds = sum(h.get("train_seconds", 0.0) for h in history)
    title = f"{config.model} / {config.op} on {config.dataset}"
    bar_wanted = main and show_progress_bar(config)
    per_step = per_step_schedule(config)
    rate_key, rate_label = getattr(task, "rate", ("images_per_second", "img/s"))
    fmt = getattr(task, "format_metric", None) or (lambda v: f"{100 * v:.2f}%")

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
        if bar_wanted:
            from tqdm.auto import tqdm

            bar = tqdm(total=steps_per_epoch, desc=f"epoch {epoch + 1}/{config.epochs}", unit="batch",
                       dynamic_ncols=True, leave=False, file=sys.stderr)
        for step, batch in enumerate(_prefetch(train_loader, config.workers)):
            x, y = task.batch(batch, device)
            if len(y) < min_batch:  # BatchNorm needs 2+ samples (per process: 1+)
                if bar is not None:
                    bar.update(1)
                continue
            n_global = task.count(y)
            if info.enabled:
                x = torch.tensor_split(x, info.world_size)[info.rank]
                y = torch.tensor_split(y, info.world_size)[info.rank]
            with amp_context(config.amp, device):  # forward and loss; adder layers run in float32 inside
                loss_sum, step_stats = task.loss(model, x, y, config)
                # DDP averages gradients over processes: scale so the result is the global-batch mean.
                loss = loss_sum * (info.world_size / n_global)
                regularizer = getattr(raw_model, "regularization_loss", None)
                if callable(regularizer):  # e.g. the sparse-shift L1 penalty (Chen et al., CVPR 2019)
                    loss = loss + regularizer()
            if per_step:  # e.g. inverse-sqrt warm-up: the step's rate from the global step number
                factor = step_lr_factor(config, epoch * steps_per_epoch + step)
                for g in optimizer.param_groups:
                    g["lr"] = g["base_lr"] * factor
            optimizer.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.unscale_(optimizer)  # the adaptive LR and the clip below see the true gradient
            else:
                loss.backward()
            if eta:
                scale_adder_gradients(raw_model, eta)  # AdderNet Eq. 8, on the all-reduced gradient
            if config.grad_clip:
                nn.utils.clip_grad_norm_(raw_model.parameters(), config.grad_clip)
            D.all_reduce_sum(step_stats, info)
            batch_loss = step_stats[0].item() / max(step_stats[2].item(), 1)
            if not math.isfinite(batch_loss) or batch_loss > config.max_loss:
                if bar is not None:
                    bar.close()
                raise _diverged(f"training diverged at epoch {epoch + 1}, step {step + 1}: loss = {batch_loss:.4g}",
                                history, out, ". Try a lower --lr or a gradient clip (grad_clip).")
            if scaler is not None:
                scaler.step(optimizer)  # skipped when a gradient overflowed; the scale then shrinks
                scaler.update()
            else:
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
        if per_step:  # the rate of the epoch's last step
            lr = optimizer.param_groups[0]["lr"]
        n = max(stats[2].item(), 1.0)
        train_loss, train_score = stats[0].item() / n, stats[1].item() / n
        if recal_images:
            recal_loader.set_epoch(epoch)
            recalibrate_batchnorm(raw_model, recal_loader, recal_images, device, info)
        evaluated = task.evaluate(raw_model, epoch_loader, device, info, config)
        if not math.isfinite(evaluated["loss"]):
            raise _diverged(f"{split} loss is {evaluated['loss']} after epoch {epoch + 1}", history, out)
        train_seconds += epoch_train
        row = {"epoch": epoch + 1, "train_loss": train_loss, f"train_{task.train_metric}": train_score,
               f"{split}_loss": evaluated["loss"], f"{split}_{metric}": evaluated[metric], "lr": lr,
               "seconds": time.time() - t0, "train_seconds": epoch_train,
               rate_key: n / max(epoch_train, 1e-9)}
        history.append(row)
        improved = splits.val is not None and sign * evaluated[metric] > best_score
        if improved:
            best_epoch, best_score = epoch + 1, sign * evaluated[metric]
            best_state = {k: v.detach().cpu().clone() for k, v in raw_model.state_dict().items()}
        if out is not None:
            rng = D.gather_objects(ckpt.get_rng_state(), info)
            if main:
                meta = {"epoch": epoch + 1, "config": config.to_dict(), "history": history,
                        "scheduler": {"name": config.schedule, "epoch": epoch + 1,
                                      "last_lr": [g["lr"] for g in optimizer.param_groups]},
                        "model_build": {"name": config.model, "op": config.op,
                                        "num_classes": dims.get("num_classes"),
                                        "options": model_opts},
                        "dataset": task.data_meta(config, splits),
                        "params": params, "world_size": info.world_size, "device": device.type,
                        "grad_scaler": scaler.state_dict() if scaler is not None else None,
                        "versions": {"torch": torch.__version__}}
                writer.checkpoint(raw_model, optimizer, meta, rng, best=improved)
            D.barrier(info)
        writer.epoch(row, history, title)
        say(f"epoch {epoch + 1}/{config.epochs}  train loss {train_loss:.4f} {task.train_metric} "
            f"{100 * train_score:.2f}%  {split} loss {evaluated['loss']:.4f} {metric} {fmt(evaluated[metric])}  "
            f"lr {lr:.4g}  {row['seconds']:.1f}s ({row[rate_key]:.0f} {rate_label})")
    writer.close()
    if splits.val is None:
        last = history[-1]
        results = {"final": {"epoch": last["epoch"], "test_loss": last["test_loss"],
                             f"test_{metric}": last[f"test_{metric}"]}}
    else:
        if best_state is None:  # the best epoch was trained before this process resumed the run
            best_state = ckpt.load_checkpoint(os.path.join(out, BEST_DIR)).model_state
        results = _final_test(task, config, raw_model, best_state, best_epoch, history, test_loader, device, info)
        for name, r in results.items():
            say(f"test ({name} model, epoch {r['epoch']}): loss {r['test_loss']:.4f} {metric} "
                f"{fmt(r[f'test_{metric}'])} ({r[f'test_{task.unit}']} {task.unit})")
        writer.results(results)
    return TrainResult(config, out, history, raw_model, params, train_seconds,
                       {"model_options": model_opts, "world_size": info.world_size, "rank": info.rank}, results)


def _final_test(task: Task, config: TrainConfig, model: nn.Module, best_state: Dict[str, torch.Tensor],
                best_epoch: int, history: List[Dict[str, Any]], test_loader, device: torch.device,
                info: D.DistInfo) -> Dict[str, Dict[str, Any]]:
    """Test metrics of the final model and of the best-validation model (evaluated once, after training)."""
    metric, last_epoch = task.metric, history[-1]["epoch"]

    def measure(m: nn.Module, epoch: int) -> Dict[str, Any]:
        r = task.evaluate(m, test_loader, device, info, config)
        return {"epoch": epoch, "test_loss": r["loss"], f"test_{metric}": r[metric], f"test_{task.unit}": r["n"]}

    final = measure(model, last_epoch)
    if best_epoch == last_epoch:
        best = dict(final)
    else:
        best_model = copy.deepcopy(model)
        best_model.load_state_dict(best_state)
        best = measure(best_model, best_epoch)
    best[f"val_{metric}"] = history[best_epoch - 1][f"val_{metric}"]
    return {"final": final, "best": best}
