"""Evaluation of a classifier and BatchNorm recalibration (data-parallel aware)."""
from __future__ import annotations

from typing import Dict, Iterable, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from shiftadd.train import distributed as D


def as_tensors(batch, device: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(inputs, labels)`` of a ``(x, y, ...)`` batch as tensors on ``device`` (labels int64)."""
    x, y = batch[0], batch[1]
    x = torch.as_tensor(x)
    y = torch.as_tensor(y).long()
    return x.to(device, non_blocking=True), y.to(device, non_blocking=True)


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable, device: torch.device, info: Optional[D.DistInfo] = None,
             label_smoothing: float = 0.0) -> Dict[str, float]:
    """Mean cross-entropy and accuracy of ``model`` on ``loader`` (each process takes a slice of every batch)."""
    info = info or D.DistInfo()
    was_training = model.training
    model.eval()
    stats = torch.zeros(3, dtype=torch.float64)
    for batch in loader:
        x, y = as_tensors(batch, device)
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
        x, y = as_tensors(batch, device)
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
