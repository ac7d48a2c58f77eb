"""DisPFL (Dai et al., ICML 2022).

DisPFL: "DisPFL: Towards Communication-Efficient Personalized Federated Learning via Decentralized Sparse
Training" (Dai, Shen, Li, Tian, Tao; ICML 2022, arXiv:2206.00187; official code github.com/rong-dai/DisPFL).

Decentralized: every client keeps a personalized sparse model (its own mask, ERK-initialised,
updated by prune-and-regrow with a cosine-annealed rate; ``clients/dispfl.py``). Each round every
active client receives the sparse models of ``num_neighbours`` random peers, aggregates them
mask-aware into its own mask, trains, updates its mask, and shares its sparse model. The server
only relays and accounts: a sparse model crosses a link as its kept values plus a bitmap of its
mask (``fedsim/sparse.py``), which is what ``p2p_bytes`` counts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from flwr.app import ArrayRecord
from typing_extensions import override

from fedsim.decentralized import PeerParams, PeerToPeerStrategy
from fedsim.params import spec
from fedsim.sparse import decode_sparse


class DisPFL(PeerToPeerStrategy):
    """DisPFL: decentralized sparse training of personalized models.

    The server relays each active client's sparse model to ``num_neighbours`` random peers and
    accounts every link's traffic (kept values plus a mask bitmap); it holds no model of its own.

    Notes
    -----
    The client keeps a personal mask, aggregates the received sparse models mask-aware into it,
    trains, prunes and regrows its mask, and replies with its sparse model under ``PEER_RECORD``
    and its ``METRICS`` (``clients/dispfl.py``).

    References
    ----------
    Dai et al., "DisPFL: Towards Communication-Efficient Personalized Federated Learning via
    Decentralized Sparse Training", ICML 2022, arXiv:2206.00187.
    """

    params: Params

    paper = "Dai et al., ICML 2022 (arXiv:2206.00187)"

    @override
    def model_problem(self, record: ArrayRecord) -> str | None:
        assert self.initial is not None
        try:
            decode_sparse(
                record,
                {k: tuple(v.shape) for k, v in self.initial.items()},
                {k: v.dtype for k, v in self.initial.items()},
            )
        except ValueError as err:
            return f"a malformed sparse model: {err}"
        return None


@dataclass(kw_only=True)
class Params(PeerParams):
    """DisPFL's hyperparameters (``configs/strategy/dispfl.yaml``)."""

    density: float = spec("fraction of kernel weights each personal mask keeps", gt=0, le=1)
    anneal_factor: float = spec("initial prune-and-regrow rate", ge=0, le=1)
    anneal_rounds: int | None = spec("length of the annealing schedule; null = num_rounds", ge=1)
    regrow: Literal["random", "gradient"] = spec("how pruned weights are regrown")


STRATEGY = DisPFL
