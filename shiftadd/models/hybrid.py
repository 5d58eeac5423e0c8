"""Hybrid CIFAR ResNets (ShiftAddNAS, You et al., ICML 2022): each residual block has its own operator family.

``create("hybrid-resnet20", arch="found.yaml")`` builds the network an architecture describes
(see :mod:`shiftadd.nas.arch`); without ``arch`` every block uses ``op``, which is the zoo's
``resnet20`` of that family, layer for layer. The stem and the classifier stay multiplicative, as
in the zoo's ResNets. ``create("supernet-resnet20", ...)`` builds the weight-sharing supernet of
the search space (:class:`shiftadd.nas.supernet.Supernet`), trainable with ``shiftadd train``.
"""
from __future__ import annotations

import math
from typing import Any, Dict, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from shiftadd.models.registry import register_model
from shiftadd.models.resnet import BasicBlock, classifier, init_weights, three_stages
from shiftadd.nas.arch import ArchLike, Architecture, as_architecture, blocks_for_depth
from shiftadd.nas.space import ATTENTION, attention_allowed, family_properties, inner_channels

DEPTHS = (8, 14, 20, 32, 56)


def attention_heads(inner: int) -> int:
    """Heads of an attention block with ``inner`` query/key/value channels: 4, or 1 if 4 does not divide it."""
    return 4 if inner % 4 == 0 else 1


def attend(x: torch.Tensor, wq: torch.Tensor, wk: torch.Tensor, wv: torch.Tensor, wo: torch.Tensor) -> torch.Tensor:
    """Multi-head self-attention over the H*W positions of ``x`` (N, C, H, W); ``wq/wk/wv``: (inner, C),
    ``wo``: (C, inner). softmax(Q K^T / sqrt(d)) V per head, then the output projection."""
    n, c, h, w = x.shape
    heads = attention_heads(wq.shape[0])
    tokens = x.flatten(2).transpose(1, 2)  # (N, HW, C)

    def split(z: torch.Tensor) -> torch.Tensor:  # (N, HW, inner) -> (N, heads, HW, inner / heads)
        return z.reshape(n, h * w, heads, -1).transpose(1, 2)

    q, k, v = split(F.linear(tokens, wq)), split(F.linear(tokens, wk)), split(F.linear(tokens, wv))
    att = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), dim=-1)
    out = (att @ v).transpose(1, 2).reshape(n, h * w, -1)
    return F.linear(out, wo).transpose(1, 2).reshape(n, c, h, w)


class AttentionBlock(nn.Module):
    """Residual self-attention block (ShiftAddNAS's multiplication-based attention choice, here over the
    8x8 map of the last stage): out = relu(x + MHSA(BN(x))) with ``inner`` query/key/value channels."""

    def __init__(self, planes: int, inner: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(planes)
        self.q_weight, self.k_weight, self.v_weight = (nn.Parameter(torch.empty(inner, planes)) for _ in range(3))
        self.out_weight = nn.Parameter(torch.empty(planes, inner))
        for p in (self.q_weight, self.k_weight, self.v_weight, self.out_weight):
            nn.init.kaiming_uniform_(p, a=math.sqrt(5))  # nn.Linear's default

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + attend(self.norm(x), self.q_weight, self.k_weight, self.v_weight, self.out_weight))


def make_block(op: str, in_planes: int, planes: int, stride: int, width: float, shortcut: str = "B",
               layer_options: Optional[Dict[str, Any]] = None) -> nn.Module:
    """One searchable block: a basic block of family ``op`` or an attention block, inner width ``width``."""
    from shiftadd.errors import UserError

    mid = inner_channels(planes, width)
    if op == ATTENTION:
        if stride != 1 or in_planes != planes:
            raise UserError("an attention block must keep the size (stride 1, in = out channels): "
                            "use it only in the last stage after its first block")
        return AttentionBlock(planes, mid)
    return BasicBlock(op, in_planes, planes, stride, shortcut, layer_options, mid)


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
        choices = iter(enumerate(arch.blocks))
        per_stage = len(arch.blocks) // 3

        def block(cin: int, planes: int, stride: int) -> nn.Module:
            i, b = next(choices)
            if b.op == ATTENTION and not attention_allowed(i // per_stage, cin, planes, stride):
                from shiftadd.errors import UserError

                raise UserError(f"block {i}: attention is only allowed in stride-1 blocks of the last stage")
            return make_block(b.op, cin, planes, stride, b.width, shortcut, layer_options)

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
    from shiftadd.nas.supernet import Supernet

    def build(op: str = "conv", num_classes: int = 10, **options: Any) -> nn.Module:
        from shiftadd.errors import UserError

        if op != "conv":
            raise UserError("the supernet's operators are chosen with -O ops=[...], not with --op")
        return Supernet.from_options(depth, num_classes=num_classes, **options)

    # the registry reads a builder's options from its signature: show from_options' keywords
    import inspect

    params = [p for p in inspect.signature(Supernet.from_options).parameters.values() if p.name not in ("cls", "depth")]
    op_param = inspect.Parameter("op", inspect.Parameter.POSITIONAL_OR_KEYWORD, default="conv")
    build.__signature__ = inspect.Signature([op_param] + params)  # type: ignore[attr-defined]

    build.__doc__ = (f"Weight-sharing supernet of the hybrid ResNet-{depth} space (shiftadd.nas). Options: "
                     "mode=separate|shared|heterogeneous, ops=[...], widths=[...], sandwich, seed, reg_weight.")
    return build


for _depth in DEPTHS:
    register_model(f"hybrid-resnet{_depth}", input_shape=(3, 32, 32),
                   description=f"CIFAR ResNet-{_depth} whose blocks each take the operator (and width) of an "
                   "architecture file (ShiftAddNAS)", paper="ShiftAddNAS (You et al., ICML 2022)")(_hybrid_builder(_depth))
    register_model(f"supernet-resnet{_depth}", input_shape=(3, 32, 32),
                   description=f"weight-sharing supernet over the hybrid ResNet-{_depth} space (one sampled path per "
                   "training step)", paper="ShiftAddNAS (You et al., ICML 2022)")(_supernet_builder(_depth))
