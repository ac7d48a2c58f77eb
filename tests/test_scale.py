"""Many registered clients: every one answers the handshake, sampling covers them, state stays small,
and the simulation engine's message store hands out messages as Flower's does."""

from __future__ import annotations

import pickle
import random
from contextlib import nullcontext

from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.proto.task_pb2 import Task
from flwr.server.superlink.linkstate import LinkStateFactory
from flwr.server.superlink.linkstate.in_memory_linkstate import RunRecord
from flwr.supercore.constant import FLWR_IN_MEMORY_DB_NAME, NOOP_FEDERATION_ID
from flwr.supercore.object_store import ObjectStoreFactory
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity
from flwr.superlink.federation import NoOpFederationManager
from flwr.superlink.grid import InMemoryGrid

from fedsim.engine import run
from fedsim.link_state import node_indexed_link_state
from fedsim.plugins import client_runtime
from tests.conftest import read_metrics


def test_a_thousand_clients_with_a_hundred_per_round(make_cfg):
    path = run(
        make_cfg("num_clients=1000", "clients_per_round=100", "num_rounds=2", "local_epochs=1", "checkpoint_every=0")
    )
    metrics = read_metrics(path)
    assert [m["clients_ok"] for m in metrics] == [100, 100]
    assert all(m["num_examples"] < 400 for m in metrics)  # ~1.4 samples per client
    assert not (path / "client_state").exists()  # FedAvg clients keep no state: an idle client costs nothing on disk


def test_a_runtime_shipped_to_a_process_is_built_once_there():
    """Ray ships the ClientApp (and its runtime) with every message: unpickling finds the process's runtime."""
    cfg = {"seed": 0, "device": "cpu"}
    first, again = (
        pickle.loads(pickle.dumps(client_runtime(cfg))),
        pickle.loads(pickle.dumps(client_runtime(dict(cfg)))),
    )
    other = pickle.loads(pickle.dumps(client_runtime({**cfg, "seed": 1})))
    assert first is again and first.cfg.seed == 0
    assert other is not first and other.cfg.seed == 1


def link_state(indexed: bool):
    """A simulation's in-memory LinkState (Flower's or fedsim's node-indexed one) with one run and 6 nodes."""
    factory = LinkStateFactory(FLWR_IN_MEMORY_DB_NAME, NoOpFederationManager(), ObjectStoreFactory())
    with node_indexed_link_state() if indexed else nullcontext():
        state = factory.state()
    run_record = Run.create_empty(run_id=7)
    run_record.primary_task_id, run_record.federation_id = 1, NOOP_FEDERATION_ID
    state.run_ids[7] = RunRecord(run=run_record)
    state.task_store[1] = Task(task_id=1, run_id=7)
    grid = InMemoryGrid(state_factory=factory)
    grid.set_run(run_record)
    nodes = [state.create_node("owner", "owner", bytes([i]) * 32, heartbeat_interval=1e9) for i in range(6)]
    for node in nodes:
        state.acknowledge_node_heartbeat(node_id=node, heartbeat_interval=1e9)
    return state, grid, nodes


def test_node_indexed_link_state_hands_out_what_flowers_state_does(monkeypatch):
    """Same pushes, polls (limit 1, 2, all) and deletions: same messages to the same nodes, in the same order."""
    for key, value in {"task_id": 1, "run_id": 7, "node_id": SUPERLINK_NODE_ID}.items():  # the ServerApp's identity
        monkeypatch.setattr(TaskIdentity, f"_{key}", value)
    states = [link_state(indexed) for indexed in (False, True)]
    assert [type(s).__name__ for s, _, _ in states] == ["InMemoryLinkState", "NodeIndexedLinkState"]
    ops = random.Random(0)
    sent, handed_out = 0, [[], []]
    for _ in range(100):
        action, node, limit = (
            ops.choices(["push", "poll", "delete"], [3, 6, 1])[0],
            ops.randrange(6),
            ops.choice([1, 2, None]),
        )
        for (state, grid, nodes), out in zip(states, handed_out):
            if action == "push":
                messages = [
                    Message(
                        RecordDict({"config": ConfigRecord({"i": sent + j})}),
                        dst_node_id=nodes[(node + j) % 6],
                        message_type=MessageType.QUERY,
                    )
                    for j in range(4)
                ]
                grid.push_messages(messages)
            elif action == "poll":
                out.append(
                    (node, [m.content["config"]["i"] for m in state.get_message_ins(node_id=nodes[node], limit=limit)])
                )
            else:  # what pulling a round's replies does: drop every message sent so far to this node
                state.delete_messages(
                    {k for k, m in state.message_ins_store.items() if m.metadata.dst_node_id == nodes[node]}
                )
        sent += 4 if action == "push" else 0
    assert handed_out[0] == handed_out[1]
    assert sum(len(got) for _, got in handed_out[0]) > 20  # the sequence did hand out messages
