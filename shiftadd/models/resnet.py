"""CIFAR ResNets (He et al., CVPR 2016, Sec. 4.2): 3 stages of 16/32/64 channels, 6n+2 layers.

One definition for every operator family: each 3x3 and 1x1 convolution is built by
``shiftadd.nn.conv_layer(op, ...)`` and followed by BatchNorm (AdderNet needs it after
every adder layer). The stem convolution and the classifier stay multiplicative unless
``keep_first_last=False``; an adder classifier is then followed by BatchNorm1d, as in
AdderNet's ResNet-20.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from shiftadd.models.registry import register_model
from shiftadd.nn.families import families


def has_adder(op: str) -> bool:
    """True when layers of family ``op`` contain an adder (L1-distance) layer (BatchNorm must follow them)."""
    return any(f.name == op for f in families(has_adder=True))


def edge_op(op: str, keep_first_last: bool) -> str:
    """Operator family of the first/last layer: ``"conv"`` when they are kept multiplicative."""
    return "conv" if keep_first_last else op


def classifier(op: str, in_features: int, num_classes: int, **layer_options: Any) -> nn.Module:
    """Final linear layer of family ``op``; an adder classifier gets BatchNorm1d on the logits."""
    from shiftadd.nn import linear_layer

    if has_adder(op):
        return nn.Sequential(linear_layer(op, in_features, num_classes, bias=False, **layer_options),
                             nn.BatchNorm1d(num_classes))
    return linear_layer(op, in_features, num_classes, bias=True, **layer_options)


def init_weights(model: nn.Module) -> None:
    """He-normal (fan-out) init of every nn.Conv2d, BatchNorm scale 1 and shift 0."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def three_stages(width: int, blocks_per_stage: int,
                 make_block: Callable[[int, int, int], nn.Module]) -> Tuple[List[nn.Sequential], int]:
    """The CIFAR ResNet layout: stages of ``width``, 2x and 4x channels, the first block of stages 2
    and 3 with stride 2. ``make_block(in_planes, planes, stride)`` builds one block; returns the
    three stages and the channels of the last one."""
    stages: List[nn.Sequential] = []
    in_planes = width
    for i, planes in enumerate((width, 2 * width, 4 * width)):
        blocks = []
        for j in range(blocks_per_stage):
            blocks.append(make_block(in_planes, planes, 2 if (i > 0 and j == 0) else 1))
            in_planes = planes
        stages.append(nn.Sequential(*blocks))
    return stages, in_planes


class _PadShortcut(nn.Module):
    """Option-A shortcut: subsample by ``stride`` and zero-pad the new channels (no parameters)."""

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.stride, self.pad = stride, planes - in_planes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))


class BasicBlock(nn.Module):
    """Two 3x3 layers of family ``op`` with BatchNorm, plus an identity/projection shortcut.

    ``mid_planes`` (default ``planes``) is the output width of the first layer (the block's inner width).
    """

    def __init__(self, op: str, in_planes: int, planes: int, stride: int = 1, shortcut: str = "B",
                 layer_options: Dict[str, Any] | None = None, mid_planes: int | None = None) -> None:
        super().__init__()
        from shiftadd.nn import conv_layer

        opts = dict(layer_options or {})
        mid = planes if mid_planes is None else int(mid_planes)
        self.conv1 = conv_layer(op, in_planes, mid, 3, stride=stride, padding=1, bias=False, **opts)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = conv_layer(op, mid, planes, 3, stride=1, padding=1, bias=False, **opts)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            if shortcut == "A":
                self.shortcut = _PadShortcut(in_planes, planes, stride)
            else:  # "B": 1x1 projection of the same family + BN, as in AdderNet's ResNet-20
                self.shortcut = nn.Sequential(
                    conv_layer(op, in_planes, planes, 1, stride=stride, bias=False, **opts),
                    nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for 32x32 images; ``op`` selects the operator family of the inner layers."""

    def __init__(self, depth: int, op: str = "conv", num_classes: int = 10, in_channels: int = 3,
                 width: int = 16, keep_first_last: bool = True, shortcut: str = "B",
                 **layer_options: Any) -> None:
        super().__init__()
        from shiftadd.nn import conv_layer

        if (depth - 2) % 6 != 0 or depth < 8:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2 (8, 14, 20, 32, ...), got {depth}")
        if shortcut not in ("A", "B"):
            raise ValueError(f"shortcut must be 'A' (zero-pad) or 'B' (projection), got {shortcut!r}")
        if width < 1 or in_channels < 1 or num_classes < 1:
            raise ValueError("width, in_channels and num_classes must be positive")
        n = (depth - 2) // 6
        self.op, self.depth, self.keep_first_last = op, depth, keep_first_last
        first = edge_op(op, keep_first_last)
        self.conv1 = conv_layer(first, in_channels, width, 3, stride=1, padding=1, bias=False,
                                **(layer_options if first != "conv" else {}))
        self.bn1 = nn.BatchNorm2d(width)
        stages, in_planes = three_stages(
            width, n, lambda cin, planes, stride: BasicBlock(op, cin, planes, stride, shortcut, layer_options))
        self.layer1, self.layer2, self.layer3 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        last = edge_op(op, keep_first_last)
        self.fc = classifier(last, in_planes, num_classes, **(layer_options if last != "conv" else {}))
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


def _builder(depth: int):
    def build(op: str = "conv", num_classes: int = 10, **options: Any) -> CifarResNet:
        return CifarResNet(depth, op=op, num_classes=num_classes, **options)

    build.__doc__ = (f"CIFAR ResNet-{depth} ({(depth - 2) // 6} basic blocks per stage). Options: in_channels=3, "
                     "width=16, keep_first_last=True, shortcut='B', plus layer options (weight_bits, eta, ...).")
    return build


for _depth in (8, 20, 32, 56, 110):
    register_model(f"resnet{_depth}", input_shape=(3, 32, 32), paper="He et al., CVPR 2016")(_builder(_depth))
