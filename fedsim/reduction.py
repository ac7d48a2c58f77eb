"""Train replies summed where they are produced.

FedAvg's aggregate is a weighted mean, so a worker that trains many clients can send the server
one running sum instead of one model per client: the server adds the workers' sums and divides
once. :class:`ReplyReducer` is that sum, with the checks a strategy applies to every reply
(:func:`fedsim.records.train_reply_problem`) done before a reply is added, the claimed sample
count capped at what the client holds, and the second moment of the updates kept so that the
update dissimilarity FedImpro's drift metric needs comes out as from the single replies.
Strategies whose aggregation is not this mean get every reply instead
(:meth:`fedsim.strategy.FedsimStrategy.reduces_train_replies`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from flwr.app import ArrayRecord, Message, RecordDict

from fedsim.protocols.messages import ARRAYS, NUM_EXAMPLES
from fedsim.records import arrays_of, metrics_of, number, payload_bytes, shape_mismatch, tensor_of, train_reply_problem


def client_error(msg: Message) -> str:
    """One line for a reply that carries an error instead of content."""
    return f"client raised: {msg.error.reason.strip().splitlines()[-1] if msg.error.reason else msg.error.code}"


@dataclass
class PartialSum:
    """What a set of clients' train replies adds to the round's aggregate.

    ``arrays``: sum of n_i y_i per array (float64); ``examples``: sum of n_i; ``metrics``: sum of
    n_i m_i per numeric metric; ``update_square``: sum of n_i ||y_i - x||^2 over the trainable arrays
    (x the global model); ``clients``: ids of the replies added; ``dropped``: the replies left out
    ({'client', 'reason'}); ``bytes_up``: the payload the replies carried.
    """

    arrays: dict[str, torch.Tensor] = field(default_factory=dict)
    examples: float = 0.0
    metrics: dict[str, Any] = field(default_factory=dict)
    update_square: float = 0.0
    clients: list[int] = field(default_factory=list)
    dropped: list[dict[str, Any]] = field(default_factory=list)
    bytes_up: int = 0

    def merge(self, other: PartialSum) -> PartialSum:
        """Add ``other`` to this sum (in place)."""
        for key, value in other.arrays.items():
            if key in self.arrays:
                self.arrays[key].add_(value)
            else:
                self.arrays[key] = value.clone()
        add_metrics(self.metrics, other.metrics, 1.0)
        self.examples += other.examples
        self.update_square += other.update_square
        self.clients += other.clients
        self.dropped += other.dropped
        self.bytes_up += other.bytes_up
        return self


def add_metrics(total: dict[str, Any], metrics: Any, weight: float) -> None:
    """``total[k] += weight * metrics[k]`` for numeric metrics (lists element-wise)."""
    for key, value in metrics.items():
        if key == NUM_EXAMPLES:
            continue
        if isinstance(value, list):
            scaled = [weight * float(v) for v in value]
            total[key] = [a + b for a, b in zip(total[key], scaled)] if key in total else scaled
        elif isinstance(value, (int, float)):
            total[key] = total.get(key, 0.0) + weight * float(value)


class ReplyReducer:
    """A running :class:`PartialSum` of train replies against the global model ``reference``.

    ``param_keys``: the trainable arrays (the update dissimilarity's domain); ``held``: client id ->
    samples it holds (a larger claim weighs that much, as
    :meth:`fedsim.strategy.FedsimStrategy.trust_examples` does).
    """

    model_record = ARRAYS
    # Replies summed in float32 before each addition to the float64 total: a float32 add costs an
    # eighth of a mixed one, and 32 terms lose at most ~2e-6 of the block's sum (the global model is
    # float32: its own rounding is 6e-8).
    block_size = 32

    def __init__(self, reference: ArrayRecord, param_keys: list[str], held: dict[int, int]) -> None:
        self.reference = reference
        self.param_keys = [k for k in param_keys if k in reference]
        self._params = frozenset(self.param_keys)
        self.held = held
        self._sum = PartialSum()
        self._block: dict[str, torch.Tensor] = {}
        self._in_block = 0

    @property
    def sum(self) -> PartialSum:
        """The replies added so far."""
        self._flush()
        return self._sum

    def _flush(self) -> None:
        for key, block in self._block.items():
            if key in self._sum.arrays:
                self._sum.arrays[key].add_(block)
            else:
                self._sum.arrays[key] = block.double()
            block.zero_()
        self._in_block = 0

    def add(self, client_id: int, reply: Message) -> None:
        """Check a reply and add it, or record why it was left out."""
        if reply.has_error():
            self._sum.dropped.append({"client": client_id, "reason": client_error(reply)})
            return
        problem, distances = self._check(reply.content)
        if problem is not None:
            self._sum.dropped.append({"client": client_id, "reason": problem})
            return
        self._sum_reply(client_id, reply.content, distances)

    def _check(self, content: RecordDict) -> tuple[str | None, list[float]]:
        """(why the reply cannot be summed or None, the distance of each trainable array to the global one)."""
        problem = train_reply_problem(
            content,
            self.model_record,
            lambda record: shape_mismatch(self.reference, record),
            checked_elsewhere=self._params,
        )
        if problem is not None:
            return problem, []
        arrays = arrays_of(content, self.model_record)
        # The update's norm is finite exactly where the update is (the global model is): one pass for both.
        distances = [float(torch.dist(tensor_of(arrays[k]), tensor_of(self.reference[k]))) for k in self.param_keys]
        if all(map(math.isfinite, distances)):
            return None, distances
        problem = train_reply_problem(content, self.model_record, lambda record: None)  # names the array
        return problem or f"returned an update whose norm overflows float32 in '{self.model_record}'", []

    def _sum_reply(self, client_id: int, content: RecordDict, distances: list[float]) -> None:
        part, arrays, metrics = self._sum, arrays_of(content, self.model_record), metrics_of(content)
        part.bytes_up += payload_bytes(content)
        examples = number(metrics, NUM_EXAMPLES)
        weight = min(examples, float(self.held.get(client_id, examples)))
        for key in arrays.keys():
            values = tensor_of(arrays[key])
            if key not in self._block:
                self._block[key] = torch.zeros(values.shape, dtype=torch.float32)
            self._block[key].add_(values, alpha=weight)
        self._in_block += 1
        if self._in_block == self.block_size:
            self._flush()
        part.update_square += weight * sum(d * d for d in distances)
        add_metrics(part.metrics, metrics, weight)
        part.examples += weight
        part.clients.append(client_id)
