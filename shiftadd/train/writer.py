"""What a training run writes into its directory: metrics, curves, TensorBoard, checkpoints, results.

Every file is replaced atomically (temporary name, then ``os.replace``); only the main process writes.
"""
from __future__ import annotations

import json
import glob
import os
from typing import Any, Dict, List, Optional

import torch

from shiftadd.errors import UserError
from shiftadd.train import checkpoint as ckpt
from shiftadd.utils import atomic_write_text

METRICS_NAME = "metrics.jsonl"
CURVES_NAME = "curves.png"
BEST_DIR = "best"  # the best-by-validation checkpoint of a run trained with val_split
RESULTS_NAME = "results.json"  # test metrics measured once at the end of a run trained with val_split
#: metrics rows' keys sent to TensorBoard (when present in the row)
SCALARS = ("train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc", "lr", "images_per_second")


def check_tensorboard() -> None:
    """Raise UserError when --tensorboard cannot work (the package is missing)."""
    try:
        import torch.utils.tensorboard  # noqa: F401
    except ImportError:
        raise UserError("--tensorboard needs the tensorboard package: pip install 'shiftadd[tensorboard]'") from None


def remove_stale_temporaries(out: str) -> None:
    """Delete the ``*.tmp-PID`` files a save killed half-way left behind (call when resuming ``out``)."""
    for path in glob.glob(os.path.join(glob.escape(out), "**", "*.tmp-*"), recursive=True):
        try:
            os.remove(path)
        except OSError:
            pass


class RunWriter:
    """The run directory ``out`` of one training run (does nothing when ``out`` is None or not ``enabled``)."""

    def __init__(self, out: Optional[str], tensorboard: bool = False, enabled: bool = True) -> None:
        self.out, self.enabled, self.tb = out, enabled and out is not None, None
        if self.enabled and tensorboard:
            check_tensorboard()
        if self.enabled:
            os.makedirs(out, exist_ok=True)
        if self.enabled and tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(os.path.join(out, "tensorboard"))

    def rewrite(self, history: List[Dict[str, Any]]) -> None:
        """Replace the metrics file by ``history`` (on resume: drops an interrupted epoch's line)."""
        if not self.enabled:
            return
        path = os.path.join(self.out, METRICS_NAME)
        tmp = f"{path}.tmp-{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as fh:
            for row in history:
                fh.write(json.dumps(row) + "\n")
        os.replace(tmp, path)

    def checkpoint(self, model: torch.nn.Module, optimizer: Optional[torch.optim.Optimizer], meta: Dict[str, Any],
                   rng, best: bool = False) -> None:
        """Save the latest checkpoint; with ``best`` also (first, so that a resumed epoch rewrites it
        identically) the weights-only best-validation checkpoint in ``best/``."""
        if not self.enabled:
            return
        if best:
            ckpt.save_checkpoint(os.path.join(self.out, BEST_DIR), model, None, meta)
        ckpt.save_checkpoint(self.out, model, optimizer, meta, rng)

    def epoch(self, row: Dict[str, Any], history: List[Dict[str, Any]], title: str) -> None:
        """Append ``row`` to the metrics file, redraw the curves, log to TensorBoard."""
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
            for k in SCALARS:
                if k in row:
                    self.tb.add_scalar(k, row[k], row["epoch"])
            self.tb.flush()

    def results(self, results: Dict[str, Any]) -> None:
        """Write the end-of-training test metrics (``results.json``)."""
        if self.enabled:
            atomic_write_text(os.path.join(self.out, RESULTS_NAME), json.dumps(results, indent=1))

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
