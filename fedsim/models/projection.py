"""A backbone with a SimCLR projection head (for self-supervised twins, e.g. Twin-sight's g)."""

from __future__ import annotations

import torch
from torch import nn
from typing_extensions import override

from fedsim.models import embedding


class ProjectionModel(nn.Module):
    """A zoo model with a SimCLR projector in place of its last linear layer.

    A zoo model up to its penultimate layer (``embedding``) followed by a 2-layer MLP projector to
    ``out_dim``: the last linear layer is replaced by the projector, as in SimCLR.
    """

    def __init__(self, backbone: nn.Module, input_shape: tuple[int, int, int], out_dim: int = 128) -> None:
        super().__init__()
        self.features = embedding(backbone)
        with torch.no_grad():
            dim = self.features.eval()(torch.zeros(1, *input_shape)).shape[1]
        self.features.train()
        self.projector = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(inplace=True), nn.Linear(dim, out_dim))

    @override
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projector(self.features(x))
