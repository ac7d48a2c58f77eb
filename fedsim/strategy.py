"""Base class of fedsim's server strategies.

It is Flower's Message-API :class:`flwr.serverapp.strategy.FedAvg` with what a research framework
needs on top:

- clients are addressed by their client id (the data partition they hold), learnt once through a
  query to every node, and sampled with a generator seeded by (seed, round), so runs repeat;
- each sampled client gets its own message (:meth:`FedsimStrategy.train_content`), which is what
  per-client and peer-to-peer strategies build on;
- replies are checked before aggregation: a client that raised, sent arrays of the wrong keys or
  shapes, or NaN/Inf values is dropped with a warning naming it, and a round with fewer than
  ``min_clients`` usable replies fails loudly instead of averaging what is left;
- server-side state (e.g. SCAFFOLD's control variate) goes through ``state_dict`` into checkpoints.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg as FlowerFedAvg
from flwr.serverapp.strategy.strategy_utils import aggregate_metricrecords
from typing_extensions import override

from fedsim.errors import RoundFailedError
from fedsim.params import check, spec
from fedsim.protocols.messages import (
    ACCURACY,
    ARRAYS,
    CONFIG,
    LOSS,
    METRICS,
    NUM_EXAMPLES,
    SERVER_ROUND,
    SUBSET_ACCURACY,
)
from fedsim.records import (
    arrays_of,
    cast_like,
    has_record,
    integer,
    metrics_of,
    shape_mismatch,
    tensor_of,
    tensor_record,
    train_reply_problem,
    weighted_average,
)
from fedsim.reduction import PartialSum, client_error
from fedsim.results import RunDirectory
from fedsim.seeding import rng


@dataclass(kw_only=True)
class StrategyParams:
    """The keys every ``configs/strategy/*.yaml`` has.

    Each strategy module's ``Params`` extends it with its own (types, ranges and meaning: ``fedsim.params``).
    """

    name: str = spec("strategy")
    client: str = spec("module under clients/ holding the client update")
    setting: list[str] | None = spec("overrides for the setting the strategy is meant for", default=None)


log = logging.getLogger("fedsim")
if TYPE_CHECKING:
    from _typeshed import DataclassInstance

P = TypeVar("P", bound="DataclassInstance")  # a Params dataclass, or a nested group's (FedSA's teachers)


@dataclass(frozen=True)
class ClientReply:
    """A checked reply from one client."""

    client_id: int
    content: RecordDict

    @property
    def num_examples(self) -> int:
        """The sample count the reply stands for (after :meth:`FedsimStrategy.trust_examples`)."""
        return integer(metrics_of(self.content), NUM_EXAMPLES)


def update_dissimilarity(global_arrays: ArrayRecord, replies: list[ClientReply], keys: list[str]) -> dict[str, float]:
    """How much the clients' updates disagree (the client drift FedImpro measures).

    With d_i = y_i - x over the trainable parameters and p_i the sample weights:
    ``update-variance`` = sum_i p_i ||d_i - d||^2 and ``update-dissimilarity`` = that / ||d||^2, d = sum_i p_i d_i.
    """
    if not has_record(replies[0].content) or not keys:
        return {}
    # One pass, no per-client copies (thousands of replies): sum_i p_i ||d_i - d||^2 = sum_i p_i ||d_i||^2 - ||d||^2.
    total = float(sum(r.num_examples for r in replies))
    x = torch.cat([tensor_of(global_arrays[k]).double().ravel() for k in keys])
    mean, second = torch.zeros_like(x), 0.0
    for r in replies:
        d = torch.cat([tensor_of(arrays_of(r.content)[k]).ravel() for k in keys]) - x
        mean.add_(d, alpha=r.num_examples / total)
        second += (r.num_examples / total) * float(d @ d)
    return dissimilarity_metrics(second, float(mean @ mean))


def dissimilarity_metrics(mean_square: float, drift: float) -> dict[str, float]:
    """``update-variance`` and ``update-dissimilarity`` from sum_i p_i ||d_i||^2 and ||d||^2."""
    variance = max(mean_square - drift, 0.0)
    return {"update-variance": variance, "update-dissimilarity": variance / max(drift, 1e-12)}


def typed_params(schema: type[P], node: Any) -> P:
    """A strategy group as its typed, checked dataclass.

    The strategy group ``node`` (or a nested group of it) as its dataclass ``schema``, every key checked (a
    ConfigError line if not); groups nested deeper stay config nodes.
    """
    check("strategy", schema, node)
    return schema(**{f.name: node[f.name] for f in fields(schema) if f.name in node})


class FedsimStrategy(FlowerFedAvg):
    """FedAvg with seeded per-client sampling, reply checks and checkpointable state.

    The base of every fedsim strategy (``strategies/<name>.py``): a Flower strategy whose hooks a
    subclass overrides (``train_content`` and ``configure_train`` for what clients receive,
    ``reply_problem`` for what a reply must hold, ``aggregate`` for the new global model,
    ``state_dict`` / ``load_state_dict`` for what a checkpoint keeps).

    Parameters
    ----------
    cfg : DictConfig
        The run's resolved config: sampling (``num_clients``, ``clients_per_round``,
        ``min_clients``), seed and schedule.
    param_keys : list[str]
        Names of the model's trainable parameters (the rest of its state are buffers).
    params : StrategyParams
        The strategy's typed hyperparameters (its module's ``Params``), built and checked from
        ``cfg.strategy`` by :func:`strategies.strategy_from_config`.

    Notes
    -----
    The client's obligation (FedAvg's): reply to a train message with the trained model under
    ``ARRAYS`` and a ``METRICS`` record holding ``NUM_EXAMPLES`` (its weight in the average), both
    named in :mod:`fedsim.protocols.messages`.
    """

    paper: ClassVar[str] = "McMahan et al., AISTATS 2017 (arXiv:1602.05629)"  # what summary() cites

    def __init__(self, cfg: Any, param_keys: list[str], params: StrategyParams) -> None:
        super().__init__(
            fraction_train=cfg.clients_per_round / cfg.num_clients,
            # fedsim evaluates the global model centrally (server_loop); Flower's federated
            # evaluation API stays available to strategies that call configure_evaluate.
            fraction_evaluate=1.0,
            min_train_nodes=cfg.min_clients,
            min_evaluate_nodes=cfg.min_clients,
            min_available_nodes=cfg.num_clients,
        )
        self.cfg = cfg
        self.params = params
        self.param_keys = param_keys  # trainable parameters (the rest of the state are buffers)
        self.node_of: dict[int, int] = {}
        self.num_examples: dict[int, int] = {}
        self.dropped: list[dict[str, Any]] = []
        self._client_on: dict[int, int] = {}
        self._eligible = np.zeros(0, dtype=np.int64)
        self.global_arrays: ArrayRecord | None = None

    def summary(self) -> None:
        """Log :meth:`describe` (Flower's strategies log their summary at the start of a run)."""
        log.info(self.describe())

    def describe(self) -> str:
        """What the strategy is, which paper it implements and how it is set (the run's banner shows it)."""
        own = [
            f"{f.name}={getattr(self.params, f.name)}"
            for f in fields(self.params)
            if f.name not in ("name", "client", "setting")
        ]
        cfg = self.cfg
        return (
            f"{type(self).__name__} - {self.paper}: {cfg.clients_per_round} of {cfg.num_clients} clients per round, "
            f"at least {cfg.min_clients} replies" + (f"; {', '.join(own)}" if own else "")
        )

    # -- clients --------------------------------------------------------------------------------
    def set_clients(self, node_of: dict[int, int], num_examples: dict[int, int]) -> None:
        """Client id -> hosting node id, and client id -> local sample count (from the handshake)."""
        self.node_of, self.num_examples = dict(node_of), dict(num_examples)
        self._client_on = {node: cid for cid, node in self.node_of.items()}
        # What sampling draws from, built once (a round's cost grows with the clients it samples, not with N).
        self._eligible = np.array(sorted(c for c in self.node_of if self.num_examples.get(c, 1) > 0), dtype=np.int64)

    def client_of(self, node: int) -> int:
        """The client id a node hosts (-1 for a node that never answered the handshake)."""
        return self._client_on.get(node, -1)

    def setup(self, grid: Grid, run: RunDirectory) -> None:
        """Work before the first FL round (e.g. FedFed's feature distillation); nothing for FedAvg.

        Called on every start, resumed ones too: a strategy skips what its checkpointed state or files
        in the run directory already hold.

        Parameters
        ----------
        grid : flwr.serverapp.Grid
            Where messages to the clients go (simulated or over gRPC).
        run : fedsim.results.RunDirectory
            The run's directory, for files the strategy keeps (e.g. FedFed's shared pool).
        """

    def initial_arrays(self, arrays: ArrayRecord) -> ArrayRecord:
        """The global model round 1 starts from (a fresh run only).

        Parameters
        ----------
        arrays : ArrayRecord
            The seeded initial model.

        Returns
        -------
        ArrayRecord
            ``arrays`` itself for FedAvg; a strategy that trains before round 1 returns its result.
        """
        return arrays

    def evaluate_round(
        self, server_round: int, arrays: ArrayRecord, grid: Grid, evaluate: Callable[[ArrayRecord], dict[str, float]]
    ) -> dict[str, Any]:
        """Test metrics of a round.

        Test metrics of a round ('accuracy', 'loss' and any extras): the global model on the held-out test set
        (``evaluation=global``) or on every client's own test split (``evaluation=personal``, the score of
        personalized FL); strategies without a global model ask their clients.
        """
        if self.cfg.evaluation == "personal":
            config = ConfigRecord({SERVER_ROUND: server_round})
            return self.evaluate_on_clients(server_round, grid, lambda _: RecordDict({CONFIG: config, ARRAYS: arrays}))
        return evaluate(arrays)

    def evaluate_on_clients(
        self, server_round: int, grid: Grid, content_for: Callable[[int], RecordDict]
    ) -> dict[str, Any]:
        """Every client's evaluation on its own test split.

        Every client evaluates on its own test split what ``content_for(client)`` sends it: 'accuracy' and
        'loss' are the means over clients, 'personal_accuracy' the per-client figures, 'subset_accuracy' the
        mean accuracy with each client's argmax over the labels it holds (SCooL's official score, which
        inflates accuracy: report both).
        """
        messages = [
            Message(
                content_for(cid), dst_node_id=node, message_type=MessageType.EVALUATE, group_id=f"eval-{server_round}"
            )
            for cid, node in sorted(self.node_of.items())
        ]
        accuracy: dict[str, float] = {}
        losses: list[float] = []
        subset: list[float] = []
        for reply in grid.send_and_receive(messages, timeout=self.cfg.round_timeout):
            cid = self.client_of(reply.metadata.src_node_id)
            if reply.has_error() or not has_record(reply.content, METRICS, MetricRecord):
                log.warning("round %d: client %d did not evaluate its model", server_round, cid)
                continue
            m = metrics_of(reply.content)
            accuracy_value, loss_value, subset_value = m.get(ACCURACY), m.get(LOSS), m.get(SUBSET_ACCURACY)
            examples = m.get(NUM_EXAMPLES, 0)
            if (
                not isinstance(accuracy_value, (int, float))
                or not isinstance(loss_value, (int, float))
                or not isinstance(examples, (int, float))
                or not math.isfinite(accuracy_value)
                or not math.isfinite(loss_value)
                or not 0.0 <= accuracy_value <= 1.0
            ):
                log.warning(
                    "round %d: client %d reported an invalid evaluation (accuracy, loss): left out", server_round, cid
                )
                continue
            if examples > 0:
                accuracy[str(cid)] = float(accuracy_value)
                losses.append(float(loss_value))
                if isinstance(subset_value, float) and 0.0 <= subset_value <= 1.0:
                    subset.append(subset_value)
        if not accuracy:
            raise RoundFailedError(f"round {server_round}: no client evaluated its model")
        result: dict[str, Any] = {
            "accuracy": float(np.mean(list(accuracy.values()))),
            "loss": float(np.mean(losses)),
            "personal_accuracy": dict(sorted(accuracy.items(), key=lambda kv: int(kv[0]))),
        }
        if len(subset) == len(accuracy):
            result["subset_accuracy"] = float(np.mean(subset))
        return result

    def sample_clients(self, server_round: int, purpose: str = "sample") -> list[int]:
        """The clients sampled for a round.

        ``clients_per_round`` client ids drawn from (seed, purpose, round), among the clients that have
        samples to train on (e.g. not the unlabeled clients of a supervised baseline).
        """
        ids = self._eligible
        k = min(int(self.cfg.clients_per_round), len(ids))
        return sorted(int(c) for c in rng(self.cfg.seed, purpose, server_round).choice(ids, k, replace=False))

    # -- train ------------------------------------------------------------------------------------
    @override
    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self.global_arrays = arrays
        config[SERVER_ROUND] = server_round
        return [
            Message(
                self.train_content(cid, arrays, config),
                dst_node_id=self.node_of[cid],
                message_type=MessageType.TRAIN,
                group_id=str(server_round),
            )
            for cid in self.sample_clients(server_round)
        ]

    def train_content(self, client_id: int, arrays: ArrayRecord, config: ConfigRecord) -> RecordDict:
        """What one sampled client receives this round.

        Parameters
        ----------
        client_id : int
            The sampled client.
        arrays : ArrayRecord
            The current global model.
        config : ConfigRecord
            The round's instructions (``SERVER_ROUND``, ``LR``, ``LOCAL_EPOCHS``, ``BATCH_SIZE``, ...).

        Returns
        -------
        RecordDict
            The message content: ``ARRAYS`` and ``CONFIG`` for FedAvg, plus the strategy's own records.
        """
        return RecordDict({ARRAYS: arrays, CONFIG: config})

    @override
    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        accepted = self.accept_replies(server_round, replies)
        if len(accepted) < self.cfg.min_clients:
            raise RoundFailedError(
                f"round {server_round}: only {len(accepted)} usable replies, min_clients={self.cfg.min_clients}"
            )
        arrays, metrics = self.aggregate(server_round, accepted)
        assert self.global_arrays is not None  # set by configure_train
        metrics.update(update_dissimilarity(self.global_arrays, accepted, self.param_keys))
        return arrays, metrics

    # Methods whose defaults make the aggregate a weighted mean of the replies' models and metrics.
    MEAN_AGGREGATION = (
        "aggregate_train",
        "accept_replies",
        "reply_problem",
        "model_problem",
        "trust_examples",
        "aggregate",
        "aggregate_metrics",
        "aggregate_partial",
    )

    def reduces_train_replies(self) -> bool:
        """Whether train replies may be summed where they are produced.

        Whether train replies may be summed where they are produced (:mod:`fedsim.reduction`) and handed to
        :meth:`aggregate_partial` instead of one by one to :meth:`aggregate_train`: true for a strategy that
        keeps FedAvg's aggregation (FedAvg, FedProx, FixMatch), false for one that overrides any of it
        (SCAFFOLD, FedNova, ... and central DP's wrapper).
        """
        cls = type(self)
        return all(getattr(cls, name, None) is getattr(FedsimStrategy, name) for name in self.MEAN_AGGREGATION)

    def aggregate_partial(self, server_round: int, part: PartialSum) -> tuple[ArrayRecord, MetricRecord]:
        """:meth:`aggregate_train` from the summed replies.

        The same weighted means (up to float rounding) and update dissimilarity.
        """
        self.dropped = list(part.dropped)
        for entry in self.dropped:
            log.warning("round %d: dropped client %d: %s", server_round, entry["client"], entry["reason"])
        if len(part.clients) < self.cfg.min_clients:
            raise RoundFailedError(
                f"round {server_round}: only {len(part.clients)} usable replies, min_clients={self.cfg.min_clients}"
            )
        assert self.global_arrays is not None
        mean = {k: v / part.examples for k, v in part.arrays.items()}
        arrays = tensor_record({k: cast_like(v, tensor_of(self.global_arrays[k]).dtype) for k, v in mean.items()})
        metrics = MetricRecord(
            {
                k: [x / part.examples for x in v] if isinstance(v, list) else v / part.examples
                for k, v in part.metrics.items()
            }
        )
        metrics[NUM_EXAMPLES] = int(part.examples)
        keys = [k for k in self.param_keys if k in mean]
        if keys:
            drift = sum(float((mean[k] - tensor_of(self.global_arrays[k])).pow(2).sum()) for k in keys)
            metrics.update(dissimilarity_metrics(part.update_square / part.examples, drift))
        return arrays, metrics

    def aggregate(self, server_round: int, replies: list[ClientReply]) -> tuple[ArrayRecord, MetricRecord]:
        """The next global model and the round's metrics from the accepted replies.

        Parameters
        ----------
        server_round : int
            The round being aggregated.
        replies : list[ClientReply]
            The replies that passed :meth:`reply_problem`, sorted by client id, their sample counts
            capped by :meth:`trust_examples`.

        Returns
        -------
        tuple[ArrayRecord, MetricRecord]
            FedAvg: the mean of the returned models weighted by sample count, and the clients' metrics
            averaged the same way (:meth:`aggregate_metrics`).
        """
        weights = [float(r.num_examples) for r in replies]
        arrays = weighted_average([arrays_of(r.content) for r in replies], weights)
        return arrays, self.aggregate_metrics(replies)

    def aggregate_metrics(self, replies: list[ClientReply]) -> MetricRecord:
        """The replies' metrics averaged with the sample-count weights, and their total sample count.

        Parameters
        ----------
        replies : list[ClientReply]
            The accepted replies.

        Returns
        -------
        MetricRecord
            Each metric's weighted mean, and ``NUM_EXAMPLES`` summed.
        """
        metrics = aggregate_metricrecords([RecordDict({METRICS: metrics_of(r.content)}) for r in replies], NUM_EXAMPLES)
        metrics[NUM_EXAMPLES] = sum(r.num_examples for r in replies)
        return metrics

    # -- reply checks -----------------------------------------------------------------------------
    def accept_replies(
        self, server_round: int, replies: Iterable[Message], check: Callable[[Message], str | None] | None = None
    ) -> list[ClientReply]:
        """Replies that carry content and pass ``check`` (default :meth:`reply_problem`), sorted by client id."""
        problem_of = check or self.reply_problem
        accepted: list[ClientReply] = []
        self.dropped = []
        for msg in replies:
            cid = self.client_of(msg.metadata.src_node_id)
            problem: str | None = "a node that never answered the handshake"
            if cid >= 0:
                problem = client_error(msg) if msg.has_error() else problem_of(msg)
            if problem is None:
                self.trust_examples(server_round, cid, msg.content)
                accepted.append(ClientReply(cid, msg.content))
                continue
            self.dropped.append({"client": cid, "reason": problem})
            log.warning("round %d: dropped client %d: %s", server_round, cid, problem)
        return sorted(accepted, key=lambda r: r.client_id)

    def trust_examples(self, server_round: int, client_id: int, content: RecordDict) -> None:
        """Cap a reply's weight at what the server knows the client holds.

        A reply weighs at most what the server knows the client holds (its partition size in simulation, the
        size it declared at the handshake in deployment): a larger claim is cut to that, with a warning naming
        the client.
        """
        if not has_record(content, METRICS, MetricRecord) or client_id not in self.num_examples:
            return
        claimed, known = metrics_of(content).get(NUM_EXAMPLES), self.num_examples[client_id]
        if isinstance(claimed, (int, float)) and claimed > known:
            log.warning(
                "round %d: client %d claims %s examples, more than the %d it holds: weighted as %d",
                server_round,
                client_id,
                claimed,
                known,
                known,
            )
            metrics_of(content)[NUM_EXAMPLES] = known

    # The reply's ArrayRecord that holds the client's model.
    model_record = ARRAYS

    def reply_problem(self, msg: Message) -> str | None:
        """Why a train reply (one without an error) cannot be aggregated, or None.

        Subclasses add their own records' checks (and call this one first), so that a malformed or
        hostile reply is dropped with its reason instead of corrupting the aggregate.

        Parameters
        ----------
        msg : Message
            The reply.

        Returns
        -------
        str or None
            The reason, phrased to follow "dropped client K: ", or None for a usable reply.
        """
        return train_reply_problem(msg.content, self.model_record, self.model_problem)

    def model_problem(self, record: ArrayRecord) -> str | None:
        """Why a returned model cannot stand in for the global one (keys, shapes, dtypes), or None.

        Parameters
        ----------
        record : ArrayRecord
            The model a reply carries.

        Returns
        -------
        str or None
            The mismatch, or None.
        """
        assert self.global_arrays is not None
        return shape_mismatch(self.global_arrays, record)

    def record_problem(self, msg: Message, name: str, reference: ArrayRecord) -> str | None:
        """Why the reply's ArrayRecord ``name`` is missing or unlike ``reference``, or None."""
        if not has_record(msg.content, name):
            return f"malformed reply: {type(self).__name__} needs a '{name}' ArrayRecord"
        mismatch = shape_mismatch(reference, arrays_of(msg.content, name))
        return f"returned '{name}' whose {mismatch}" if mismatch else None

    # -- checkpoints ------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Server-side state to checkpoint (none for FedAvg).

        Returns
        -------
        dict[str, Any]
            Tensors, arrays and plain values that :meth:`load_state_dict` restores on resume.
        """
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved.

        Parameters
        ----------
        state : dict[str, Any]
            The state of the checkpoint the run resumes from.
        """
