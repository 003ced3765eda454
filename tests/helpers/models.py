"""Small networks the tests share: ``TinyNet`` (Distiller-style names, 1x8x8 input) and
``Untraceable`` (data-dependent control flow, which torch.fx cannot trace)."""
from __future__ import annotations

import torch
from torch import nn


class TinyNet(nn.Module):
    """conv1 -> bn1 -> relu -> conv2 -> relu -> pool -> fc, with Distiller-style names."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.relu2 = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.fc = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu1(self.bn1(self.conv1(x)))
        x = self.pool(self.relu2(self.conv2(x)))
        return self.fc(torch.flatten(x, 1))


class Untraceable(nn.Module):
    """Branches on the input's values, so torch.fx cannot trace it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        if x.sum() > 0:
            return self.conv(x)
        return x
