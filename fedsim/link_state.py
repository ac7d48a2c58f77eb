"""Flower's in-memory LinkState with undelivered messages indexed by destination node.

Flower's simulation engine (1.41/1.42) polls every registered node every 0.1 s with
``LinkState.get_message_ins(node_id, limit=1)``, and the in-memory LinkState answers each poll by
scanning every stored message. A sweep therefore costs (registered nodes) x (messages in flight):
with 10,000 nodes the engine moved about 50 messages/s however many were in flight, and a
10,000-message handshake did not finish in ten minutes. :class:`NodeIndexedLinkState` answers a
poll from the node's own pending messages, with the same checks (expiry, federation) and the same
order, so a sweep costs one lookup per node. :func:`node_indexed_link_state` installs it for the
simulations started inside it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from flwr.app import Message
from flwr.server.superlink.linkstate import linkstate_factory
from flwr.server.superlink.linkstate.in_memory_linkstate import InMemoryLinkState
from flwr.supercore.date import now
from typing_extensions import override


class NodeIndexedLinkState(InMemoryLinkState):
    """``InMemoryLinkState`` whose ``get_message_ins`` reads a per-node index of pending messages."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._pending: dict[int, list[str]] = {}  # node id -> ids of its undelivered messages, in arrival order

    @override
    def store_message_ins(self, message: Message) -> str | None:
        with self.lock:
            message_id = super().store_message_ins(message)
            if message_id is not None:
                pending = self._pending.setdefault(message.metadata.dst_node_id, [])
                if message_id not in pending:
                    pending.append(message_id)
            return message_id

    @override
    def get_message_ins(self, node_id: int, limit: int | None, *, run_id: int | None = None) -> list[Message]:
        if limit is not None and limit < 1:
            raise AssertionError("`limit` must be >= 1")
        with self.lock:
            pending = self._pending.get(node_id)
            if not pending:
                return []
            self._check_stored_messages(set(pending))  # drops expired messages, as Flower's full scan does
            found: list[Message] = []
            kept: list[str] = []
            for message_id in pending:
                message = self.message_ins_store.get(message_id)
                if message is None or message.metadata.delivered_at != "":
                    continue  # deleted or already delivered: never returned again
                if (run_id is None or message.metadata.run_id == run_id) and not (limit and len(found) == limit):
                    found.append(message)
                else:
                    kept.append(message_id)
            if kept:
                self._pending[node_id] = kept
            else:
                del self._pending[node_id]
            delivered_at = now().isoformat()
            for message in found:
                message.metadata.delivered_at = delivered_at
            return found


@contextmanager
def node_indexed_link_state() -> Iterator[None]:
    """Simulations started in this block keep their messages in a :class:`NodeIndexedLinkState`."""
    original = linkstate_factory.InMemoryLinkState
    linkstate_factory.InMemoryLinkState = NodeIndexedLinkState  # type: ignore[misc]  # no hook: swap the class
    try:
        yield
    finally:
        linkstate_factory.InMemoryLinkState = original  # type: ignore[misc]
