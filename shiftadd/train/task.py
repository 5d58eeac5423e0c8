"""What the training loop trains on: the :class:`Task` protocol and image classification.

The loop (:mod:`shiftadd.train.loop`) knows nothing about images or labels. A task loads the data
(train, optional validation slice, test), makes batch loaders, computes the training loss of a batch
and evaluates a model, reporting its primary metric (name and direction) so the loop can log it and
keep the best-validation checkpoint. A new task (e.g. machine translation) implements the protocol
and is registered with :func:`register_task`; ``TrainConfig.task`` names it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, Optional, Protocol, Tuple, Union, runtime_checkable

import torch
import torch.nn as nn
import torch.nn.functional as F

from shiftadd.errors import DataError, UserError
from shiftadd.train import distributed as D
from shiftadd.train.config import TrainConfig
from shiftadd.train.evaluate import as_tensors, evaluate


@dataclass
class TaskData:
    """The splits of a run; ``val`` is None without a validation split. Each split has ``len()`` and ``.to(device)``."""

    train: Any
    val: Optional[Any]
    test: Any

    def to(self, device: Union[str, torch.device]) -> "TaskData":
        return TaskData(self.train.to(device), None if self.val is None else self.val.to(device), self.test.to(device))


@runtime_checkable
class Task(Protocol):
    """A kind of training problem, as the loop sees it."""

    #: name of the primary evaluation metric (metrics rows hold ``val_<metric>`` / ``test_<metric>``)
    metric: str
    #: whether a larger ``metric`` is better (chooses the best-validation checkpoint)
    higher_is_better: bool
    #: name of the per-batch training statistic (``train_<train_metric>`` in metrics rows)
    train_metric: str
    #: what one example is called in log lines ("images", "sentences")
    unit: str

    def load(self, config: TrainConfig, data: Optional[Tuple[Any, Any]] = None) -> TaskData:
        """The run's splits (``data``: pre-loaded ``(train, test)``); the validation slice is cut here."""

    def model_dims(self, data: TaskData) -> Dict[str, Any]:
        """Keyword arguments of :func:`shiftadd.train.build.build_model` that depend on the data."""

    def data_meta(self, config: TrainConfig, data: TaskData) -> Dict[str, Any]:
        """A JSON description of the data saved in checkpoints."""

    def loader(self, ds: Any, config: TrainConfig, batch_size: int, seed: int, shuffle: bool = False,
               augment: bool = False) -> Any:
        """Batches of ``ds`` with ``len()`` and ``set_epoch(epoch)``: ``shuffle`` in an order fixed by ``seed``
        and the epoch; ``augment``: with the run's augmentation (if the configuration has one)."""

    def batch(self, batch: Any, device: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(inputs, targets)`` on ``device``; data-parallel processes each take a slice along dim 0."""

    def count(self, targets: torch.Tensor) -> int:
        """How many items the loss of a (global) batch sums over; it is normalised by this."""

    def loss(self, model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor,
             config: TrainConfig) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(summed loss, float64 [loss sum, train_metric sum, items])`` of one batch, for backward and logs."""

    def evaluate(self, model: nn.Module, loader: Iterable, device: torch.device, info: D.DistInfo,
                 config: TrainConfig) -> Dict[str, float]:
        """``{"loss", <metric>, "n"}`` of ``model`` on ``loader`` (all processes together)."""


# --------------------------------------------------------------------------- image classification
def default_augment(dataset: str) -> bool:
    """Random crop + flip for natural-image data sets; none for digits and sensor data."""
    return dataset in ("cifar10", "cifar100", "folder")


def load_data(config: TrainConfig):
    """``(train, test)`` data sets of ``config`` via :func:`shiftadd.data.load_dataset`."""
    from shiftadd.data import load_dataset

    try:
        train, test = load_dataset(config.dataset, data_dir=config.data_dir, subset=config.subset, seed=config.seed)
        if config.test_subset is not None and config.test_subset > len(test):
            raise DataError(f"test_subset={config.test_subset} is larger than the test set ({len(test)} images)")
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


class ClassificationTask:
    """Image (or sensor-window) classification: cross-entropy, accuracy, :mod:`shiftadd.data` data sets."""

    metric = "acc"
    higher_is_better = True
    train_metric = "acc"
    unit = "images"

    def load(self, config: TrainConfig, data: Optional[Tuple[Any, Any]] = None) -> TaskData:
        train, test = data if data is not None else load_data(config)
        val = None
        if config.val_split:  # model selection on held-out training images; the test split only at the end
            train, val = split_validation(train, config.val_split, config.seed)
        return TaskData(train, val, test)

    def model_dims(self, data: TaskData) -> Dict[str, Any]:
        num_classes, channels, size = dataset_shape(data.train)
        return {"num_classes": num_classes, "in_channels": channels, "image_size": size}

    def data_meta(self, config: TrainConfig, data: TaskData) -> Dict[str, Any]:
        return {"name": config.dataset, "classes": list(map(str, data.train.classes)),
                "train_size": len(data.train.labels), "test_size": len(data.test.labels),
                "val_size": len(data.val.labels) if data.val is not None else 0}

    def loader(self, ds, config: TrainConfig, batch_size: int, seed: int, shuffle: bool = False,
               augment: bool = False):
        from shiftadd.data import BatchLoader

        augment = augment and (default_augment(config.dataset) if config.augment is None else config.augment)
        return BatchLoader(ds, batch_size, shuffle=shuffle, augment=augment, seed=seed)

    def batch(self, batch, device: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
        return as_tensors(batch, device)

    def count(self, targets: torch.Tensor) -> int:
        return len(targets)

    def loss(self, model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor,
             config: TrainConfig) -> Tuple[torch.Tensor, torch.Tensor]:
        outputs = model(inputs)
        loss_sum = F.cross_entropy(outputs.float(), targets, reduction="sum", label_smoothing=config.label_smoothing)
        stats = torch.tensor([loss_sum.item(), (outputs.argmax(1) == targets).sum().item(), len(targets)],
                             dtype=torch.float64)
        return loss_sum, stats

    def evaluate(self, model: nn.Module, loader: Iterable, device: torch.device, info: D.DistInfo,
                 config: TrainConfig) -> Dict[str, float]:
        return evaluate(model, loader, device, info, config.label_smoothing)


# --------------------------------------------------------------------------- registry
_TASKS: Dict[str, Callable[[], Task]] = {"classification": ClassificationTask}
#: Tasks defined in their own module, imported (and so registered) when first asked for.
_TASK_MODULES: Dict[str, str] = {"translation": "shiftadd.train.translation"}


def register_task(name: str, factory: Callable[[], Task]) -> None:
    """Make ``TrainConfig.task = name`` train with ``factory()``."""
    _TASKS[name] = factory


def task_names() -> Tuple[str, ...]:
    return tuple(dict.fromkeys([*_TASKS, *_TASK_MODULES]))


def get_task(name: str) -> Task:
    """The task registered as ``name``; UserError naming the known ones otherwise."""
    if name not in _TASKS and name in _TASK_MODULES:
        import importlib

        importlib.import_module(_TASK_MODULES[name])
    if name not in _TASKS:
        raise UserError(f"unknown task {name!r}; choose one of: {', '.join(task_names())}")
    return _TASKS[name]()
