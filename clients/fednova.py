"""FedNova client update (Wang et al., NeurIPS 2020, arXiv:2007.07481).

Local training is plain SGD (with momentum rho); the client also reports the l1 norm of its
accumulation vector a_i, which the server uses to normalise the update:
a_i = tau for plain SGD and [tau - rho (1 - rho^tau) / (1 - rho)] / (1 - rho) with momentum, where
tau is the number of local steps.
"""

from __future__ import annotations

from flwr.app import MetricRecord

from clients.base import Client, TrainStats


def accumulation_norm(tau: int, momentum: float) -> float:
    """||a_i||_1 for tau local steps of SGD with the given momentum."""
    if momentum == 0.0:
        return float(tau)
    return (tau - momentum * (1.0 - momentum**tau) / (1.0 - momentum)) / (1.0 - momentum)


class FedNovaClient(Client):
    def metrics(self, stats: TrainStats) -> MetricRecord:
        metrics = super().metrics(stats)
        momentum = float(self.env.cfg.optimizer.momentum) if self.env.cfg.optimizer.name == "sgd" else 0.0
        metrics["tau-eff"] = accumulation_norm(stats.steps, momentum)
        return metrics


CLIENT = FedNovaClient
