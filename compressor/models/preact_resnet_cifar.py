"""Pre-activation CIFAR-10 ResNets (He et al., "Identity Mappings in Deep Residual Networks").

Each block is bn-relu-conv-bn-relu-conv plus the shortcut, with no activation after the sum; the
network ends with ``final_bn`` and ``final_relu``. Names follow Distiller's preact_resnet*_cifar:
``conv1``, ``layer1.0.pre_bn``, ``layer1.0.conv1``, ``layer1.0.bn``, ``layer1.0.conv2``,
``final_bn``, ``fc``. Where a block changes shape the shortcut is, by default, parameter-free
(2x2 average pooling, then zero channels padded on: option A); the ``*_conv_ds`` variants use a
1x1 convolution ``downsample`` applied to the block's pre-activation instead. Network slimming
prunes channels by the |gamma| of these batch norms.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from .layers import cifar_stages, conv1x1, conv3x3, kaiming_init
from .registry import architecture


class PreactBasicBlock(nn.Module):
    def __init__(self, in_channels: int, channels: int, stride: int = 1,
                 conv_downsample: bool = False):
        super().__init__()
        self.pre_bn = nn.BatchNorm2d(in_channels)
        self.pre_relu = nn.ReLU()
        self.conv1 = conv3x3(in_channels, channels, stride)
        self.bn = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU()
        self.conv2 = conv3x3(channels, channels)
        self.downsample = None
        self.conv_downsample = conv_downsample
        if stride != 1 or in_channels != channels:
            if conv_downsample:
                self.downsample = conv1x1(in_channels, channels, stride)
            else:
                pad = channels - in_channels
                layers = [nn.AvgPool2d(stride)] if stride != 1 else []
                # ConstantPad3d on an (N, C, H, W) tensor pads (W, H, C): zeros go on as channels.
                layers.append(nn.ConstantPad3d((0, 0, 0, 0, pad // 2, pad - pad // 2), 0.0))
                self.downsample = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        preact = self.pre_relu(self.pre_bn(x))
        if self.downsample is None:
            identity = x
        elif self.conv_downsample:
            identity = self.downsample(preact)  # the projection shares the pre-activation
        else:
            identity = self.downsample(x)
        out = self.relu(self.bn(self.conv1(preact)))
        out = self.conv2(out)
        return out + identity


class PreactResNetCifar(nn.Module):
    def __init__(self, blocks_per_stage: Sequence[int], num_classes: int = 10,
                 conv_downsample: bool = False):
        super().__init__()
        self.conv1 = conv3x3(3, 16)
        stages = cifar_stages(lambda i, o, st: PreactBasicBlock(i, o, st, conv_downsample), blocks_per_stage)
        self.layer1, self.layer2, self.layer3 = stages
        self.final_bn = nn.BatchNorm2d(64)
        self.final_relu = nn.ReLU()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)
        kaiming_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        x = self.layer3(self.layer2(self.layer1(x)))
        x = self.final_relu(self.final_bn(x))
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(x)


def _register(depth: int) -> None:
    n = (depth - 2) // 6

    def build(num_classes: int = 10) -> PreactResNetCifar:
        return PreactResNetCifar([n] * 3, num_classes)

    def build_conv_ds(num_classes: int = 10) -> PreactResNetCifar:
        return PreactResNetCifar([n] * 3, num_classes, conv_downsample=True)

    for fn, name, what in ((build, f"preact_resnet{depth}_cifar", "zero-padding shortcuts"),
                           (build_conv_ds, f"preact_resnet{depth}_cifar_conv_ds",
                            "1x1-convolution shortcuts")):
        fn.__name__ = fn.__qualname__ = name
        fn.__doc__ = f"Pre-activation ResNet-{depth} for CIFAR-10 with {what}."
        globals()[name] = architecture(name, "cifar10")(fn)


for _depth in (20, 32, 44, 56, 110):
    _register(_depth)
