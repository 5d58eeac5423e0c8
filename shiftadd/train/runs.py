"""Using a saved run: its configuration, its model rebuilt from the checkpoint, test evaluation,
the best-validation checkpoint, the embedded-data check of a pretrained card, and post-training shared-scale quantization of its adder layers."""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Dict, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from shiftadd.errors import CheckpointError, DataError, UserError
from shiftadd.train import checkpoint as ckpt
from shiftadd.train import distributed as D
from shiftadd.train.build import build_model, resolve_device, saved_model_build
from shiftadd.train.compress import prepare_model
from shiftadd.train.config import TrainConfig, config_from_dict
from shiftadd.train.task import get_task
from shiftadd.train.writer import BEST_DIR


def load_trained_model(path: str, device: str = "cpu", data=None) -> Tuple[nn.Module, TrainConfig, ckpt.Checkpoint]:
    """``(model, config, checkpoint)`` of the run saved in ``path``: the model rebuilt with its pruning
    masks and quantizers, weights loaded, in eval mode on ``device``. ``data`` (train, test) is only
    needed for checkpoints that predate the saved model description."""
    saved = ckpt.load_checkpoint(path)
    config = config_from_dict(saved.meta["config"])
    mb = saved_model_build(saved.meta)
    if mb:
        model, _ = build_model(mb["name"], mb["op"], mb["num_classes"], mb["options"])
    else:
        task = get_task(config.task)
        model, _ = build_model(config.model, config.op, options=config.model_options,
                               **task.model_dims(task.load(config, data)))
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

    ``data`` may pass pre-loaded ``(train, test)`` data sets. ``test_subset`` overrides the run's test
    subset (0: the whole test split). ``prune`` (keyword arguments of :func:`shiftadd.prune.prune`)
    prunes the model first; the result then has its ``"sparsity"`` report.
    """
    config = checkpoint_config(path, data_dir, test_subset)
    resolve_device(device)  # a bad device name fails before the data set is loaded
    task = get_task(config.task)
    try:
        splits = task.load(config, data)
    except DataError as exc:
        if data_dir is not None:
            raise
        raise DataError(f"{exc} (the run's data set was in {config.data_dir or 'the default location'}; "
                        "pass --data-dir to say where it is now)") from None
    model, _, saved = load_trained_model(path, device, (splits.train, splits.test))
    dev = next(model.parameters()).device
    report = None
    if prune is not None:
        from shiftadd.prune import prune as prune_model

        try:
            report = prune_model(model, seed=config.seed, **prune)
        except ValueError as exc:
            raise UserError(f"cannot prune: {exc}") from None
    loader = task.loader(splits.test, config, batch_size or config.test_batch_size, config.seed)
    res = task.evaluate(model, loader, dev, D.DistInfo(), config)
    res.update({"epoch": saved.epoch, "model": config.model, "op": config.op, "dataset": config.dataset})
    if report is not None:
        res["sparsity"] = report
    return res


def shared_scale_sweep(run: str, bits: Sequence[int] = (16, 8, 6, 4), scale: str = "free",
                       calibration_batches: int = 4, data_dir: Optional[str] = None,
                       test_subset: Optional[int] = None, range_from: str = "folded") -> Dict[str, Any]:
    """Post-training shared-scale quantization of the adder layers of the run saved in ``run``.

    Calibrates on ``calibration_batches`` training batches of 128 (no augmentation, seed + 1) and
    returns ``{"float": acc, "int16": acc, ...}`` on the run's test split (``test_subset`` 0: all),
    plus ``"test_images"``. ``range_from``: see :mod:`shiftadd.quant.shared` (``"folded"``: trained adder
    weights beyond the activations cost no activation resolution). See :func:`shiftadd.quant.evaluate_bit_widths`.
    """
    from shiftadd.data import BatchLoader
    from shiftadd.quant import evaluate_bit_widths
    from shiftadd.train.evaluate import evaluate
    from shiftadd.train.task import load_data

    model, _, _ = load_trained_model(run)
    config = checkpoint_config(run, data_dir, test_subset)
    train_ds, test_ds = load_data(config)
    loader = BatchLoader(train_ds, 128, shuffle=True, augment=False, seed=config.seed + 1)
    calib = [batch[0] for _, batch in zip(range(calibration_batches), loader)]
    test = BatchLoader(test_ds, config.test_batch_size, shuffle=False, augment=False)
    device = next(model.parameters()).device
    try:
        res = evaluate_bit_widths(model, lambda m: evaluate(m, test, device)["acc"], calib, bits=bits, scale=scale,
                                  range_from=range_from)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    res["test_images"] = len(test_ds.labels)
    return res


def embedded_check(model: nn.Module, config: TrainConfig, batch_size: int = 250) -> Tuple[Dict[str, Any], torch.Tensor]:
    """Accuracy of a CIFAR-10 classifier on the 1,000 test images embedded in the package (no download),
    through the trainer's own test pipeline, and the first four of those images as the model sees them.

    Pretrained model cards record it (``check``) so that anyone can re-measure a shipped model."""
    check_config = dataclasses.replace(config, dataset="embedded", data_dir=None, test_subset=None, val_split=None)
    task = get_task("classification")
    test = task.load(check_config).test
    device = next(model.parameters()).device
    result = task.evaluate(model, task.loader(test, check_config, batch_size, 0), device, D.DistInfo(), check_config)
    images = next(iter(task.loader(test, check_config, 4, 0)))[0]
    return result, images


def evaluate_pretrained(name: str, dataset: Optional[str] = None, data_dir: Optional[str] = None,
                        device: str = "auto", batch_size: Optional[int] = None,
                        test_subset: Optional[int] = None) -> Dict[str, Any]:
    """Test metrics of shipped pretrained weights ``name`` on its card's data set (or ``dataset``)."""
    from shiftadd.models.pretrained import load_card, load_pretrained

    card = load_card(name)
    config = TrainConfig(model=card.model, op=card.op, dataset=dataset or card.dataset, data_dir=data_dir,
                         test_subset=test_subset or None)
    dev = resolve_device(device)
    task = get_task("classification")
    splits = task.load(config)
    model = load_pretrained(name).to(dev)
    loader = task.loader(splits.test, config, batch_size or config.test_batch_size, config.seed)
    res = task.evaluate(model, loader, dev, D.DistInfo(), config)
    res.update({"name": name, "model": card.model, "op": card.op, "dataset": config.dataset})
    return res
