"""The CIFAR-10 ResNets of He et al. (2016): resnet20/32/44/56/110_cifar.

Three stages of 16, 32 and 64 channels with n basic blocks each (depth 6n+2). Where a block changes
shape, its shortcut is ``downsample = Sequential(conv1x1, bn)`` (the paper's option B, as in
Distiller), so the parameter names equal Distiller's: ``conv1``, ``bn1``, ``layer1.0.conv1``,
``layer1.0.bn1``, ``layer2.0.downsample.0``, ``fc``. ResNet-20 has 272,474 parameters and
40.8M MACs.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from .layers import cifar_stages, conv3x3, kaiming_init
from .resnet_imagenet import BasicBlock   # the same block; CIFAR nets use it at 16/32/64 channels
from .registry import architecture


class ResNetCifar(nn.Module):
    """conv1-bn1-relu, layer1..3 (16/32/64 channels, strides 1/2/2), global average, fc."""

    def __init__(self, blocks_per_stage: Sequence[int], num_classes: int = 10):
        super().__init__()
        self.conv1 = conv3x3(3, 16)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU()
        stages = cifar_stages(BasicBlock, blocks_per_stage)
        self.layer1, self.layer2, self.layer3 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)
        kaiming_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(x)


@architecture("resnet20_cifar", "cifar10")
def resnet20_cifar(num_classes: int = 10) -> ResNetCifar:
    return ResNetCifar([3, 3, 3], num_classes)


@architecture("resnet32_cifar", "cifar10")
def resnet32_cifar(num_classes: int = 10) -> ResNetCifar:
    return ResNetCifar([5, 5, 5], num_classes)


@architecture("resnet44_cifar", "cifar10")
def resnet44_cifar(num_classes: int = 10) -> ResNetCifar:
    return ResNetCifar([7, 7, 7], num_classes)


@architecture("resnet56_cifar", "cifar10")
def resnet56_cifar(num_classes: int = 10) -> ResNetCifar:
    return ResNetCifar([9, 9, 9], num_classes)


@architecture("resnet110_cifar", "cifar10")
def resnet110_cifar(num_classes: int = 10) -> ResNetCifar:
    return ResNetCifar([18, 18, 18], num_classes)
