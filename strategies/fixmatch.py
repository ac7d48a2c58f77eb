"""FedAvg + FixMatch (Sohn et al., NeurIPS 2020, arXiv:2001.07685): federated semi-supervised
baseline. The server is FedAvg, weighted by all local samples; ``clients/fixmatch.py`` trains on
labels and on confident pseudo-labels of unlabeled data.
"""

from fedsim.strategy import FedsimStrategy


class FedAvgFixMatch(FedsimStrategy):
    """FedAvg over FixMatch clients."""


STRATEGY = FedAvgFixMatch
