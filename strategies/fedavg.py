"""FedAvg (McMahan et al., AISTATS 2017).

FedAvg: "Communication-Efficient Learning of Deep Networks from Decentralized Data" (McMahan et al., AISTATS
2017, arXiv:1602.05629).

Each round a fraction of clients trains the global model for E local epochs; the server replaces it
by the average of the returned weights, weighted by local sample counts. All of it is
:class:`fedsim.strategy.FedsimStrategy`'s default behaviour.
"""

from dataclasses import dataclass

from fedsim.strategy import FedsimStrategy, StrategyParams


class FedAvg(FedsimStrategy):
    """Federated averaging: the sample-weighted mean of the clients' trained models.

    Notes
    -----
    The client trains the received model for ``local_epochs`` and replies with it (``ARRAYS``) and
    its sample count (``NUM_EXAMPLES`` in ``METRICS``); see :class:`fedsim.strategy.FedsimStrategy`.

    References
    ----------
    McMahan et al., "Communication-Efficient Learning of Deep Networks from Decentralized Data",
    AISTATS 2017, arXiv:1602.05629.
    """


@dataclass(kw_only=True)
class Params(StrategyParams):
    """FedAvg has no keys of its own."""


STRATEGY = FedAvg
