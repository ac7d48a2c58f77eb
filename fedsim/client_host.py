"""The ClientApp calls of one process: what the in-process grid and each pool worker run.

A :class:`ClientHost` delivers messages to a ClientApp the way a SuperNode does (a Context per
node, created when the node gets its first message, so that registered clients that are never
sampled cost nothing), one after another, and can sum the train replies as they come
(:mod:`fedsim.reduction`) instead of keeping them.
"""

from __future__ import annotations

from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp

from fedsim.records import arrays_of, consumed_at_once
from fedsim.reduction import PartialSum, ReplyReducer


def client_of_node(node_id: int) -> int:
    """Simulated nodes are numbered from 1: node id = client id + 1."""
    return node_id - 1


class ClientHost:
    """Runs messages through ``client_app`` for ``num_clients`` simulated nodes."""

    def __init__(self, client_app: ClientApp, num_clients: int) -> None:
        self.client_app = client_app
        self.num_clients = num_clients
        self.contexts: dict[int, Context] = {}

    def context(self, node_id: int) -> Context:
        """The Flower context of the client on ``node_id`` (made once, kept for its state)."""
        found = self.contexts.get(node_id)
        if found is None:
            node_config: dict[str, bool | float | int | str] = {
                "partition-id": client_of_node(node_id),
                "num-partitions": self.num_clients,
            }
            found = self.contexts[node_id] = Context(
                run_id=0, node_id=node_id, node_config=node_config, state=RecordDict(), run_config={}
            )
        return found

    def deliver(self, msg: Message) -> Message:
        """The ClientApp's reply to ``msg``; an exception becomes an error reply, as Flower's runtimes make it."""
        try:
            return self.client_app(msg, self.context(msg.metadata.dst_node_id))
        except Exception as err:  # a failing client becomes an error reply, as in Flower's runtimes
            return Message(Error(code=0, reason=f"{type(err).__name__}: {err}"), reply_to=msg)

    def deliver_all(self, messages: list[Message]) -> list[Message]:
        """The replies to ``messages``, in order."""
        return [self.deliver(msg) for msg in messages]

    def reduce(self, messages: list[Message], param_keys: list[str], held: dict[int, int]) -> PartialSum:
        """Deliver train ``messages`` (all carrying the same global 'arrays') and sum the replies."""
        reducer = ReplyReducer(arrays_of(messages[0].content), param_keys, held)
        for msg in messages:
            with consumed_at_once():  # each reply is summed before the next client runs: it may lend its model
                reducer.add(client_of_node(msg.metadata.dst_node_id), self.deliver(msg))
        return reducer.sum
