"""The 2NN of the FedAvg paper: two hidden layers of 200 ReLU units; for tiny inputs."""

from __future__ import annotations

import math

import torch
from torch import nn
from typing_extensions import override


class MLP(nn.Module):
    """The 2NN of the FedAvg paper: two hidden layers of ``hidden`` units."""

    def __init__(self, input_shape: tuple[int, int, int], num_classes: int, hidden: int = 200) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Flatten(),
            nn.Linear(math.prod(input_shape), hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, hidden),
            nn.ReLU(inplace=True),
        )
        self.classifier = nn.Linear(hidden, num_classes)

    @override
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))
