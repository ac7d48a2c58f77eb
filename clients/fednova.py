"""FedNova client update (Wang et al., NeurIPS 2020, arXiv:2007.07481).

Local training is plain SGD (with momentum rho); the client also reports the l1 norm of its
accumulation vector a_i, which the server uses to normalise the update:
a_i = tau for plain SGD and [tau - rho (1 - rho^tau) / (1 - rho)] / (1 - rho) with momentum, where
tau is the number of local steps.
"""

from __future__ import annotations

from flwr.app import MetricRecord
from typing_extensions import override

from clients.base import Client, TrainStats
from fedsim.numerics import accumulation_norm, optimizer_momentum
from fedsim.protocols.fednova import TAU_EFF


class FedNovaClient(Client):
    """FedNova client: a FedAvg update, and its accumulation norm ``TAU_EFF``."""

    @override
    def metrics(self, stats: TrainStats) -> MetricRecord:
        metrics = super().metrics(stats)
        metrics[TAU_EFF] = accumulation_norm(stats.steps, optimizer_momentum(self.env.cfg.optimizer))
        return metrics


CLIENT = FedNovaClient
