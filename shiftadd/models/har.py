"""``har-cnn``: a small 1-D CNN for wearable-sensor human-activity recognition.

Input: ``(N, channels, time)`` windows of inertial-sensor signals (e.g. 6 channels for USC-HAD's
accelerometer + gyroscope, 23 for MHEALTH); a 4-D ``(N, C, H, W)`` batch is read as ``C`` channels
of length ``H*W``. Three conv1d(k)-BN-ReLU layers (32-64-64 channels, max-pool after the first two),
global average pooling, and a linear classifier, so any window length >= 4 works. ShiftAddNet
evaluates its operators on two such IoT data sets (MHEALTH, USC-HAD); this model plays that role.
Every convolution is ``shiftadd.nn.conv_layer(op, ..., dim=1)`` followed by BatchNorm.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn as nn

from shiftadd.models.registry import register_model
from shiftadd.models.resnet import classifier, edge_op


class HarCNN(nn.Module):
    """1-D CNN: [conv1d-BN-ReLU(-maxpool)] x len(widths) -> global average pool -> linear."""

    def __init__(self, op: str = "conv", num_classes: int = 12, in_channels: int = 6,
                 widths: Sequence[int] = (32, 64, 64), kernel_size: int = 5, keep_first_last: bool = True,
                 **layer_options: Any) -> None:
        super().__init__()
        from shiftadd.nn import conv_layer

        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be a positive odd number, got {kernel_size}")
        if not widths:
            raise ValueError("widths must name at least one layer")
        layers = []
        c = in_channels
        for i, w in enumerate(widths):
            layer_op = edge_op(op, keep_first_last) if i == 0 else op
            layers += [conv_layer(layer_op, c, int(w), kernel_size, padding=kernel_size // 2, bias=False, dim=1,
                                  **layer_options),
                       nn.BatchNorm1d(int(w)), nn.ReLU(inplace=True)]
            if i < len(widths) - 1:
                layers.append(nn.MaxPool1d(2, ceil_mode=True))
            c = int(w)
        self.in_channels = in_channels
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool1d(1)
        self.fc = classifier(edge_op(op, keep_first_last), c, num_classes, **layer_options)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 4:
            x = x.flatten(2)
        if x.dim() != 3 or x.shape[1] != self.in_channels:
            raise ValueError(f"har-cnn expects (N, {self.in_channels}, time) input, got {tuple(x.shape)}")
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


@register_model("har-cnn", input_shape=(6, 128))
def har_cnn(op: str = "conv", num_classes: int = 12, **options: Any) -> HarCNN:
    """1-D CNN for sensor activity windows. Options: in_channels=6, widths=(32, 64, 64), kernel_size=5,
    keep_first_last, plus layer options."""
    return HarCNN(op=op, num_classes=num_classes, **options)
