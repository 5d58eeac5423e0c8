"""Training: named recipes, a reproducible loop with safe checkpoints, data parallelism, comparisons.

>>> from shiftadd.train import make_config, train
>>> cfg = make_config("shiftaddnet", model="resnet20", op="shiftadd", dataset="cifar10", epochs=2)
>>> result = train(cfg, out="runs/x")            # doctest: +SKIP
>>> result = train(cfg, out="runs/x", resume=True)  # continue an interrupted run  # doctest: +SKIP

Modules: ``config`` (TrainConfig, recipes), ``task`` (what is trained on: the Task protocol and image
classification), ``build`` (device, model, optimizer, LR schedule), ``evaluate`` (evaluation, BatchNorm
recalibration), ``loop`` (the loop), ``writer`` (the run directory), ``checkpoint`` (safe checkpoints),
``runs`` (using a saved run), ``compress`` (quantization/pruning/freezing of a run's model),
``distributed``, ``compare``, ``plots``.
"""
from shiftadd.train.build import build_model, build_optimizer, lr_factor, seed_everything
from shiftadd.train.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from shiftadd.train.compare import DEMO_VARIANTS, compare, format_table
from shiftadd.train.config import RECIPES, TrainConfig, load_config_file, make_config
from shiftadd.train.evaluate import evaluate, recalibrate_batchnorm
from shiftadd.train.loop import TrainingDiverged, TrainResult, train
from shiftadd.train.plots import plot_comparison, plot_curves
from shiftadd.train.runs import best_checkpoint_path, evaluate_checkpoint, load_trained_model
from shiftadd.train.task import ClassificationTask, Task, TaskData, get_task, register_task, split_validation

__all__ = [
    "TrainConfig", "RECIPES", "make_config", "load_config_file",
    "train", "TrainResult", "TrainingDiverged", "evaluate", "evaluate_checkpoint", "load_trained_model",
    "best_checkpoint_path", "split_validation",
    "Task", "TaskData", "ClassificationTask", "register_task", "get_task",
    "build_model", "build_optimizer", "lr_factor", "seed_everything", "recalibrate_batchnorm",
    "Checkpoint", "load_checkpoint", "save_checkpoint",
    "compare", "format_table", "DEMO_VARIANTS", "plot_curves", "plot_comparison",
]
