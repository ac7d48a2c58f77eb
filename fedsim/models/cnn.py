"""The CNN of the FedAvg paper (McMahan et al., 2017).

Two 5x5 conv layers (32, 64 channels), each followed by 2x2 max pooling, a 512-unit fully connected layer and
a linear classifier.
"""

from __future__ import annotations

import torch
from torch import nn
from typing_extensions import override


class FedAvgCNN(nn.Module):
    """The CNN of the FedAvg paper: two 5x5 conv + max-pool blocks and a ``hidden``-unit classifier."""

    def __init__(self, input_shape: tuple[int, int, int], num_classes: int, hidden: int = 512) -> None:
        super().__init__()
        channels, height, width = input_shape
        self.features = nn.Sequential(
            nn.Conv2d(channels, 32, 5, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 5, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Flatten(),
        )
        flat = 64 * (height // 4) * (width // 4)
        self.classifier = nn.Sequential(nn.Linear(flat, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, num_classes))

    @override
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))
