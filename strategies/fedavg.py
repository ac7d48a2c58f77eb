"""FedAvg: "Communication-Efficient Learning of Deep Networks from Decentralized Data"
(McMahan et al., AISTATS 2017, arXiv:1602.05629).

Each round a fraction of clients trains the global model for E local epochs; the server replaces it
by the average of the returned weights, weighted by local sample counts. All of it is
:class:`fedsim.strategy.FedsimStrategy`'s default behaviour.
"""

from dataclasses import dataclass

from fedsim.strategy import FedsimStrategy, StrategyParams


class FedAvg(FedsimStrategy):
    """Federated averaging."""


@dataclass(kw_only=True)
class Params(StrategyParams):
    """FedAvg has no keys of its own."""


STRATEGY = FedAvg
