"""Distiller's small test networks: simplenet_mnist, simplenet_v2_mnist and simplenet_cifar.

``simplenet_mnist`` is the same network as Caffe's LeNet-5 (conv1 20@5x5, conv2 50@5x5, fc1 500,
fc2), so it is built by that class. ``simplenet_v2_mnist`` swaps the two fully connected layers for
a global 4x4 average pool and one small ``fc`` (26,080 parameters). ``simplenet_cifar`` is the
classic 6-16-120-84 LeNet on 32x32 colour images (62,006 parameters).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .lenet import LeNet5
from .registry import architecture


class SimpleNetV2MNIST(nn.Module):
    """conv1 20@5x5 - pool - conv2 50@5x5 - pool - 4x4 average - fc 50->classes."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 20, kernel_size=5)
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(20, 50, kernel_size=5)
        self.relu2 = nn.ReLU()
        self.pool2 = nn.MaxPool2d(2, 2)
        self.avgpool = nn.AvgPool2d(4, stride=1)
        self.fc = nn.Linear(50, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.relu1(self.conv1(x)))
        x = self.pool2(self.relu2(self.conv2(x)))
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(x)


class SimpleNetCifar(nn.Module):
    """conv1 6@5x5 - pool - conv2 16@5x5 - pool - fc1 400->120 - fc2 120->84 - fc3 84->classes."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, kernel_size=5)
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(6, 16, kernel_size=5)
        self.relu2 = nn.ReLU()
        self.pool2 = nn.MaxPool2d(2, 2)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.relu3 = nn.ReLU()
        self.fc2 = nn.Linear(120, 84)
        self.relu4 = nn.ReLU()
        self.fc3 = nn.Linear(84, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.relu1(self.conv1(x)))
        x = self.pool2(self.relu2(self.conv2(x)))
        x = torch.flatten(x, 1)
        x = self.relu3(self.fc1(x))
        x = self.relu4(self.fc2(x))
        return self.fc3(x)


@architecture("simplenet_mnist", "mnist")
def simplenet_mnist(num_classes: int = 10) -> LeNet5:
    """Distiller's simplenet_mnist: the same layers and names as ``lenet5``."""
    return LeNet5(num_classes)


@architecture("simplenet_v2_mnist", "mnist")
def simplenet_v2_mnist(num_classes: int = 10) -> SimpleNetV2MNIST:
    return SimpleNetV2MNIST(num_classes)


@architecture("simplenet_cifar", "cifar10")
def simplenet_cifar(num_classes: int = 10) -> SimpleNetCifar:
    return SimpleNetCifar(num_classes)
