"""FedAvg + FixMatch (Sohn et al., NeurIPS 2020).

FedAvg + FixMatch (Sohn et al., NeurIPS 2020, arXiv:2001.07685): federated semi-supervised baseline. The
server is FedAvg, weighted by all local samples; ``clients/fixmatch.py`` trains on labels and on confident
pseudo-labels of unlabeled data.
"""

from dataclasses import dataclass

from fedsim.params import spec
from fedsim.strategy import FedsimStrategy, StrategyParams


class FedAvgFixMatch(FedsimStrategy):
    """FedAvg over FixMatch clients (federated semi-supervised baseline).

    Notes
    -----
    The client trains on its labels and on confident pseudo-labels of its unlabeled samples, and
    replies as for FedAvg with ``NUM_EXAMPLES`` counting every local sample.

    References
    ----------
    Sohn et al., "FixMatch: Simplifying Semi-Supervised Learning with Consistency and Confidence",
    NeurIPS 2020, arXiv:2001.07685.
    """

    paper = "FedAvg with FixMatch clients, Sohn et al., NeurIPS 2020 (arXiv:2001.07685)"


@dataclass(kw_only=True)
class Params(StrategyParams):
    """FedAvg + FixMatch's hyperparameters (``configs/strategy/fixmatch.yaml``)."""

    threshold: float = spec("confidence for a pseudo-label", ge=0, le=1)
    unlabeled_weight: float = spec("weight of the pseudo-label loss", ge=0)


STRATEGY = FedAvgFixMatch
