"""Small building blocks and the weight initialisation the zoo's families share."""
from __future__ import annotations

import torch.nn as nn


def conv3x3(in_channels: int, out_channels: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    """3x3 convolution, padding 1, no bias (a batch norm follows)."""
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1,
                     groups=groups, bias=False)


def conv1x1(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    """1x1 convolution, no bias (a batch norm follows)."""
    return nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False)


def kaiming_init(model: nn.Module, linear_std: float | None = None) -> None:
    """He et al. (2015) initialisation for ReLU networks, as the ResNet and VGG papers use.

    Convolutions get N(0, 2/fan_out) weights and zero biases; batch norms start as the identity
    (gamma 1, beta 0). Linear layers keep PyTorch's default unless ``linear_std`` is given, in
    which case they get N(0, linear_std^2) weights and zero biases.
    """
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear) and linear_std is not None:
            nn.init.normal_(m.weight, 0.0, linear_std)
            nn.init.zeros_(m.bias)


def cifar_stages(make_block, blocks_per_stage) -> list:
    """The three stages of a CIFAR ResNet-style network (16, 32, 64 channels; strides 1, 2, 2).

    ``make_block(in_channels, out_channels, stride)`` builds one block; the first block of a stage
    takes its stride. Returns three ``nn.Sequential`` to assign to ``layer1``..``layer3``.
    """
    in_channels, stages = 16, []
    for channels, n, stride in zip((16, 32, 64), blocks_per_stage, (1, 2, 2)):
        blocks = []
        for i in range(n):
            blocks.append(make_block(in_channels, channels, stride if i == 0 else 1))
            in_channels = channels
        stages.append(nn.Sequential(*blocks))
    return stages
