"""Deployment's client discovery: every node that is connected is asked which client it hosts, and a node
that misses the first query (a restarted server's, while the node still finishes a killed run's message) is
asked again within the connect deadline, so that a resumed run has the clients it had."""

from __future__ import annotations

import time

import pytest
from flwr.app import Message, MetricRecord, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.supercore.task_identity import TaskIdentity

from fedsim.errors import FedsimError
from fedsim.protocols.messages import CLIENT_ID, INFO, NUM_EXAMPLES
from fedsim.server_loop import discover_clients

TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 0, SUPERLINK_NODE_ID  # as a ServerApp's


class SilentOnceGrid:
    """A grid of nodes 11, 12, 13 hosting clients 0, 1, 2; ``silent`` nodes drop the queries of their first
    ``misses`` handshakes (the tests that wait for the first answers run with short deadlines)."""

    def __init__(self, silent: set[int], misses: int = 1) -> None:
        self.nodes, self.silent, self.misses, self.asked = [11, 12, 13], silent, misses, []

    def get_node_ids(self) -> list[int]:
        return list(self.nodes)

    def send_and_receive(self, messages: list[Message], timeout: float) -> list[Message]:
        asked = [m.metadata.dst_node_id for m in messages]
        self.asked.append((asked, timeout))
        replies = []
        for message in messages:
            node = message.metadata.dst_node_id
            if node in self.silent and sum(node in a for a, _ in self.asked) <= self.misses:
                continue
            info = MetricRecord({CLIENT_ID: node - 11, NUM_EXAMPLES: 100 + node})
            reply = Message(RecordDict({INFO: info}), reply_to=message)
            replies.append(reply)
        if len(replies) < len(messages):  # as a real grid, wait out the timeout for the missing replies
            time.sleep(timeout)
        return replies


def test_every_node_answers_in_one_round_trip():
    grid = SilentOnceGrid(silent=set())
    node_of, sizes = discover_clients(grid, expected=3, timeout=60)  # type: ignore[arg-type]
    assert node_of == {0: 11, 1: 12, 2: 13} and sizes == {0: 111, 1: 112, 2: 113}
    assert len(grid.asked) == 1


def test_a_node_that_missed_the_query_is_asked_again(monkeypatch):
    monkeypatch.setattr("fedsim.server_loop.HANDSHAKE_WAIT_S", 1.0)
    grid = SilentOnceGrid(silent={13})
    node_of, _ = discover_clients(grid, expected=3, timeout=60)  # type: ignore[arg-type]
    assert node_of == {0: 11, 1: 12, 2: 13}
    assert [a for a, _ in grid.asked] == [[11, 12, 13], [13]]  # only the silent node, once more
    assert grid.asked[1][1] == 2 * grid.asked[0][1]  # waiting twice as long


def test_a_node_that_never_answers_is_left_out_at_the_deadline():
    grid = SilentOnceGrid(silent={13}, misses=100)
    node_of, _ = discover_clients(grid, expected=3, timeout=2)  # type: ignore[arg-type]
    assert node_of == {0: 11, 1: 12}


def test_no_answer_at_all_is_an_error():
    grid = SilentOnceGrid(silent={11, 12, 13}, misses=100)
    with pytest.raises(FedsimError, match="no client answered"):
        discover_clients(grid, expected=3, timeout=2)  # type: ignore[arg-type]
