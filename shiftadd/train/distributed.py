"""Data-parallel helpers: process-group setup from torchrun's environment, and BatchNorm
statistics synchronised across processes on CPU (torch's SyncBatchNorm only runs on GPUs).

Every process sees the same global batch and trains on its slice of it; with synchronised
BatchNorm and a loss normalised by the global batch size, the averaged gradient equals the
single-process gradient, so N processes give the result of one up to floating-point noise.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm


@dataclass
class DistInfo:
    """Where this process stands: rank, world size, local rank, and whether we set the group up."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


#: The process-group backend of CUDA training: NCCL for CUDA tensors (DDP's gradient all-reduce, SyncBatchNorm),
#: gloo for the few CPU tensors the loop reduces (per-step statistics, evaluation sums, RNG states).
CUDA_BACKEND = "cpu:gloo,cuda:nccl"


def choose_backend(device_type: str) -> str:
    """The ``torch.distributed`` backend for training on ``device_type``: NCCL (with gloo for CPU tensors)
    on CUDA, gloo elsewhere. Raise UserError when CUDA training is asked for but this PyTorch has no NCCL."""
    from shiftadd.errors import UserError

    if device_type != "cuda":
        return "gloo"
    if not dist.is_nccl_available():
        raise UserError("data-parallel training on CUDA needs NCCL, which this PyTorch build lacks; "
                        "install a CUDA build of PyTorch or train with --device cpu (gloo)")
    return CUDA_BACKEND


def setup(device_type: str) -> DistInfo:
    """Join the process group described by torchrun's environment (:func:`choose_backend`: gloo on CPU,
    NCCL on GPU)."""
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)), False)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but torch.distributed is not available in this PyTorch build")
    dist.init_process_group(backend=choose_backend(device_type))
    return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)), True)


def teardown(info: DistInfo) -> None:
    """Leave the process group if :func:`setup` created it."""
    if info.owns_group and dist.is_initialized():
        dist.destroy_process_group()


class _AllReduceSum(torch.autograd.Function):
    """Differentiable sum over processes: the gradient of a sum is the sum of the gradients."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, group) -> torch.Tensor:
        ctx.group = group
        x = x.clone()
        dist.all_reduce(x, group=group)
        return x

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, group=ctx.group)
        return grad, None


def all_reduce_sum_autograd(x: torch.Tensor, group=None) -> torch.Tensor:
    """Sum ``x`` over the processes of ``group``; gradients flow back to every process."""
    return _AllReduceSum.apply(x, group or dist.group.WORLD)


class DistributedBatchNorm(_BatchNorm):
    """BatchNorm whose training statistics are computed over the samples of all processes.

    Two-pass like the single-process kernel: an all-reduce of the sums gives the global mean,
    a second all-reduce of the squared deviations gives the (biased) variance. Both reductions
    are differentiable (:func:`all_reduce_sum_autograd`), so gradients flow through the statistics as in
    one process. Outside training, or without a process group, it is a plain BatchNorm.
    Same parameters, buffers and state-dict keys as ``nn.BatchNorm1d/2d``.
    """

    def __init__(self, *args, process_group=None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.process_group = process_group

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2-D input, got {input.dim()}-D")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized()):
            return super().forward(x)
        self._check_input_dim(x)
        c = x.shape[1]
        dims = [0] + list(range(2, x.dim()))
        count = x.new_full((1,), x.numel() // max(c, 1))
        sums = all_reduce_sum_autograd(torch.cat([x.sum(dims), count]), self.process_group)
        n = sums[-1]
        mean = sums[:c] / n
        shape = [1, c] + [1] * (x.dim() - 2)
        centred = x - mean.view(shape)
        var = all_reduce_sum_autograd((centred * centred).sum(dims), self.process_group) / n
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = (1.0 / float(self.num_batches_tracked)) if self.momentum is None else self.momentum
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                unbiased = var.detach() * (n / (n - 1).clamp_min(1))
                self.running_var.mul_(1 - m).add_(unbiased, alpha=m)
        y = centred * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y


def convert_batchnorm(module: nn.Module, process_group=None) -> nn.Module:
    """Replace every BatchNorm1d/2d/3d in ``module`` by :class:`DistributedBatchNorm` (in place)."""
    if isinstance(module, _BatchNorm) and not isinstance(module, DistributedBatchNorm):
        new = DistributedBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                                   module.track_running_stats, process_group=process_group)
        if module.affine:
            with torch.no_grad():
                new.weight.copy_(module.weight)
                new.bias.copy_(module.bias)
        if module.track_running_stats:
            new.running_mean.copy_(module.running_mean)
            new.running_var.copy_(module.running_var)
            new.num_batches_tracked.copy_(module.num_batches_tracked)
        new.train(module.training)
        return new.to(next(module.parameters(), module.running_mean if module.track_running_stats
                           else torch.empty(0)).device)
    for name, child in module.named_children():
        new_child = convert_batchnorm(child, process_group)
        if new_child is not child:
            setattr(module, name, new_child)
    return module


def all_reduce_sum(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum ``t`` over processes (in place; returns it). A no-op in one process."""
    if info.enabled:
        dist.all_reduce(t)
    return t


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def broadcast_object(obj, info: DistInfo, src: int = 0):
    """Send a picklable object from ``src`` to every process (used for error messages only)."""
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def gather_objects(obj, info: DistInfo) -> Optional[list]:
    """All processes' ``obj`` in rank order, on every rank."""
    if not info.enabled:
        return [obj]
    out = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out

