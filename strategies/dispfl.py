"""DisPFL: "DisPFL: Towards Communication-Efficient Personalized Federated Learning via
Decentralized Sparse Training" (Dai, Shen, Li, Tian, Tao; ICML 2022, arXiv:2206.00187; official
code github.com/rong-dai/DisPFL).

Decentralized: every client keeps a personalized sparse model (its own mask, ERK-initialised,
updated by prune-and-regrow with a cosine-annealed rate; ``clients/dispfl.py``). Each round every
active client receives the sparse models of ``num_neighbours`` random peers, aggregates them
mask-aware into its own mask, trains, updates its mask, and shares its sparse model. The server
only relays and accounts: a sparse model crosses a link as its kept values plus a bitmap of its
mask (``fedsim/sparse.py``), which is what ``p2p_bytes`` counts.
"""

from __future__ import annotations

from flwr.app import ArrayRecord

from fedsim.decentralized import PeerToPeerStrategy
from fedsim.sparse import decode_sparse


class DisPFL(PeerToPeerStrategy):
    def model_problem(self, record: ArrayRecord) -> str | None:
        assert self.initial is not None
        try:
            decode_sparse(record, {k: tuple(v.shape) for k, v in self.initial.items()})
        except ValueError as err:
            return f"a malformed sparse model: {err}"
        return None


STRATEGY = DisPFL
