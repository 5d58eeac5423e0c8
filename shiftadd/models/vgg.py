"""VGG networks for 32x32 images.

* ``vgg-small``: AdderNet's CIFAR VGG-small (Chen et al., CVPR 2020, Table 1; the LQ-Nets
  VGG-small): 128-128-M-256-256-M-512-512-M, then one fully-connected layer.
* ``vgg19-small``: ShiftAddNet's VGG-19-small (You et al., NeurIPS 2020): the 16 convolutions
  of VGG-19 with BatchNorm, no dropout, and a small classifier 512-512-classes.

Every convolution is ``shiftadd.nn.conv_layer(op, ...)`` followed by BatchNorm and ReLU. The
first convolution and the last linear layer stay multiplicative unless ``keep_first_last=False``.
"""
from __future__ import annotations

from typing import Any, List, Sequence, Union

import torch
import torch.nn as nn

from shiftadd.models.registry import register_model
from shiftadd.models.resnet import classifier, edge_op, has_adder, init_weights

Cfg = Sequence[Union[int, str]]

VGG_SMALL: Cfg = (128, 128, "M", 256, 256, "M", 512, 512, "M")
VGG19: Cfg = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
              512, 512, 512, 512, "M", 512, 512, 512, 512, "M")


class VGG(nn.Module):
    """Conv/BN/ReLU stack described by ``cfg`` ("M" = 2x2 max-pool), then a classifier.

    ``hidden`` lists the widths of hidden fully-connected layers (of family ``op``, each followed
    by BatchNorm1d when it contains an adder, then ReLU).
    """

    def __init__(self, cfg: Cfg, op: str = "conv", num_classes: int = 10, in_channels: int = 3,
                 image_size: int = 32, hidden: Sequence[int] = (), keep_first_last: bool = True,
                 width_mult: float = 1.0, **layer_options: Any) -> None:
        super().__init__()
        from shiftadd.nn import conv_layer, linear_layer

        if width_mult <= 0:
            raise ValueError(f"width_mult must be > 0, got {width_mult}")
        self.op, self.keep_first_last = op, keep_first_last
        layers: List[nn.Module] = []
        c, size, first = in_channels, image_size, True
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
                size //= 2
                continue
            out = max(1, int(round(int(v) * width_mult)))
            layer_op = edge_op(op, keep_first_last) if first else op
            layers += [conv_layer(layer_op, c, out, 3, padding=1, bias=False, **layer_options),
                       nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
            c, first = out, False
        if size < 1:
            raise ValueError(f"image_size {image_size} is too small for {cfg.count('M')} poolings")
        self.features = nn.Sequential(*layers)
        head: List[nn.Module] = []
        features = c * size * size
        for h in hidden:
            head.append(linear_layer(op, features, h, bias=not has_adder(op), **layer_options))
            if has_adder(op):
                head.append(nn.BatchNorm1d(h))
            head.append(nn.ReLU(inplace=True))
            features = h
        head.append(classifier(edge_op(op, keep_first_last), features, num_classes, **layer_options))
        self.classifier = nn.Sequential(*head)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


@register_model("vgg-small", input_shape=(3, 32, 32), paper="AdderNet (Chen et al., CVPR 2020)")
def vgg_small(op: str = "conv", num_classes: int = 10, **options: Any) -> VGG:
    """AdderNet's VGG-small for CIFAR (6 conv layers + 1 FC). Options: in_channels, image_size,
    keep_first_last, width_mult, plus layer options."""
    return VGG(VGG_SMALL, op=op, num_classes=num_classes, **options)


@register_model("vgg19-small", input_shape=(3, 32, 32), paper="ShiftAddNet (You et al., NeurIPS 2020)")
def vgg19_small(op: str = "conv", num_classes: int = 10, **options: Any) -> VGG:
    """ShiftAddNet's VGG-19-small for CIFAR (16 conv layers, FC 512-512-classes, no dropout)."""
    options.setdefault("hidden", (512,))
    return VGG(VGG19, op=op, num_classes=num_classes, **options)

