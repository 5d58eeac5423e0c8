"""Hybrid CIFAR ResNets (ShiftAddNAS, You et al., ICML 2022): each residual block has its own operator family.

``create("hybrid-resnet20", arch="found.yaml")`` builds the network an architecture describes
(see :mod:`shiftadd.nas.arch`); without ``arch`` every block uses ``op``, which is the zoo's
``resnet20`` of that family, layer for layer. The stem and the classifier stay multiplicative, as
in the zoo's ResNets. ``create("supernet-resnet20", ...)`` builds the weight-sharing supernet of
the search space (:class:`shiftadd.nas.supernet.Supernet`), trainable with ``shiftadd train``.
"""
from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from shiftadd.models.registry import register_model
from shiftadd.models.resnet import BasicBlock, classifier, init_weights, three_stages
from shiftadd.nas.arch import ArchLike, Architecture, as_architecture, blocks_for_depth
from shiftadd.nas.space import family_properties, inner_channels

DEPTHS = (8, 14, 20, 32, 56, 110)


class HybridResNet(nn.Module):
    """ResNet-(6n+2) for 32x32 images whose i-th basic block is of family ``arch.blocks[i].op``."""

    def __init__(self, arch: Architecture, num_classes: int = 10, in_channels: int = 3, width: int = 16,
                 shortcut: str = "B", **layer_options: Any) -> None:
        super().__init__()
        from shiftadd.nn import conv_layer

        for op in arch.ops:
            family_properties(op)  # unknown operator -> one-line UserError
        if shortcut not in ("A", "B"):
            raise ValueError(f"shortcut must be 'A' (zero-pad) or 'B' (projection), got {shortcut!r}")
        if width < 1 or in_channels < 1 or num_classes < 1:
            raise ValueError("width, in_channels and num_classes must be positive")
        self.arch, self.depth = arch, arch.depth
        self.conv1 = conv_layer("conv", in_channels, width, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        choices = iter(arch.blocks)

        def block(cin: int, planes: int, stride: int) -> nn.Module:
            b = next(choices)
            return BasicBlock(b.op, cin, planes, stride, shortcut, layer_options, inner_channels(planes, b.width))

        stages, in_planes = three_stages(width, len(arch.blocks) // 3, block)
        self.layer1, self.layer2, self.layer3 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = classifier("conv", in_planes, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


def resolve_arch(depth: int, op: str, arch: Optional[ArchLike]) -> Architecture:
    """The architecture to build: ``arch`` (checked against ``depth``) or every block of family ``op``."""
    from shiftadd.errors import UserError

    if arch is None:
        return Architecture.uniform(op, depth)
    if op != "conv":
        raise UserError("give either an operator family (op) or an architecture (arch), not both")
    a = as_architecture(arch)
    if len(a.blocks) != blocks_for_depth(depth):
        raise UserError(f"architecture has {len(a.blocks)} blocks but hybrid-resnet{depth} needs "
                        f"{blocks_for_depth(depth)} (3 stages of {blocks_for_depth(depth) // 3})")
    return a


def _hybrid_builder(depth: int):
    def build(op: str = "conv", num_classes: int = 10, arch: Optional[ArchLike] = None,
              **options: Any) -> HybridResNet:
        return HybridResNet(resolve_arch(depth, op, arch), num_classes=num_classes, **options)

    build.__doc__ = (f"Hybrid CIFAR ResNet-{depth}: arch=ARCH.yaml (or a dict / Architecture) gives each block's "
                     "operator and width; without it every block is of family op. Options: in_channels=3, "
                     "width=16, shortcut='B', plus layer options.")
    return build


def _supernet_builder(depth: int):
    def build(op: str = "conv", num_classes: int = 10, **options: Any) -> nn.Module:
        from shiftadd.errors import UserError
        from shiftadd.nas.supernet import Supernet

        if op != "conv":
            raise UserError("the supernet's operators are chosen with -O ops=[...], not with --op")
        return Supernet.from_options(depth, num_classes=num_classes, **options)

    build.__doc__ = (f"Weight-sharing supernet of the hybrid ResNet-{depth} space (shiftadd.nas). Options: "
                     "mode=separate|shared|heterogeneous, ops=[...], widths=[...], sandwich, seed, reg_weight.")
    return build


for _depth in DEPTHS:
    register_model(f"hybrid-resnet{_depth}")(_hybrid_builder(_depth))
    register_model(f"supernet-resnet{_depth}")(_supernet_builder(_depth))
