"""FedProx client update (Li et al., MLSys 2020, arXiv:1812.06127).

Local objective: CE(f_w(x), y) + mu/2 * ||w - w_t||^2, with w_t the global weights received this
round and mu sent by the server as ``proximal-mu``.
"""

from __future__ import annotations

import torch
from flwr.app import ConfigRecord
from torch import nn
from typing_extensions import override

from clients.base import Client, TrainStats
from fedsim.protocols.fedprox import MU
from fedsim.records import number


class FedProxClient(Client):
    """FedProx client: local loss plus the proximal term ``mu / 2 * ||w - w_t||^2``."""

    @override
    def fit(self, model: nn.Module, config: ConfigRecord, server_round: int) -> TrainStats:
        self.mu = number(config, MU)
        self.anchor = [p.detach().clone() for p in model.parameters()]
        return super().fit(model, config, server_round)

    @override
    def loss(self, model: nn.Module, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        proximal = sum((p - a).pow(2).sum() for p, a in zip(model.parameters(), self.anchor))
        return super().loss(model, logits, y) + 0.5 * self.mu * proximal


CLIENT = FedProxClient
