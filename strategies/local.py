"""Local-only training: every client trains its own model on its own data and never communicates.

The lower bar of personalized federated learning (e.g. the "Local" rows of DisPFL, Dai et al.,
ICML 2022, and SCooL, Li et al., ICML 2023): a decentralized strategy with no links
(``fedsim/decentralized.py``, topology ``none``); clients keep their models in their state stores
(``clients/peer.py``) and are evaluated on their own test splits.
"""

from __future__ import annotations

from dataclasses import dataclass

from fedsim.decentralized import PeerParams, PeerToPeerStrategy


@dataclass(kw_only=True)
class Params(PeerParams):
    """Local training: the topology is none."""


class Local(PeerToPeerStrategy):
    """Local training: each client trains its own model alone, with no links.

    Notes
    -----
    The client keeps its model in its state store, trains it each round it is sampled, and replies
    with its metrics only (``clients/dpsgd.py``'s update with no peers); it is evaluated on its own
    test split.

    References
    ----------
    The "Local" baseline of DisPFL (Dai et al., ICML 2022) and SCooL (Li et al., ICML 2023).
    """

    paper = "no communication: the lower bar of personalized FL"


STRATEGY = Local
