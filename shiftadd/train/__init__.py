"""Training: named recipes, a reproducible loop with safe checkpoints, data parallelism, comparisons.

>>> from shiftadd.train import make_config, train
>>> cfg = make_config("shiftaddnet", model="resnet20", op="shiftadd", dataset="cifar10", epochs=2)
>>> result = train(cfg, out="runs/x")            # doctest: +SKIP
>>> result = train(cfg, out="runs/x", resume=True)  # continue an interrupted run  # doctest: +SKIP
"""
from shiftadd.train.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from shiftadd.train.compare import DEMO_VARIANTS, compare, format_table
from shiftadd.train.config import RECIPES, TrainConfig, load_config_file, make_config
from shiftadd.train.loop import (TrainingDiverged, TrainResult, best_checkpoint_path, build_model, build_optimizer,
                                 evaluate, evaluate_checkpoint, load_trained_model, lr_factor, recalibrate_batchnorm,
                                 seed_everything, split_validation, train)
from shiftadd.train.plots import plot_comparison, plot_curves

__all__ = [
    "TrainConfig", "RECIPES", "make_config", "load_config_file",
    "train", "TrainResult", "TrainingDiverged", "evaluate", "evaluate_checkpoint", "load_trained_model",
    "best_checkpoint_path", "split_validation",
    "build_model", "build_optimizer", "lr_factor", "seed_everything", "recalibrate_batchnorm",
    "Checkpoint", "load_checkpoint", "save_checkpoint",
    "compare", "format_table", "DEMO_VARIANTS", "plot_curves", "plot_comparison",
]
