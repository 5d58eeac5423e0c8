"""Spatial-shift networks for 32x32 images: ShiftResNet, FE-Net and AddressNet.

* ``shiftresnet{20,32,44,56,110}`` (Wu et al., CVPR 2018): the CIFAR ResNet with every basic
  block replaced by one CSC block, 1x1 conv (``expansion`` x out channels) -> BN -> ReLU ->
  shift -> 1x1 conv (carries the stride) -> BN, plus the shortcut (identity, or 1x1 conv + BN
  when the shape changes, as in the authors' code), then ReLU. ``shift`` picks the shift layer:
  ``"grouped"`` (fixed 3x3 grouped shift, the paper), ``"active"`` (Jeon & Kim) or ``"sparse"``
  (Chen et al., the paper's "ShiftResNet (SSL)").
* ``fe-net`` (Chen et al., CVPR 2019): a CIFAR-sized network of FE-Blocks. Unit ``i`` of an
  n-unit block computes on the first ``round(C*(i+1)/n)`` channels only (inverted bottleneck
  1x1 -> BN -> ReLU -> sparse shift -> 1x1 -> BN, residual) and passes the rest through, so
  more channels enter the computation as the block goes on; the last unit takes all channels
  and changes the width (no residual) or downsamples (stride 2).
* ``addressnet{20,44,56}`` (Zhong et al., WACV 2019): address-enhanced blocks, 1x1 group conv
  -> BN -> ReLU -> channel shift -> address shift (4 channel groups, left/up/right/down, views
  of one buffer) -> 1x1 group conv (one conv per direction group, reading its view) -> BN;
  identity residual, or average pooling + shortcut shift (concatenation) when downsampling.

Every 1x1 layer is ``shiftadd.nn.conv_layer(op, ...)`` followed by BatchNorm, so the 1x1 layers
can be adder, bit-shift or shift-add layers (``op="shiftadd"`` gives a ShiftResNet whose 1x1
convs are shift-add). The stem convolution and the classifier stay multiplicative unless
``keep_first_last=False``.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from shiftadd.models.registry import register_model
from shiftadd.models.resnet import classifier, edge_op, init_weights, three_stages
from shiftadd.nn.spatial_shift import (ActiveShift2d, AddressShift, ChannelShift, ShortcutShift, SparseShift2d,
                                       SpatialShift2d, sparse_shift_penalty)
from shiftadd.ops.spatial_shift import address_groups

SHIFT_KINDS = ("grouped", "active", "sparse")


def make_shift(kind: str, channels: int, kernel_size: int = 3, dilation: int = 1,
               shift_options: Optional[Dict[str, Any]] = None) -> nn.Module:
    """The shift layer ``kind`` ("grouped", "active" or "sparse") for ``channels`` channels."""
    opts = dict(shift_options or {})
    if kind == "grouped":
        return SpatialShift2d(channels, kernel_size=kernel_size, dilation=dilation, **opts)
    if kind == "active":
        return ActiveShift2d(channels, **opts)
    if kind == "sparse":
        return SparseShift2d(channels, **opts)
    raise ValueError(f"unknown shift kind {kind!r}; choose one of {SHIFT_KINDS}")


class _ShiftNetwork(nn.Module):
    """Common helper: the sparse-shift L1 penalty as a method a training loop can call."""

    def regularization_loss(self) -> torch.Tensor:
        """``lambda * sum(|a| + |b|)`` over the sparse shift layers (zero without any); add it to the loss."""
        return sparse_shift_penalty(self)


def _expanded(channels: int, expansion: float, multiple: int = 1) -> int:
    if expansion <= 0:
        raise ValueError(f"expansion must be positive, got {expansion}")
    mid = max(1, int(channels * expansion))
    return max(multiple, (mid + multiple - 1) // multiple * multiple)


class _Stem(nn.Module):
    def __init__(self, op: str, in_channels: int, width: int, keep_first_last: bool, layer_options) -> None:
        super().__init__()
        from shiftadd.nn import conv_layer

        first = edge_op(op, keep_first_last)
        self.conv = conv_layer(first, in_channels, width, 3, stride=1, padding=1, bias=False,
                               **(layer_options if first != "conv" else {}))
        self.bn = nn.BatchNorm2d(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


class _StagedShiftNetwork(_ShiftNetwork):
    """The CIFAR ResNet-(6n+2) skeleton with another block: 3x3 stem, three stages, pooling, classifier."""

    def _build(self, depth: int, op: str, in_channels: int, width: int, num_classes: int, keep_first_last: bool,
               layer_options: Dict[str, Any], make_block: Callable[[int, int, int], nn.Module]) -> None:
        if (depth - 2) % 6 != 0 or depth < 8:
            raise ValueError(f"{type(self).__name__} depth must be 6n+2 (8, 14, 20, 32, ...), got {depth}")
        self.stem = _Stem(op, in_channels, width, keep_first_last, layer_options)
        stages, in_planes = three_stages(width, (depth - 2) // 6, make_block)
        self.layer1, self.layer2, self.layer3 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        last = edge_op(op, keep_first_last)
        self.fc = classifier(last, in_planes, num_classes, **(layer_options if last != "conv" else {}))
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


# ---------------------------------------------------------------------------------------------
# ShiftResNet
# ---------------------------------------------------------------------------------------------
class CSCBlock(nn.Module):
    """Conv-shift-conv residual block (Wu et al., Fig. 5)."""

    def __init__(self, op: str, in_planes: int, planes: int, stride: int = 1, expansion: float = 3,
                 shift: str = "grouped", kernel_size: int = 3, dilation: int = 1,
                 shift_options: Optional[Dict[str, Any]] = None,
                 layer_options: Optional[Dict[str, Any]] = None) -> None:
        super().__init__()
        from shiftadd.nn import conv_layer

        opts = dict(layer_options or {})
        self.mid = mid = _expanded(planes, expansion)
        self.conv1 = conv_layer(op, in_planes, mid, 1, bias=False, **opts)
        self.bn1 = nn.BatchNorm2d(mid)
        self.shift = make_shift(shift, mid, kernel_size, dilation, shift_options)
        self.conv2 = conv_layer(op, mid, planes, 1, stride=stride, bias=False, **opts)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(conv_layer(op, in_planes, planes, 1, stride=stride, bias=False, **opts),
                                          nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(self.shift(out)))
        return F.relu(out + self.shortcut(x))


class ShiftResNet(_StagedShiftNetwork):
    """ShiftResNet-(6n+2) for 32x32 images: ResNet's basic blocks replaced by CSC blocks."""

    def __init__(self, depth: int, op: str = "conv", num_classes: int = 10, expansion: float = 3,
                 shift: str = "grouped", kernel_size: int = 3, dilation: int = 1, in_channels: int = 3,
                 width: int = 16, keep_first_last: bool = True, shift_options: Optional[Dict[str, Any]] = None,
                 **layer_options: Any) -> None:
        super().__init__()
        if shift not in SHIFT_KINDS:
            raise ValueError(f"unknown shift kind {shift!r}; choose one of {SHIFT_KINDS}")
        if width < 1 or num_classes < 1 or in_channels < 1:
            raise ValueError("width, in_channels and num_classes must be positive")
        self.op, self.depth, self.expansion, self.shift_kind = op, depth, expansion, shift
        self._build(depth, op, in_channels, width, num_classes, keep_first_last, layer_options,
                    lambda cin, planes, stride: CSCBlock(op, cin, planes, stride, expansion, shift, kernel_size,
                                                         dilation, shift_options, layer_options))


def _shiftresnet_builder(depth: int):
    def build(op: str = "conv", num_classes: int = 10, expansion: float = 3, **options: Any) -> ShiftResNet:
        return ShiftResNet(depth, op=op, num_classes=num_classes, expansion=expansion, **options)

    build.__doc__ = (f"ShiftResNet-{depth} (Wu et al. 2018). Options: expansion=3 (paper: 1, 3, 6, 9), "
                     "shift='grouped'|'active'|'sparse', kernel_size=3, dilation=1, width=16, in_channels=3, "
                     "keep_first_last=True, shift_options={...}, plus layer options.")
    return build


for _depth in (20, 32, 44, 56, 110):
    register_model(f"shiftresnet{_depth}", input_shape=(3, 32, 32),
                   paper="Wu et al., CVPR 2018")(_shiftresnet_builder(_depth))


# ---------------------------------------------------------------------------------------------
# FE-Net
# ---------------------------------------------------------------------------------------------
class FEUnit(nn.Module):
    """Inverted bottleneck with a shift: 1x1 (x expansion) -> BN -> ReLU -> shift -> 1x1 (stride) -> BN.

    With ``residual`` (same width, stride 1) the input is added to the output.
    """

    def __init__(self, op: str, in_planes: int, planes: int, stride: int = 1, expansion: float = 6,
                 residual: bool = True, shift: str = "sparse", shift_options: Optional[Dict[str, Any]] = None,
                 layer_options: Optional[Dict[str, Any]] = None) -> None:
        super().__init__()
        from shiftadd.nn import conv_layer

        opts = dict(layer_options or {})
        mid = _expanded(in_planes, expansion)
        self.residual = residual and stride == 1 and in_planes == planes
        self.conv1 = conv_layer(op, in_planes, mid, 1, bias=False, **opts)
        self.bn1 = nn.BatchNorm2d(mid)
        self.shift = make_shift(shift, mid, shift_options=shift_options)
        self.conv2 = conv_layer(op, mid, planes, 1, stride=stride, bias=False, **opts)
        self.bn2 = nn.BatchNorm2d(planes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.shift(F.relu(self.bn1(self.conv1(x))))))
        return out + x if self.residual else out


class FEBlock(nn.Module):
    """Fully-exploited computational block (Chen et al., CVPR 2019, Sec. 4).

    ``units - 1`` residual units, unit ``i`` computing on the first ``round(C*(i+1)/units)``
    channels and passing the others through (split -> compute -> concatenate), then a last unit
    on all channels that goes to ``out_planes`` channels with ``stride``.
    """

    def __init__(self, op: str, planes: int, out_planes: int, units: int = 3, stride: int = 1,
                 expansion: float = 6, shift: str = "sparse", shift_options: Optional[Dict[str, Any]] = None,
                 layer_options: Optional[Dict[str, Any]] = None) -> None:
        super().__init__()
        if units < 1:
            raise ValueError(f"an FE-Block needs at least one unit, got {units}")
        self.planes = planes
        self.splits: List[int] = []
        inner = []
        for i in range(units - 1):
            k = max(1, round(planes * (i + 1) / units))
            self.splits.append(k)
            inner.append(FEUnit(op, k, k, 1, expansion, True, shift, shift_options, layer_options))
        self.inner = nn.ModuleList(inner)
        self.last = FEUnit(op, planes, out_planes, stride, expansion, True, shift, shift_options, layer_options)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for k, unit in zip(self.splits, self.inner):
            if k == self.planes:
                x = unit(x)
            else:
                x = torch.cat([unit(x[:, :k]), x[:, k:]], dim=1)
        return self.last(x)


FE_NET_CIFAR: Tuple[Tuple[int, int, int, int], ...] = ((16, 3, 32, 2), (32, 3, 64, 2), (64, 3, 64, 1))


class FENet(_ShiftNetwork):
    """CIFAR-sized FE-Net: a 3x3 stem then FE-Blocks ``(planes, units, out_planes, stride)``."""

    def __init__(self, op: str = "conv", num_classes: int = 10, expansion: float = 6,
                 blocks: Sequence[Tuple[int, int, int, int]] = FE_NET_CIFAR, shift: str = "sparse",
                 in_channels: int = 3, keep_first_last: bool = True, shift_options: Optional[Dict[str, Any]] = None,
                 **layer_options: Any) -> None:
        super().__init__()
        if shift not in SHIFT_KINDS:
            raise ValueError(f"unknown shift kind {shift!r}; choose one of {SHIFT_KINDS}")
        blocks = [tuple(int(v) for v in b) for b in blocks]
        if not blocks or any(len(b) != 4 for b in blocks):
            raise ValueError("blocks must be a non-empty list of (planes, units, out_planes, stride)")
        self.op, self.expansion = op, expansion
        self.stem = _Stem(op, in_channels, blocks[0][0], keep_first_last, layer_options)
        body = []
        prev = blocks[0][0]
        for planes, units, out_planes, stride in blocks:
            if planes != prev:
                raise ValueError(f"block widths do not chain: {prev} -> {planes}")
            body.append(FEBlock(op, planes, out_planes, units, stride, expansion, shift, shift_options,
                                layer_options))
            prev = out_planes
        self.blocks = nn.Sequential(*body)
        self.pool = nn.AdaptiveAvgPool2d(1)
        last = edge_op(op, keep_first_last)
        self.fc = classifier(last, prev, num_classes, **(layer_options if last != "conv" else {}))
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.blocks(self.stem(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


@register_model("fe-net", input_shape=(3, 32, 32), aliases=("fe_net",), paper="Chen et al., CVPR 2019")
def fe_net(op: str = "conv", num_classes: int = 10, expansion: float = 6, **options: Any) -> FENet:
    """CIFAR FE-Net (Chen et al. 2019) with sparse shift layers. Options: expansion=6, blocks=FE_NET_CIFAR,
    shift='sparse'|'grouped'|'active', shift_options={'l1': 5e-4, ...}, keep_first_last=True, layer options."""
    return FENet(op=op, num_classes=num_classes, expansion=expansion, **options)


# ---------------------------------------------------------------------------------------------
# AddressNet
# ---------------------------------------------------------------------------------------------
class AddressBlock(nn.Module):
    """Address-enhanced block (Zhong et al., Fig. 5b), built from the three shift primitives."""

    def __init__(self, op: str, in_planes: int, planes: int, stride: int = 1, expansion: float = 3,
                 groups: int = 2, directions: Sequence[Optional[str]] = ("left", "up", "right", "down"),
                 layer_options: Optional[Dict[str, Any]] = None) -> None:
        super().__init__()
        from shiftadd.nn import conv_layer

        opts = dict(layer_options or {})
        nd = len(directions)
        self.downsample = stride != 1 or in_planes != planes
        branch = planes - in_planes if self.downsample else planes
        if branch < nd or branch % nd:
            raise ValueError(f"branch width {branch} must be a positive multiple of {nd} (directions)")
        if in_planes % groups:
            raise ValueError(f"groups={groups} must divide in_planes={in_planes}")
        mid = _expanded(planes, expansion, multiple=nd * groups)
        self.conv1 = conv_layer(op, in_planes, mid, 1, groups=groups, bias=False, **opts)
        self.bn1 = nn.BatchNorm2d(mid)
        self.channel_shift = ChannelShift(max(1, mid // (2 * groups)))
        self.address_shift = AddressShift(directions, return_groups=True)
        self.conv2 = nn.ModuleList(conv_layer(op, sl.stop - sl.start, branch // nd, 1, stride=stride, bias=False,
                                              **opts) for sl in address_groups(mid, nd))
        self.bn2 = nn.BatchNorm2d(branch)
        self.stride = stride
        self.concat = ShortcutShift()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        views = self.address_shift(self.channel_shift(out))
        out = self.bn2(torch.cat([conv(v) for conv, v in zip(self.conv2, views)], dim=1))
        if self.downsample:
            short = F.avg_pool2d(x, self.stride) if self.stride > 1 else x
            return F.relu(self.concat(short, out))
        return F.relu(out + x)


class AddressNet(_StagedShiftNetwork):
    """AddressNet-(6n+2) for 32x32 images: a 3x3 stem, three stages of address blocks."""

    def __init__(self, depth: int, op: str = "conv", num_classes: int = 10, expansion: float = 3,
                 groups: int = 2, width: int = 16, in_channels: int = 3, keep_first_last: bool = True,
                 directions: Sequence[Optional[str]] = ("left", "up", "right", "down"), **layer_options: Any) -> None:
        super().__init__()
        self.op, self.depth, self.expansion = op, depth, expansion
        self._build(depth, op, in_channels, width, num_classes, keep_first_last, layer_options,
                    lambda cin, planes, stride: AddressBlock(op, cin, planes, stride, expansion, groups, directions,
                                                             layer_options))


def _addressnet_builder(depth: int):
    def build(op: str = "conv", num_classes: int = 10, expansion: float = 3, **options: Any) -> AddressNet:
        return AddressNet(depth, op=op, num_classes=num_classes, expansion=expansion, **options)

    build.__doc__ = (f"AddressNet-{depth} (Zhong et al. 2019, address-enhanced blocks). Options: expansion=3, "
                     "groups=2, width=16, directions=('left','up','right','down'), keep_first_last=True, "
                     "plus layer options.")
    return build


for _depth in (20, 44, 56):
    register_model(f"addressnet{_depth}", input_shape=(3, 32, 32), paper="Zhong et al., WACV 2019")(
        _addressnet_builder(_depth))
