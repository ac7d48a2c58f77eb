"""ResNet-18 for small (32x32-like) images.

As used by FedFed, FedImpro and Twin-sight: a 3x3 stride-1 stem without max pooling, then the four standard
stages (He et al., 2016).
"""

from __future__ import annotations

import torch
from torch import nn
from typing_extensions import override


class BasicBlock(nn.Module):
    """ResNet's basic residual block (two 3x3 convolutions with BatchNorm)."""

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    @override
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet(nn.Module):
    """ResNet for small images (3x3 stem, no max-pool), ``width`` channels in the first stage."""

    def __init__(
        self, blocks: tuple[int, ...], input_shape: tuple[int, int, int], num_classes: int, width: int = 64
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [
            nn.Conv2d(input_shape[0], width, 3, 1, 1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
        ]
        in_planes = width
        for stage, count in enumerate(blocks):
            planes = width * 2**stage
            for i in range(count):
                layers.append(BasicBlock(in_planes, planes, 2 if (stage > 0 and i == 0) else 1))
                in_planes = planes
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(in_planes, num_classes)

    @override
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def resnet18(input_shape: tuple[int, int, int], num_classes: int, width: int = 64) -> ResNet:
    """ResNet-18 for small images."""
    return ResNet((2, 2, 2, 2), input_shape, num_classes, width)
