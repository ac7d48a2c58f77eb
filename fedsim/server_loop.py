"""The server's round loop, shared by simulation and deployment.

Flower's ``Strategy.start`` runs a fixed number of rounds from scratch; fedsim drives the same
strategy methods itself so that a run can checkpoint, resume at the round after its last
checkpoint, account the bytes every message carries, survive failed rounds, and write one metrics
record and one progress line per round.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol

from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid

from fedsim.backends import SimulatedGrid
from fedsim.checkpoint import Checkpoint, save_checkpoint
from fedsim.client_state import discard_after
from fedsim.errors import FedsimError, RoundFailedError
from fedsim.progress import round_line, show
from fedsim.protocols.messages import (
    ACCURACY,
    ARRAYS,
    BATCH_SIZE,
    CLIENT_ID,
    CONFIG,
    INFO,
    LAST_CHECKPOINT,
    LOCAL_EPOCHS,
    LOSS,
    LR,
    NUM_EXAMPLES,
    TRAIN_LOSS,
)
from fedsim.records import array_records_of, arrays_of, integer, metrics_of, number, payload_bytes
from fedsim.reduction import client_error
from fedsim.results import RunDirectory
from fedsim.strategy import FedsimStrategy
from fedsim.tracking import RunLogger

log = logging.getLogger("fedsim")
HANDSHAKE_WAIT_S = 15.0  # how long the first handshake query waits for its answers; each repeat waits twice as long


def handshake(grid: Grid, nodes: list[int], timeout: float) -> list[tuple[int, int, int]]:
    """Ask ``nodes`` which client each hosts: [(node id, client id, #examples)] of those that answer."""
    query = [
        Message(RecordDict({CONFIG: ConfigRecord({})}), dst_node_id=n, message_type=MessageType.QUERY) for n in nodes
    ]
    answers = []
    for reply in grid.send_and_receive(query, timeout=timeout):
        if reply.has_error():
            log.warning("node %d did not answer the handshake: %s", reply.metadata.src_node_id, reply.error.reason)
            continue
        info = metrics_of(reply.content, INFO)
        answers.append((reply.metadata.src_node_id, integer(info, CLIENT_ID), integer(info, NUM_EXAMPLES)))
    return answers


def shares_global_arrays(messages: list[Message]) -> bool:
    """Whether every message carries the same global model and nothing else per client.

    Whether every message carries the same 'arrays' record (the global model), and nothing else per client:
    what :meth:`SimulatedGrid.send_and_reduce` sums against.
    """
    if not messages or list(array_records_of(messages[0].content)) != [ARRAYS]:
        return False
    first, names = arrays_of(messages[0].content), set(messages[0].content.keys())
    return all(m.content.get(ARRAYS) is first and m.content.keys() == names for m in messages)


def discover_clients(grid: Grid, expected: int, timeout: float) -> tuple[dict[int, int], dict[int, int]]:
    """Ask every connected node which client it hosts.

    (client id -> node id, client id -> #examples). A simulated grid knows the answer from the partition,
    without a message per registered client.
    """
    if isinstance(grid, SimulatedGrid):
        return grid.directory()
    deadline = time.time() + timeout
    nodes = sorted(grid.get_node_ids())
    while len(nodes) < expected and time.time() < deadline:
        time.sleep(0.5)
        nodes = sorted(grid.get_node_ids())
    if len(nodes) < expected:
        raise FedsimError(
            f"only {len(nodes)} of {expected} clients connected within {timeout:.0f}s: start more clients "
            "or lower num_clients"
        )
    node_of: dict[int, int] = {}
    sizes: dict[int, int] = {}
    pending, wait = nodes, HANDSHAKE_WAIT_S
    while pending:
        # A node can miss a query (e.g. a restarted server's, while the node still runs a killed run's last
        # message): ask the silent ones again, waiting twice as long each time, until the deadline.
        for node, cid, size in handshake(grid, pending, max(min(wait, deadline - time.time()), 1.0)):
            if cid in node_of and node_of[cid] != node:
                raise FedsimError(f"two nodes claim client id {cid}: give every client a distinct partition-id")
            node_of[cid], sizes[cid] = node, size
        answered = set(node_of.values())
        pending = [n for n in sorted(grid.get_node_ids()) if n not in answered]
        if len(node_of) >= expected or time.time() >= deadline:
            break
        wait *= 2
    if not node_of:
        raise FedsimError("no client answered the handshake: check the client logs")
    return node_of, sizes


class RoundObserver(Protocol):
    """An observer of each finished round, plugged in from above.

    Something plugged in from above that looks at each finished round (e.g. an attack's leakage, a privacy
    audit of the final model) and adds its metrics to the round's record.
    """

    def observe_round(self, server_round: int, arrays: ArrayRecord, record: dict[str, Any]) -> None:
        """Add metrics of round ``server_round`` (its global ``arrays``) to ``record``."""


class PrivacyAccountant(Protocol):
    """A DP defence's ledger (:class:`fedsim.privacy.defences.dp.PrivacyLedger`)."""

    def account_round(self, sampled: list[int], num_examples: dict[int, int], cfg: Any) -> dict[str, float]:
        """Add a round's releases; the privacy spent so far."""

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint keeps."""


@dataclass
class RoundLoop:
    """Everything the loop needs; ``evaluate`` maps global arrays to {'accuracy', 'loss'}."""

    grid: Grid
    strategy: FedsimStrategy
    cfg: Any
    run: RunDirectory
    evaluate: Callable[[ArrayRecord], dict[str, float]]
    ledger: PrivacyAccountant | None = None  # DP accounting, when a DP defence is on
    loggers: list[RunLogger] = field(default_factory=list)  # experiment tracking (the `logger` config group)
    observers: list[RoundObserver] = field(default_factory=list)  # plugged in from above (fedsim.privacy)

    def account_privacy(self, messages: list[Message]) -> dict[str, float]:
        """Add this round's DP releases to the ledger; the epsilon spent so far."""
        if self.ledger is None:
            return {}
        sampled = [self.strategy.client_of(m.metadata.dst_node_id) for m in messages]
        return self.ledger.account_round(sampled, self.strategy.num_examples, self.cfg)

    def train_config(self, server_round: int, last_checkpoint: int) -> ConfigRecord:
        """The instructions every train message of a round carries."""
        opt = self.cfg.optimizer
        return ConfigRecord(
            {
                LR: float(opt.lr) * float(opt.lr_decay) ** (server_round - 1),
                LOCAL_EPOCHS: int(self.cfg.local_epochs),
                BATCH_SIZE: int(self.cfg.batch_size),
                LAST_CHECKPOINT: last_checkpoint,
            }
        )

    def unanswered(
        self, server_round: int, messages: list[Message], replies: list[Message]
    ) -> tuple[list[Message], list[dict[str, Any]]]:
        """The replies of the sampled clients, and the clients that sent none.

        (replies from the sampled clients, clients that sent none): those whose node the SuperLink reports
        unavailable (an error reply in its name) and those silent past ``round_timeout``.
        """
        sampled = {m.metadata.dst_node_id for m in messages}
        node_of_message = {m.metadata.message_id: m.metadata.dst_node_id for m in messages}
        own = [r for r in replies if r.metadata.src_node_id in sampled]
        lost, answered = [], {r.metadata.src_node_id for r in own}
        for reply in replies:
            node = node_of_message.get(reply.metadata.reply_to_message_id)
            if reply.metadata.src_node_id not in sampled and node is not None:
                answered.add(node)
                lost.append(
                    {
                        "client": self.strategy.client_of(node),
                        "reason": client_error(reply) if reply.has_error() else "reply from another node",
                    }
                )
        for node in sorted(sampled - answered):
            lost.append(
                {
                    "client": self.strategy.client_of(node),
                    "reason": f"no reply within round_timeout={self.cfg.round_timeout}s",
                }
            )
        for entry in lost:
            log.warning("round %d: dropped client %d: %s", server_round, entry["client"], entry["reason"])
        return own, lost

    def admit_new_nodes(self) -> None:
        """Hand clients that connected since the last round to the strategy.

        Clients that connected since the last round (a device that was not there at the start; a restarted one
        comes back on its old node once Flower lets its key in again).
        """
        known = set(self.strategy.node_of.values())
        new = sorted(n for n in self.grid.get_node_ids() if n not in known)
        if not new:
            return
        node_of, sizes = dict(self.strategy.node_of), dict(self.strategy.num_examples)
        for node, cid, size in handshake(self.grid, new, self.cfg.connect_timeout):
            log.warning("client %d %s on node %d", cid, "rejoined" if cid in node_of else "joined", node)
            node_of[cid], sizes[cid] = node, size
        self.strategy.set_clients(node_of, sizes)

    def train_round(
        self, server_round: int, arrays: ArrayRecord, last_checkpoint: int, record: dict[str, Any]
    ) -> ArrayRecord:
        """Run one round's training and return the next global model.

        Send the round's train messages, aggregate the replies into the next global arrays (the same ones
        after a failed round) and note the round's traffic, replies and metrics in ``record``.
        """
        messages = list(
            self.strategy.configure_train(
                server_round, arrays, self.train_config(server_round, last_checkpoint), self.grid
            )
        )
        record["clients_sampled"] = len(messages)
        record.update(self.account_privacy(messages))
        record["bytes_down"] = sum(payload_bytes(m.content) for m in messages)
        lost: list[dict[str, Any]] = []
        aggregate: Callable[[], tuple[ArrayRecord | None, MetricRecord | None]]
        if (
            isinstance(self.grid, SimulatedGrid)
            and self.strategy.reduces_train_replies()
            and shares_global_arrays(messages)
        ):
            part = self.grid.send_and_reduce(messages, self.strategy.param_keys, timeout=self.cfg.round_timeout)
            record["bytes_up"], answered = part.bytes_up, len(part.clients) + len(part.dropped)
            aggregate = partial(self.strategy.aggregate_partial, server_round, part)
        else:
            replies, lost = self.unanswered(
                server_round, messages, list(self.grid.send_and_receive(messages, timeout=self.cfg.round_timeout))
            )
            record["bytes_up"], answered = (
                sum(payload_bytes(r.content) for r in replies if not r.has_error()),
                len(replies),
            )
            aggregate = partial(self.strategy.aggregate_train, server_round, replies)
        try:
            aggregated, metrics = aggregate()
            if aggregated is None or metrics is None:
                raise RoundFailedError(f"round {server_round}: the strategy aggregated no model")
            arrays = aggregated
            if TRAIN_LOSS in metrics:  # a round where nobody trained (FedSA's selection none) has none
                record["train_loss"] = number(metrics, TRAIN_LOSS)
            record.update({k.replace("-", "_"): v for k, v in metrics.items() if k != TRAIN_LOSS})
        except RoundFailedError as err:
            record["failed"] = str(err)
            log.warning("%s; the global model is kept as it was", err)
        record["clients_ok"] = answered - len(self.strategy.dropped)
        if self.strategy.dropped or lost:
            record["dropped"] = self.strategy.dropped + lost
        return arrays

    def run_rounds(self, arrays: ArrayRecord, start_round: int) -> ArrayRecord:
        """Run rounds ``start_round + 1 .. num_rounds`` from global ``arrays``; returns the final arrays."""
        cfg = self.cfg
        self.strategy.set_clients(*discover_clients(self.grid, cfg.num_clients, cfg.connect_timeout))
        self.strategy.setup(self.grid, self.run)
        # What a killed run wrote past its last checkpoint (or before its first) is redone.
        discard_after(self.run.client_state, start_round)
        self.run.truncate_metrics(start_round)
        if start_round == 0:
            arrays = self.strategy.initial_arrays(arrays)
        last_checkpoint = start_round
        for server_round in range(start_round + 1, cfg.num_rounds + 1):
            t0 = time.time()
            if server_round > start_round + 1 and not isinstance(self.grid, SimulatedGrid):
                self.admit_new_nodes()
            record: dict[str, Any] = {"round": server_round}
            arrays = self.train_round(server_round, arrays, last_checkpoint, record)
            if server_round % cfg.eval_every == 0 or server_round == cfg.num_rounds:
                result = self.strategy.evaluate_round(server_round, arrays, self.grid, self.evaluate)
                record["test_accuracy"], record["test_loss"] = result.pop(ACCURACY), result.pop(LOSS)
                record.update(result)
            for observer in self.observers:
                observer.observe_round(server_round, arrays, record)
            record["round_time_s"] = time.time() - t0
            self.run.append_metrics(record)
            for logger in self.loggers:
                logger.log_round(record)
            show(round_line(record, cfg.num_rounds))
            if cfg.checkpoint_every and (server_round % cfg.checkpoint_every == 0 or server_round == cfg.num_rounds):
                privacy = self.ledger.state_dict() if self.ledger is not None else {}
                save_checkpoint(
                    self.run.checkpoints,
                    Checkpoint(server_round, arrays, self.strategy.state_dict(), privacy),
                    keep=cfg.checkpoints_kept,
                )
                last_checkpoint = server_round
        return arrays
