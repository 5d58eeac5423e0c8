"""Small MNIST models.

* ``mnist-mlp``: DeepShift's "simple FC model" (Elhoushi et al., 2021): 784-512-512-10 with ReLU
  and dropout 0.2.
* ``mnist-cnn``: DeepShift's "simple conv model": conv5x5(20)-pool-conv5x5(50)-pool-FC500-FC10.
* ``lenet5``: LeNet-5 (LeCun et al., 1998) with ReLU and max-pooling: conv5x5(6, pad 2)-pool-
  conv5x5(16)-pool-FC120-FC84-FC10.

Every conv/linear layer is built through ``shiftadd.nn.conv_layer/linear_layer(op, ...)``. As in
DeepShift, these models have biases and no BatchNorm for the multiplicative and shift families;
a layer that contains an adder is followed by BatchNorm (and has no bias). The first and last
layers stay multiplicative unless ``keep_first_last=False`` (DeepShift converts every layer, so its
MNIST numbers are reproduced with ``keep_first_last=False``).
"""
from __future__ import annotations

from typing import Any, List, Sequence, Tuple

import torch
import torch.nn as nn

from shiftadd.models.registry import register_model
from shiftadd.models.resnet import edge_op, has_adder


def _linear(op: str, i: int, o: int, norm: bool, **opts: Any) -> List[nn.Module]:
    from shiftadd.nn import linear_layer

    adder = has_adder(op)
    mods: List[nn.Module] = [linear_layer(op, i, o, bias=not adder, **opts)]
    if adder or norm:
        mods.append(nn.BatchNorm1d(o))
    return mods


def _conv(op: str, i: int, o: int, k: int, padding: int, norm: bool, **opts: Any) -> List[nn.Module]:
    from shiftadd.nn import conv_layer

    adder = has_adder(op)
    mods: List[nn.Module] = [conv_layer(op, i, o, k, padding=padding, bias=not adder, **opts)]
    if adder or norm:
        mods.append(nn.BatchNorm2d(o))
    return mods


class MnistMLP(nn.Module):
    """DeepShift's simple FC model: in-512-512-classes, ReLU, dropout 0.2 after each hidden layer."""

    def __init__(self, op: str = "conv", num_classes: int = 10, in_channels: int = 1, image_size: int = 28,
                 hidden: int = 512, dropout: float = 0.2, keep_first_last: bool = True,
                 batch_norm: bool = False, **layer_options: Any) -> None:
        super().__init__()
        first, last = edge_op(op, keep_first_last), edge_op(op, keep_first_last)
        d = in_channels * image_size * image_size
        self.net = nn.Sequential(
            nn.Flatten(),
            *_linear(first, d, hidden, batch_norm, **layer_options), nn.ReLU(inplace=True), nn.Dropout(dropout),
            *_linear(op, hidden, hidden, batch_norm, **layer_options), nn.ReLU(inplace=True), nn.Dropout(dropout),
            *_linear(last, hidden, num_classes, False, **layer_options),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ConvPoolNet(nn.Module):
    """Two conv5x5 -> ReLU -> max-pool(2) stages, then fully connected layers with ReLU
    (``mnist-cnn``: channels 20/50, FC 500; ``lenet5``: channels 6/16 with padding 2/0, FC 120-84)."""

    def __init__(self, name: str, channels: Tuple[int, int], paddings: Tuple[int, int], hidden: Sequence[int],
                 op: str = "conv", num_classes: int = 10, in_channels: int = 1, image_size: int = 28,
                 keep_first_last: bool = True, batch_norm: bool = False, **layer_options: Any) -> None:
        super().__init__()
        first, last = edge_op(op, keep_first_last), edge_op(op, keep_first_last)
        size = _feature_size(image_size, paddings)
        if size < 1:
            need = next(s for s in range(1, 1000) if _feature_size(s, paddings) >= 1)
            raise ValueError(f"image_size {image_size} is too small for {name} (needs >= {need})")
        c1, c2 = channels
        self.features = nn.Sequential(
            *_conv(first, in_channels, c1, 5, paddings[0], batch_norm, **layer_options), nn.ReLU(inplace=True),
            nn.MaxPool2d(2, 2),
            *_conv(op, c1, c2, 5, paddings[1], batch_norm, **layer_options), nn.ReLU(inplace=True), nn.MaxPool2d(2, 2),
        )
        fc: List[nn.Module] = [nn.Flatten()]
        width = c2 * size * size
        for h in hidden:
            fc += [*_linear(op, width, h, batch_norm, **layer_options), nn.ReLU(inplace=True)]
            width = h
        self.classifier = nn.Sequential(*fc, *_linear(last, width, num_classes, False, **layer_options))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def _feature_size(image_size: int, paddings: Tuple[int, int]) -> int:
    """Side of the feature maps after the two conv5x5 + pool(2) stages."""
    size = image_size
    for p in paddings:
        size = (size + 2 * p - 4) // 2
    return size


@register_model("mnist-mlp", input_shape=(1, 28, 28))
def mnist_mlp(op: str = "conv", num_classes: int = 10, **options: Any) -> MnistMLP:
    """DeepShift's 3-layer MLP (784-512-512-10). Options: in_channels, image_size, hidden, dropout,
    keep_first_last, batch_norm, plus layer options."""
    return MnistMLP(op=op, num_classes=num_classes, **options)


@register_model("mnist-cnn", input_shape=(1, 28, 28))
def mnist_cnn(op: str = "conv", num_classes: int = 10, **options: Any) -> ConvPoolNet:
    """DeepShift's 2-conv CNN. Options: in_channels, image_size, keep_first_last, batch_norm, layer options."""
    return ConvPoolNet("mnist-cnn", (20, 50), (0, 0), (500,), op=op, num_classes=num_classes, **options)


@register_model("lenet5", input_shape=(1, 28, 28))
def lenet5(op: str = "conv", num_classes: int = 10, **options: Any) -> ConvPoolNet:
    """LeNet-5. Options: in_channels, image_size, keep_first_last, batch_norm, layer options."""
    return ConvPoolNet("lenet5", (6, 16), (2, 0), (120, 84), op=op, num_classes=num_classes, **options)
