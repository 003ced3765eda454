"""Plain-20 for CIFAR-10: ResNet-20 without its shortcuts (He et al. use it as the baseline).

Names equal ``resnet20_cifar``'s (``conv1``, ``bn1``, ``layer1.0.conv1``, ``layer1.0.bn1``, ``fc``),
without any ``downsample``. ``plain20_cifar_nobn`` has no batch norms at all (and, as in
Distiller, no convolution biases either).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .layers import cifar_stages, conv3x3, kaiming_init
from .registry import architecture


def _bn(channels: int, batch_norm: bool) -> nn.Module:
    return nn.BatchNorm2d(channels) if batch_norm else nn.Identity()


class PlainBlock(nn.Module):
    def __init__(self, in_channels: int, channels: int, stride: int = 1, batch_norm: bool = True):
        super().__init__()
        self.conv1 = conv3x3(in_channels, channels, stride)
        self.bn1 = _bn(channels, batch_norm)
        self.relu1 = nn.ReLU()
        self.conv2 = conv3x3(channels, channels)
        self.bn2 = _bn(channels, batch_norm)
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu1(self.bn1(self.conv1(x)))
        return self.relu2(self.bn2(self.conv2(x)))


class PlainCifar(nn.Module):
    def __init__(self, blocks_per_stage=(3, 3, 3), num_classes: int = 10, batch_norm: bool = True):
        super().__init__()
        self.conv1 = conv3x3(3, 16)
        self.bn1 = _bn(16, batch_norm)
        self.relu = nn.ReLU()
        stages = cifar_stages(lambda i, o, st: PlainBlock(i, o, st, batch_norm), blocks_per_stage)
        self.layer1, self.layer2, self.layer3 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)
        kaiming_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(x)


@architecture("plain20_cifar", "cifar10")
def plain20_cifar(num_classes: int = 10) -> PlainCifar:
    return PlainCifar((3, 3, 3), num_classes)


@architecture("plain20_cifar_nobn", "cifar10")
def plain20_cifar_nobn(num_classes: int = 10) -> PlainCifar:
    return PlainCifar((3, 3, 3), num_classes, batch_norm=False)
