"""D-PSGD client (Lian et al., NeurIPS 2017): gossip step, then local SGD.

x_i <- (x_i + sum_{j in N(i)} x_j) / (1 + |N(i)|) over the received neighbour models (uniform
mixing weights: doubly stochastic on a ring or the full graph, row stochastic for random
neighbours), then the configured local epochs from x_i.
"""

from __future__ import annotations

from flwr.app import ArrayRecord, RecordDict
from typing_extensions import override

from clients.peer import PeerClient, State, weighted_mix


class DPSGDClient(PeerClient):
    """D-PSGD client: the mean of its own and its neighbours' models, then local training."""

    @override
    def combine(self, state: State, peers: dict[int, ArrayRecord], content: RecordDict) -> State:
        states = [state, *(record.to_torch_state_dict() for record in peers.values())]
        return weighted_mix(states, [1.0] * len(states))


CLIENT = DPSGDClient
