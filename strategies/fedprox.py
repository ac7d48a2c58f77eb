"""FedProx (Li et al., MLSys 2020).

FedProx: "Federated Optimization in Heterogeneous Networks" (Li et al., MLSys 2020, arXiv:1812.06127).

The server is FedAvg; it sends ``proximal-mu`` so that each client minimises
CE + mu/2 * ||w - w_t||^2 around the received global weights w_t (see ``clients/fedprox.py``).
Flower's own FedProx does the same on the server; this one adds fedsim's sampling and reply checks.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from flwr.app import ArrayRecord, ConfigRecord, Message
from flwr.serverapp import Grid
from typing_extensions import override

from fedsim.params import spec
from fedsim.protocols.fedprox import MU
from fedsim.strategy import FedsimStrategy, StrategyParams


class FedProx(FedsimStrategy):
    """FedProx: FedAvg whose clients stay close to the global model.

    Notes
    -----
    The client minimises its loss plus ``mu / 2 * ||w - w_t||^2`` around the received weights
    ``w_t``, with ``mu`` sent as ``MU`` in ``CONFIG``, and replies as for FedAvg.

    References
    ----------
    Li et al., "Federated Optimization in Heterogeneous Networks", MLSys 2020, arXiv:1812.06127.
    """

    params: Params

    paper = "Li et al., MLSys 2020 (arXiv:1812.06127)"

    @override
    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        config[MU] = float(self.params.mu)
        return super().configure_train(server_round, arrays, config, grid)


@dataclass(kw_only=True)
class Params(StrategyParams):
    """FedProx's hyperparameters (``configs/strategy/fedprox.yaml``)."""

    mu: float = spec("FedProx proximal weight", ge=0)


STRATEGY = FedProx
