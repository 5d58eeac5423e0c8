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

    ``eta`` overrides each layer's own ``eta`` (default 0.2). A zero gradient stays zero. Besides adder
    layers, a module with ``take_adder_parameters()`` (a weight-sharing supernet position) has the
    parameters that method returns scaled.
    """
    scaled = 0
    for module in model.modules():
        take = getattr(module, "take_adder_parameters", None)
        if callable(take):  # e.g. a supernet position: the weights its adder branches used since the last step
            params = list(take())
        elif isinstance(module, ADDER_TYPES) or getattr(module, "adder_adaptive_lr", False):
            params = [module.weight]
        else:
            continue
        e = getattr(module, "eta", 0.2) if eta is None else eta
        for param in params:
            scaled += _scale(param.grad, e)
    return scaled


def _scale(grad: Optional[torch.Tensor], eta: float) -> int:
    """Eq. (8) in place: ``grad *= eta * sqrt(k) / ||grad||_2`` (a zero gradient stays zero); 1 if scaled."""
    if grad is None:
        return 0
    norm = torch.linalg.vector_norm(grad)
    factor = torch.where(norm > 0, eta * math.sqrt(grad.numel()) / norm.clamp_min(1e-30), torch.zeros_like(norm))
    grad.mul_(factor)
    return 1


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
