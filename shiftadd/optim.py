"""AdderNet's adaptive learning rate (Chen et al., CVPR 2020, Eq. 7-8).

Each adder layer's weight gradient g is rescaled to ``eta * sqrt(k) * g / ||g||_2``
(k = number of elements of the weight) before the optimizer step, so that every adder
layer moves at a comparable speed whatever the magnitude of its gradient.

Apply it to the *final* gradient: after backward, after gradient accumulation and after
DDP's all-reduce. Because the rescaled gradient is invariant to a positive scaling of g,
the result does not depend on the number of processes or accumulation steps.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Optional

import torch
import torch.nn as nn

from shiftadd.nn.adder import ADDER_TYPES


@torch.no_grad()
def scale_adder_gradients(model: nn.Module, eta: Optional[float] = None) -> int:
    """Rescale every adder layer's ``weight.grad`` in place; returns how many were scaled.

    ``eta`` overrides each layer's own ``eta`` (default 0.2). A zero gradient stays zero.
    """
    scaled = 0
    for module in model.modules():
        if not (isinstance(module, ADDER_TYPES) or getattr(module, "adder_adaptive_lr", False)):
            continue
        grad = module.weight.grad
        if grad is None:
            continue
        norm = torch.linalg.vector_norm(grad)
        e = module.eta if eta is None else eta
        # Eq. (8): alpha_l = eta * sqrt(k) / ||dL/dF_l||_2 ; guarded against a zero gradient
        factor = torch.where(norm > 0, e * math.sqrt(grad.numel()) / norm.clamp_min(1e-30), torch.zeros_like(norm))
        grad.mul_(factor)
        scaled += 1
    return scaled


class AdderAdaptiveLR:
    """Wrap an optimizer so that ``step()`` first applies :func:`scale_adder_gradients`.

    >>> opt = AdderAdaptiveLR(torch.optim.SGD(model.parameters(), lr=0.1), model)
    Everything else (zero_grad, param_groups, state_dict, ...) is the wrapped optimizer's.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, model: nn.Module, eta: Optional[float] = None) -> None:
        self.optimizer, self.model, self.eta = optimizer, model, eta

    def step(self, closure: Optional[Callable[[], Any]] = None) -> Any:
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
            scale_adder_gradients(self.model, self.eta)
            self.optimizer.step()
            return loss
        scale_adder_gradients(self.model, self.eta)
        return self.optimizer.step()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.optimizer, name)

    def __repr__(self) -> str:
        return f"AdderAdaptiveLR(eta={self.eta}, optimizer={self.optimizer!r})"
