"""Train replies summed where they are produced give FedAvg's aggregate, checks included; the
pool engine and the in-process backend run the same clients to the same metrics."""

import json
import pickle

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord, Error, Message, MessageType, MetricRecord, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.supercore.task_identity import TaskIdentity
from omegaconf import OmegaConf

from fedsim.client_host import ClientHost
from fedsim.config import as_dict
from fedsim.engine import run
from fedsim.plugins import client_app, runtime_of
from fedsim.protocols.messages import ARRAYS, BATCH_SIZE, CONFIG, LOCAL_EPOCHS, LR, SERVER_ROUND
from fedsim.records import (
    LentTensorArray,
    TensorArray,
    consumed_at_once,
    from_numpy,
    model_reply,
    model_to_record,
    npy_header_bytes,
    payload_bytes,
    tensor_of,
    to_numpy,
)
from fedsim.reduction import PartialSum, ReplyReducer
from fedsim.worker_pool import batches
from strategies.fedavg import FedAvg
from strategies.scaffold import Scaffold
from tests.conftest import comparable, read_metrics, strategy_params

TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 0, SUPERLINK_NODE_ID

CFG = OmegaConf.create({"seed": 0, "num_clients": 6, "clients_per_round": 5, "min_clients": 2, "strategy": {}})
GLOBAL = {
    "w": np.array([[1.0, 2.0], [3.0, -1.0]], dtype=np.float32),
    "b": np.array([0.5], dtype=np.float32),
    "steps": np.array(4),
}
PARAMS = ["w", "b"]


def replies(rng: np.random.Generator) -> list[tuple[int, Message]]:
    out = []
    for cid in range(5):
        sent = Message(RecordDict({"config": ConfigRecord({})}), dst_node_id=cid + 1, message_type=MessageType.TRAIN)
        if cid == 3:
            out.append((cid, Message(Error(code=1, reason="boom"), reply_to=sent)))
            continue
        arrays = {
            k: (v + rng.normal(size=v.shape)).astype(v.dtype) if v.dtype.kind == "f" else v + cid
            for k, v in GLOBAL.items()
        }
        if cid == 4:
            arrays["w"][0, 0] = np.nan
        n = [10, 25, 40, 7][cid] if cid < 4 else 5
        metrics = MetricRecord({"num-examples": n, "train-loss": float(cid), "per-class": [float(cid), 1.0]})
        out.append((cid, Message(RecordDict({"arrays": from_numpy(arrays), "metrics": metrics}), reply_to=sent)))
    return out


def strategy() -> FedAvg:
    s = FedAvg(CFG, PARAMS, strategy_params(FedAvg))
    s.set_clients({cid: cid + 1 for cid in range(6)}, {cid: 100 for cid in range(6)})
    s.configure_train(1, from_numpy(GLOBAL), ConfigRecord({}), grid=None)
    return s


def test_summed_replies_aggregate_as_the_replies_do():
    pairs = replies(np.random.default_rng(0))
    direct = strategy()
    arrays, metrics = direct.aggregate_train(1, [m for _, m in pairs])
    reduced = strategy()
    parts = []
    for chunk in (pairs[:2], pairs[2:]):  # two workers, summed apart, then merged
        reducer = ReplyReducer(reduced.global_arrays, PARAMS, {cid: 100 for cid in range(6)})
        for cid, msg in chunk:
            reducer.add(cid, msg)
        parts.append(reducer.sum)
    part = PartialSum().merge(parts[0]).merge(parts[1])
    arrays2, metrics2 = reduced.aggregate_partial(1, part)
    for key, value in to_numpy(arrays).items():
        np.testing.assert_allclose(to_numpy(arrays2)[key], value, rtol=1e-6)
    assert to_numpy(arrays2)["steps"].dtype == GLOBAL["steps"].dtype
    assert metrics2["num-examples"] == metrics["num-examples"] == 75
    for key in ("train-loss", "update-variance", "update-dissimilarity"):
        assert metrics2[key] == pytest.approx(metrics[key], rel=1e-5)
    assert metrics2["per-class"] == pytest.approx(metrics["per-class"])
    assert sorted(d["client"] for d in reduced.dropped) == sorted(d["client"] for d in direct.dropped) == [3, 4]
    assert "NaN" in next(d["reason"] for d in reduced.dropped if d["client"] == 4)
    assert part.bytes_up == sum(payload_bytes(m.content) for cid, m in pairs if cid < 3)


def test_a_claim_above_what_the_client_holds_weighs_what_it_holds():
    s = strategy()
    reducer = ReplyReducer(s.global_arrays, PARAMS, {0: 10})
    _, msg = replies(np.random.default_rng(1))[1]
    reducer.add(0, msg)  # claims 25, holds 10
    assert reducer.sum.examples == 10


def test_reduction_is_used_only_where_the_aggregate_is_the_mean():
    assert FedAvg(CFG, PARAMS, strategy_params(FedAvg)).reduces_train_replies()
    assert not Scaffold(CFG, PARAMS, strategy_params(Scaffold, server_lr=1.0)).reduces_train_replies()


def test_tensor_arrays_are_flowers_arrays_without_the_copies():
    from flwr.app import Array

    for t in (torch.randn(3, 4), torch.tensor(5.0), torch.arange(7), torch.zeros(0)):
        lazy, plain = TensorArray(t.clone()), Array(t.numpy())
        assert (
            lazy.data == plain.data
            and lazy.object_id == plain.object_id
            and (lazy.dtype, lazy.shape) == (plain.dtype, plain.shape)
        )
        assert (
            lazy.num_bytes()
            == len(plain.data)
            == npy_header_bytes(plain.dtype, plain.shape) + t.numel() * t.element_size()
        )
        assert torch.equal(tensor_of(plain), t)
    model = torch.nn.Linear(3, 2)
    record = model_to_record(model)
    with torch.no_grad():
        model.weight.add_(1.0)  # the record holds copies
    assert not torch.equal(tensor_of(record["weight"]), model.weight)


def test_batches_split_messages_evenly_in_order():
    assert [len(b) for b in batches(list(range(10)), 3)] == [4, 4, 2]
    assert [m for b in batches(list(range(5)), 8) for m in b] == list(range(5))


def test_pool_engine_matches_the_in_process_backend(make_cfg):
    """Two Ray workers, FedAvg (summed replies) and SCAFFOLD (every reply): the same metrics."""
    for strategy_name in ("fedavg", "scaffold"):
        common = ("num_rounds=2", f"strategy={strategy_name}", "num_clients=6", "clients_per_round=5")
        pool = read_metrics(
            run(make_cfg("backend=simulation", "backend.num_threads=2", *common, name=f"pool-{strategy_name}"))
        )
        local = read_metrics(run(make_cfg("backend=inprocess", *common, name=f"local-{strategy_name}")))
        for p, q in zip(comparable(pool), comparable(local)):
            assert p.keys() == q.keys()
            for key, value in q.items():
                assert p[key] == (pytest.approx(value, rel=1e-4) if isinstance(value, float) else value), key


def test_sums_over_many_blocks_match_the_weighted_mean():
    """More replies than a float32 block holds: the float64 total takes every block."""
    from fedsim.records import weighted_average

    rng = np.random.default_rng(2)
    reference = from_numpy(GLOBAL)
    records, weights = [], []
    reducer = ReplyReducer(reference, PARAMS, {})
    sent = Message(RecordDict({"config": ConfigRecord({})}), dst_node_id=1, message_type=MessageType.TRAIN)
    for cid in range(3 * ReplyReducer.block_size + 5):
        arrays = {
            k: (v + rng.normal(size=v.shape)).astype(v.dtype) if v.dtype.kind == "f" else v for k, v in GLOBAL.items()
        }
        n = int(rng.integers(1, 60))
        records.append(from_numpy(arrays))
        weights.append(n)
        reducer.add(
            cid,
            Message(
                RecordDict({"arrays": from_numpy(arrays), "metrics": MetricRecord({"num-examples": n})}), reply_to=sent
            ),
        )
    part = reducer.sum
    expected = to_numpy(weighted_average(records, weights))
    for key, value in part.arrays.items():
        np.testing.assert_allclose((value / part.examples).numpy(), expected[key], rtol=1e-5, atol=1e-6)
    assert part.examples == sum(weights) and len(part.clients) == len(weights)


def _trained_model() -> torch.nn.Module:
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    return model


def test_a_reply_lends_the_model_only_inside_a_host_promise():
    model = _trained_model()
    copied = model_reply(model)
    assert not any(isinstance(a, LentTensorArray) for a in copied.values())
    with consumed_at_once():
        lent = model_reply(model)
        assert all(isinstance(a, LentTensorArray) for a in lent.values())
        weight = model[0].weight
        assert tensor_of(lent["0.weight"]).data_ptr() == weight.data_ptr()  # no copy
        assert torch.equal(tensor_of(lent["0.weight"]), tensor_of(copied["0.weight"]))
        assert lent["0.weight"].numpy().tolist() == copied["0.weight"].numpy().tolist()


def test_a_lent_reply_read_after_the_model_changed_raises():
    model = _trained_model()
    with consumed_at_once():
        lent = model_reply(model)
        with torch.no_grad():
            model[0].weight.add_(1.0)  # the host ran the next client before reading the reply
        with pytest.raises(RuntimeError, match="model changed before the reply was read"):
            tensor_of(lent["0.weight"])


@pytest.mark.parametrize("keep", ["record", "tensor", "view"])
def test_what_is_kept_of_a_lent_reply_keeps_its_values(keep):
    """A reply (or a tensor or view of it) kept past the host's promise moves the model to a copy instead."""
    model = _trained_model()
    with consumed_at_once():
        lent = model_reply(model)
        before = tensor_of(lent["0.weight"]).clone()
        kept = {"record": lent, "tensor": tensor_of(lent["0.weight"]), "view": tensor_of(lent["0.weight"]).view(-1)}[
            keep
        ]
        del lent
    with torch.no_grad():
        model[0].weight.add_(5.0)  # the next client trains the model
    values = tensor_of(kept["0.weight"]) if keep == "record" else kept
    assert torch.equal(values.reshape(before.shape), before)
    assert model[0].weight.data_ptr() != values.data_ptr()


def test_a_reply_nobody_kept_leaves_the_model_in_place():
    model = _trained_model()
    where = model[0].weight.data_ptr()
    with consumed_at_once():
        reducer = ReplyReducer(model_to_record(model), ["0.weight", "0.bias", "1.weight", "1.bias"], {})
        sent = Message(RecordDict({"config": ConfigRecord({})}), dst_node_id=1, message_type=MessageType.TRAIN)
        reply = RecordDict({"arrays": model_reply(model), "metrics": MetricRecord({"num-examples": 3})})
        reducer.add(0, Message(reply, reply_to=sent))
        del reply
    assert model[0].weight.data_ptr() == where  # not re-homed: no copy was needed
    assert torch.allclose(reducer.sum.arrays["0.weight"], 3 * model[0].weight.detach().double())


def test_a_lent_array_pickles_as_a_plain_copy():
    model = _trained_model()
    with consumed_at_once():
        lent = model_reply(model)["0.weight"]
        copy = pickle.loads(pickle.dumps(lent))
    assert type(copy) is TensorArray
    assert torch.equal(tensor_of(copy), model[0].weight.detach())
    assert tensor_of(copy).data_ptr() != model[0].weight.data_ptr()


@pytest.mark.parametrize("defence", ["none", "local_dp", "pruning"])
def test_a_hosts_summed_round_lends_the_clients_model_without_a_copy(make_cfg, defence):
    """FedAvg's clients on a ClientHost: replies lent and summed, the shared model never re-homed to a copy
    (also where a client-side defence transforms each reply on its way out)."""
    cfg = as_dict(make_cfg("strategy=fedavg", "num_clients=4", f"defence={defence}"), resolve=True)
    runtime = runtime_of(json.dumps(cfg, sort_keys=True))
    host = ClientHost(client_app(cfg), 4)
    weight = next(runtime.model.parameters())
    where = weight.data_ptr()
    config = ConfigRecord({SERVER_ROUND: 1, LR: 0.01, LOCAL_EPOCHS: 1, BATCH_SIZE: 8})
    arrays = model_to_record(runtime.model)
    messages = [
        Message(RecordDict({ARRAYS: arrays, CONFIG: config}), dst_node_id=cid + 1, message_type=MessageType.TRAIN)
        for cid in range(4)
    ]
    keys = [name for name, _ in runtime.model.named_parameters()]
    part = host.reduce(messages, keys, {cid: 10**6 for cid in range(4)})
    assert part.clients == [0, 1, 2, 3] and not part.dropped
    assert weight.data_ptr() == where  # every reply was lent and read in place
