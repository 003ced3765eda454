"""The MNIST networks of Han et al. (2015): Caffe's LeNet-5 and the fully connected LeNet-300-100.

LeNet-5 here is Caffe's variant (20 and 50 filters, a 500-unit hidden layer, ReLU, max pooling),
431,080 parameters; LeNet-300-100 is 784-300-100-10, 266,610 parameters. Both keep PyTorch's
default (Kaiming-uniform) initialisation.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .registry import architecture


class LeNet5(nn.Module):
    """conv1 20@5x5 - pool - conv2 50@5x5 - pool - fc1 800->500 - fc2 500->classes (28x28 input)."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 20, kernel_size=5)
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(20, 50, kernel_size=5)
        self.relu2 = nn.ReLU()
        self.pool2 = nn.MaxPool2d(2, 2)
        self.fc1 = nn.Linear(50 * 4 * 4, 500)
        self.relu3 = nn.ReLU()
        self.fc2 = nn.Linear(500, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.relu1(self.conv1(x)))
        x = self.pool2(self.relu2(self.conv2(x)))
        x = torch.flatten(x, 1)
        x = self.relu3(self.fc1(x))
        return self.fc2(x)


class LeNet5BN(LeNet5):
    """LeNet-5 with a batch norm after each convolution (``bn1``, ``bn2``): the MNIST network for
    methods that need batch norms (network slimming ranks channels by their |gamma|)."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1):
        super().__init__(num_classes, in_channels)
        self.bn1 = nn.BatchNorm2d(20)
        self.bn2 = nn.BatchNorm2d(50)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.relu1(self.bn1(self.conv1(x))))
        x = self.pool2(self.relu2(self.bn2(self.conv2(x))))
        x = torch.flatten(x, 1)
        x = self.relu3(self.fc1(x))
        return self.fc2(x)


class LeNet300100(nn.Module):
    """Fully connected 784-300-100-classes with ReLU: fc1, fc2, fc3."""

    def __init__(self, num_classes: int = 10, in_features: int = 28 * 28):
        super().__init__()
        self.fc1 = nn.Linear(in_features, 300)
        self.relu1 = nn.ReLU()
        self.fc2 = nn.Linear(300, 100)
        self.relu2 = nn.ReLU()
        self.fc3 = nn.Linear(100, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(x, 1)
        x = self.relu1(self.fc1(x))
        x = self.relu2(self.fc2(x))
        return self.fc3(x)


@architecture("lenet5", "mnist")
def lenet5(num_classes: int = 10) -> LeNet5:
    """Caffe's LeNet-5 as pruned by Han et al.; 431,080 parameters."""
    return LeNet5(num_classes)


@architecture("lenet5_bn", "mnist")
def lenet5_bn(num_classes: int = 10) -> LeNet5BN:
    """LeNet-5 with batch norms after conv1 and conv2; 431,220 parameters."""
    return LeNet5BN(num_classes)


@architecture("lenet_300_100", "mnist")
def lenet_300_100(num_classes: int = 10) -> LeNet300100:
    """LeNet-300-100 as pruned by Han et al.; 266,610 parameters."""
    return LeNet300100(num_classes)
