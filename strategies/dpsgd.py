"""D-PSGD (Lian et al., NeurIPS 2017).

D-PSGD: "Can Decentralized Algorithms Outperform Centralized Algorithms? A Case Study for Decentralized
Parallel Stochastic Gradient Descent" (Lian et al., NeurIPS 2017, arXiv:1705.09056).

Gossip averaging without a server model: each round every active client averages its model with
the models of its neighbours (``strategy.topology``: a fixed ring, the full graph, or
``num_neighbours`` random peers per round, as in DisPFL's D-PSGD baseline) and then trains
locally (``clients/dpsgd.py``). The server only relays the dense models and accounts the traffic
of every peer link (``fedsim/decentralized.py``); evaluation is per client on its own test split.
"""

from __future__ import annotations

from dataclasses import dataclass

from fedsim.decentralized import PeerParams, PeerToPeerStrategy


@dataclass(kw_only=True)
class Params(PeerParams):
    """D-PSGD's keys are the topology's."""


class DPSGD(PeerToPeerStrategy):
    """D-PSGD: gossip averaging with the neighbours, then local training.

    Notes
    -----
    The client averages its model with the peer models it receives (``peer-<id>`` ArrayRecords),
    trains, and replies with the trained model under ``PEER_RECORD`` (what its neighbours receive
    next) and its ``METRICS``.

    References
    ----------
    Lian et al., "Can Decentralized Algorithms Outperform Centralized Algorithms? A Case Study for
    Decentralized Parallel Stochastic Gradient Descent", NeurIPS 2017, arXiv:1705.09056.
    """

    paper = "Lian et al., NeurIPS 2017 (arXiv:1705.09056)"


STRATEGY = DPSGD
