"""VGG-11/13/16/19 for CIFAR-10, with and without batch norm (Simonyan & Zisserman's A/B/D/E).

``features`` is one Sequential of conv3x3 (+ bn) + relu and 2x2 max pools, so the parameter names
are ``features.N.weight`` with Distiller's indices (vgg16_cifar: ``features.0``, ``features.2``,
``features.5`` ...; vgg16_bn_cifar: ``features.0``, ``features.1`` (bn), ``features.3`` ...). Five
pools bring 32x32 down to 1x1, and, as in Distiller, ``classifier`` is a single Linear 512->10
(not torchvision's three-layer head), so its parameters are ``classifier.weight``/``.bias``.
"""
from __future__ import annotations

from typing import List, Sequence, Union

import torch
import torch.nn as nn

from .layers import kaiming_init
from .registry import architecture

# Channels per 3x3 convolution, 'M' for a 2x2 max pool.
CONFIGS = {
    11: [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    13: [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    16: [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    19: [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
         512, 512, 512, 512, "M"],
}


def make_features(config: Sequence[Union[int, str]], batch_norm: bool,
                  in_channels: int = 3) -> nn.Sequential:
    layers: List[nn.Module] = []
    for v in config:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            continue
        layers.append(nn.Conv2d(in_channels, int(v), kernel_size=3, padding=1))
        if batch_norm:
            layers.append(nn.BatchNorm2d(int(v)))
        layers.append(nn.ReLU())
        in_channels = int(v)
    return nn.Sequential(*layers)


class VGGCifar(nn.Module):
    def __init__(self, depth: int, batch_norm: bool = False, num_classes: int = 10):
        super().__init__()
        self.features = make_features(CONFIGS[depth], batch_norm)
        self.classifier = nn.Linear(512, num_classes)
        kaiming_init(self, linear_std=0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(self.features(x), 1)
        return self.classifier(x)


@architecture("vgg11_cifar", "cifar10")
def vgg11_cifar(num_classes: int = 10) -> VGGCifar:
    return VGGCifar(11, False, num_classes)


@architecture("vgg11_bn_cifar", "cifar10")
def vgg11_bn_cifar(num_classes: int = 10) -> VGGCifar:
    return VGGCifar(11, True, num_classes)


@architecture("vgg13_cifar", "cifar10")
def vgg13_cifar(num_classes: int = 10) -> VGGCifar:
    return VGGCifar(13, False, num_classes)


@architecture("vgg13_bn_cifar", "cifar10")
def vgg13_bn_cifar(num_classes: int = 10) -> VGGCifar:
    return VGGCifar(13, True, num_classes)


@architecture("vgg16_cifar", "cifar10")
def vgg16_cifar(num_classes: int = 10) -> VGGCifar:
    return VGGCifar(16, False, num_classes)


@architecture("vgg16_bn_cifar", "cifar10")
def vgg16_bn_cifar(num_classes: int = 10) -> VGGCifar:
    return VGGCifar(16, True, num_classes)


@architecture("vgg19_cifar", "cifar10")
def vgg19_cifar(num_classes: int = 10) -> VGGCifar:
    return VGGCifar(19, False, num_classes)


@architecture("vgg19_bn_cifar", "cifar10")
def vgg19_bn_cifar(num_classes: int = 10) -> VGGCifar:
    return VGGCifar(19, True, num_classes)
