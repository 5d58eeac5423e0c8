"""Adam with the inverse-square-root warm-up of Vaswani et al. (2017), Sec. 5.3:

    lr(step) = peak_lr * min(step / warmup, sqrt(warmup / step))      (step counted from 1)

linear warm-up to ``peak_lr`` over ``warmup`` steps, then decay as 1/sqrt(step).
"""
from __future__ import annotations

import math
from typing import Iterable, Tuple

import torch


def inverse_sqrt_factor(step: int, warmup: int) -> float:
    """The multiplier of the peak learning rate at optimiser step ``step`` (0-based, as LambdaLR counts)."""
    s = step + 1
    return min(s / warmup, math.sqrt(warmup / s)) if warmup > 0 else 1.0 / math.sqrt(s)


def adam_inverse_sqrt(params: Iterable[torch.nn.Parameter], peak_lr: float = 5e-4, warmup: int = 4000,
                      betas: Tuple[float, float] = (0.9, 0.98), eps: float = 1e-9, weight_decay: float = 0.0,
                      ) -> Tuple[torch.optim.Adam, torch.optim.lr_scheduler.LambdaLR]:
    """Adam (betas 0.9/0.98, eps 1e-9 as in the Transformer paper) and its inverse-sqrt warm-up scheduler;
    call ``scheduler.step()`` after every ``optimizer.step()``."""
    if warmup < 0 or peak_lr <= 0:
        raise ValueError(f"need peak_lr > 0 and warmup >= 0, got peak_lr={peak_lr!r}, warmup={warmup!r}")
    opt = torch.optim.Adam(params, lr=peak_lr, betas=betas, eps=eps, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: inverse_sqrt_factor(step, warmup))
    return opt, sched


__all__ = ["adam_inverse_sqrt", "inverse_sqrt_factor"]
