"""MobileNet v1 (Howard et al., 2017): ImageNet widths 1.0/0.75/0.5/0.25, and a CIFAR-10 version.

Names follow Distiller's ``mobilenet``: ``model.0`` is the stem (conv, bn, relu), ``model.1`` ..
``model.13`` are the depthwise-separable blocks (``model.N.0`` depthwise 3x3 conv, ``.1`` bn,
``.3`` pointwise 1x1 conv, ``.4`` bn), ``model.14`` the global average pool, then ``fc``. Channel
counts are ``max(floor(c * width), 8)``. ``mobilenet_cifar`` is the same network with a stride-1
stem, so 32x32 inputs end at 2x2 before the pool, and 10 classes.
"""
from __future__ import annotations

from math import floor

import torch
import torch.nn as nn

from .layers import kaiming_init
from .registry import ModelZooError, architecture

# (output channels, stride) of the 13 depthwise-separable blocks.
BLOCKS = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
          (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1)]


def _conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                  groups: int = 1) -> list:
    return [nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride,
                      padding=kernel_size // 2, groups=groups, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU()]


class MobileNet(nn.Module):
    def __init__(self, width: float = 1.0, num_classes: int = 1000, stem_stride: int = 2,
                 min_channels: int = 8):
        super().__init__()
        if width <= 0:
            raise ModelZooError(f"MobileNet width must be > 0, got {width}")

        def scaled(c: int) -> int:
            return max(floor(c * width), min_channels)

        c_in = scaled(32)
        layers = [nn.Sequential(*_conv_bn_relu(3, c_in, 3, stride=stem_stride))]
        for c, stride in BLOCKS:
            c_out = scaled(c)
            layers.append(nn.Sequential(*_conv_bn_relu(c_in, c_in, 3, stride, groups=c_in),
                                        *_conv_bn_relu(c_in, c_out, 1)))
            c_in = c_out
        layers.append(nn.AdaptiveAvgPool2d(1))
        self.model = nn.Sequential(*layers)
        self.fc = nn.Linear(c_in, num_classes)
        kaiming_init(self, linear_std=0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(self.model(x), 1)
        return self.fc(x)


@architecture("mobilenet", "imagenet")
def mobilenet(num_classes: int = 1000) -> MobileNet:
    """MobileNet v1, width 1.0 (4.2M parameters, 569M MACs)."""
    return MobileNet(1.0, num_classes)


@architecture("mobilenet_075", "imagenet")
def mobilenet_075(num_classes: int = 1000) -> MobileNet:
    return MobileNet(0.75, num_classes)


@architecture("mobilenet_050", "imagenet")
def mobilenet_050(num_classes: int = 1000) -> MobileNet:
    return MobileNet(0.5, num_classes)


@architecture("mobilenet_025", "imagenet")
def mobilenet_025(num_classes: int = 1000) -> MobileNet:
    return MobileNet(0.25, num_classes)


@architecture("mobilenet_cifar", "cifar10")
def mobilenet_cifar(num_classes: int = 10) -> MobileNet:
    """MobileNet v1 for 32x32 inputs: stride-1 stem, width 1.0."""
    return MobileNet(1.0, num_classes, stem_stride=1)
