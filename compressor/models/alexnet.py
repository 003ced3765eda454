"""AlexNet (Krizhevsky et al., 2012) in torchvision's single-tower layout and names.

Distiller's AlexNet schedules (and Han et al.'s AlexNet results) name ``features.0`` ..
``features.10`` (the five convolutions are 0, 3, 6, 8, 10) and ``classifier.1``, ``classifier.4``,
``classifier.6`` (the three Linear layers); these match torchvision's, so its weights load with
``strict=True``. Each ReLU is its own module; initialisation is PyTorch's default, as torchvision's.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .registry import architecture


class AlexNet(nn.Module):
    def __init__(self, num_classes: int = 1000, dropout: float = 0.5):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2), nn.ReLU(),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(64, 192, kernel_size=5, padding=2), nn.ReLU(),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(192, 384, kernel_size=3, padding=1), nn.ReLU(),
            nn.Conv2d(384, 256, kernel_size=3, padding=1), nn.ReLU(),
            nn.Conv2d(256, 256, kernel_size=3, padding=1), nn.ReLU(),
            nn.MaxPool2d(kernel_size=3, stride=2),
        )
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        self.classifier = nn.Sequential(
            nn.Dropout(dropout), nn.Linear(256 * 6 * 6, 4096), nn.ReLU(),
            nn.Dropout(dropout), nn.Linear(4096, 4096), nn.ReLU(),
            nn.Linear(4096, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(self.avgpool(self.features(x)), 1)
        return self.classifier(x)


@architecture("alexnet", "imagenet", torchvision_weights="alexnet")
def alexnet(num_classes: int = 1000) -> AlexNet:
    return AlexNet(num_classes)
