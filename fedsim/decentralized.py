"""Base of the decentralized (peer-to-peer) strategies: no global model, a relay for peers' models.

Every client keeps its own, personalized model in its state store (``clients/peer.py``). Each
round the strategy decides, for every active client, whose models that client would receive
peer-to-peer, and sends it exactly those (``peer-<id>`` ArrayRecords: one message per client,
different content per client). The server holds only what the clients shared last (what a peer
would send when asked), relays it, and accounts the bytes that would cross each peer link:
``p2p_bytes`` (all links), ``p2p_busiest_node_bytes`` (max over nodes of sent + received) and the
links themselves (``p2p_link_src/dst/bytes``) in metrics.jsonl. ``bytes_up``/``bytes_down`` stay
what the relay moved.

Evaluation is personalized: every client evaluates its own model on its own test split
(``personal_test_split``); ``test_accuracy`` is the mean over clients, ``personal_accuracy`` the
per-client figures, ``subset_accuracy`` the mean accuracy with each client's argmax taken over the
labels it holds only (the official SCooL score, which inflates accuracy: report both).

Topologies (``strategy.topology``): ``none`` (local training only), ``ring``, ``full``, ``random``
(``strategy.num_neighbours`` peers drawn per client and round). Only peers that have shared a
model are candidates.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from typing_extensions import override

from fedsim.params import spec
from fedsim.protocols.messages import ARRAYS, CONFIG, PEER_RECORD, SERVER_ROUND
from fedsim.records import array_records_of, arrays_of, from_numpy, integer, record_bytes, to_numpy
from fedsim.seeding import rng
from fedsim.strategy import ClientReply, FedsimStrategy, StrategyParams

log = logging.getLogger("fedsim")

PEER_PREFIX = "peer-"


@dataclass(kw_only=True)
class PeerParams(StrategyParams):
    """Keys of the peer-to-peer strategies (D-PSGD, local, DisPFL, SCooL)."""

    topology: Literal["none", "ring", "full", "random"] = spec("who exchanges models with whom")
    num_neighbours: int = spec("peers each client exchanges with per round, random topology", ge=0)


def peer_records(content: RecordDict) -> dict[int, ArrayRecord]:
    """The peers' shared records a message carries, by peer id."""
    return {
        int(name[len(PEER_PREFIX) :]): record
        for name, record in array_records_of(content).items()
        if name.startswith(PEER_PREFIX)
    }


def link_metrics(links: list[tuple[int, int, int]]) -> dict[str, Any]:
    """Totals of one round's peer links (src, dst, bytes)."""
    per_node: dict[int, int] = {}
    for src, dst, size in links:
        per_node[src] = per_node.get(src, 0) + size
        per_node[dst] = per_node.get(dst, 0) + size
    return {
        "p2p-bytes": sum(size for _, _, size in links),
        "p2p-busiest-node-bytes": max(per_node.values(), default=0),
        "p2p-links": len(links),
        "p2p-link-src": [src for src, _, _ in links],
        "p2p-link-dst": [dst for _, dst, _ in links],
        "p2p-link-bytes": [size for _, _, size in links],
    }


class PeerToPeerStrategy(FedsimStrategy):
    """Relays peers' models per client; no aggregation, no global model."""

    params: PeerParams

    model_record = PEER_RECORD

    def __init__(self, cfg: Any, param_keys: list[str], params: StrategyParams) -> None:
        super().__init__(cfg, param_keys, params)
        self.shared: dict[int, ArrayRecord] = {}
        self.initial: ArrayRecord | None = None
        self.links: list[tuple[int, int, int]] = []

    # -- who talks to whom ------------------------------------------------------------------------
    def neighbours(self, client_id: int, server_round: int) -> list[int]:
        """Peers whose shared models ``client_id`` receives this round (the configured topology)."""
        s = self.params
        others = [c for c in sorted(self.shared) if c != client_id]
        if s.topology == "none":
            return []
        if s.topology == "full":
            return others
        if s.topology == "ring":
            n = int(self.cfg.num_clients)
            return [c for c in others if c in ((client_id - 1) % n, (client_id + 1) % n)]
        k = min(int(s.num_neighbours), len(others))
        return (
            sorted(
                int(c) for c in rng(self.cfg.seed, "peers", server_round, client_id).choice(others, k, replace=False)
            )
            if k
            else []
        )

    # -- train ------------------------------------------------------------------------------------
    @override
    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        if self.initial is None:
            self.initial = arrays
        self.links = []
        return super().configure_train(server_round, arrays, config, grid)

    @override
    def train_content(self, client_id: int, arrays: ArrayRecord, config: ConfigRecord) -> RecordDict:
        content = RecordDict({CONFIG: config})
        if client_id not in self.shared:  # first time active: the common initial model
            content[ARRAYS] = arrays
        for peer in self.neighbours(client_id, integer(config, SERVER_ROUND)):
            content[f"{PEER_PREFIX}{peer}"] = self.shared[peer]
            self.links.append((peer, client_id, record_bytes(self.shared[peer])))
        return content

    @override
    def aggregate(self, server_round: int, replies: list[ClientReply]) -> tuple[ArrayRecord, MetricRecord]:
        for reply in replies:
            self.shared[reply.client_id] = arrays_of(reply.content, self.model_record)
        metrics = self.aggregate_metrics(replies)
        for key, value in link_metrics(self.links).items():
            metrics[key] = value
        assert self.global_arrays is not None
        return self.global_arrays, metrics

    # -- personalized evaluation ------------------------------------------------------------------
    def evaluate_round(self, server_round: int, arrays: ArrayRecord, grid: Grid, evaluate: Callable) -> dict[str, Any]:
        """Every client evaluates its own model on its own test split (there is no global model)."""

        def content(client_id: int) -> RecordDict:
            own = RecordDict({CONFIG: ConfigRecord({SERVER_ROUND: server_round})})
            if client_id not in self.shared and self.initial is not None:
                own[ARRAYS] = self.initial
            return own

        return self.evaluate_on_clients(server_round, grid, content)

    # -- checkpoints ------------------------------------------------------------------------------
    @override
    def state_dict(self) -> dict[str, Any]:
        return {"shared": {cid: to_numpy(r) for cid, r in self.shared.items()}}

    @override
    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.shared = {int(cid): from_numpy(arrays) for cid, arrays in state.get("shared", {}).items()}
