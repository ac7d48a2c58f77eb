"""Server-side aggregation and reply checks on constructed replies."""

import numpy as np
import pytest
from flwr.app import ConfigRecord, Error, Message, MessageType, MetricRecord, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.supercore.task_identity import TaskIdentity
from omegaconf import OmegaConf

from fedsim.config import group_options
from fedsim.errors import RoundFailedError
from fedsim.numerics import accumulation_norm
from fedsim.records import from_numpy, to_numpy
from strategies.fedavg import FedAvg
from strategies.fednova import FedNova
from strategies.fedprox import FedProx
from strategies.scaffold import Scaffold
from tests.conftest import strategy_params

TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 0, SUPERLINK_NODE_ID

CFG = OmegaConf.create(
    {"seed": 0, "num_clients": 4, "clients_per_round": 3, "min_clients": 2, "strategy": {"mu": 0.5, "server_lr": 1.0}}
)
GLOBAL = {"w": np.array([1.0, 2.0], dtype=np.float32), "b": np.array([0.5], dtype=np.float32), "steps": np.array(4)}
PARAMS = ["w", "b"]


def make(strategy_cls):
    s = strategy_cls(CFG, PARAMS, strategy_params(strategy_cls, **CFG.strategy))
    s.set_clients({cid: 100 + cid for cid in range(4)}, {cid: 100 for cid in range(4)})
    return s


def reply(cid, arrays=None, n=10, error=None, **extra):
    sent = Message(RecordDict({"config": ConfigRecord({})}), dst_node_id=100 + cid, message_type=MessageType.TRAIN)
    if error:
        return Message(Error(code=1, reason=error), reply_to=sent)
    content = RecordDict(
        {"arrays": from_numpy(arrays), "metrics": MetricRecord({"num-examples": n, "train-loss": 1.0})}
    )
    for key, value in extra.items():
        if isinstance(value, dict):
            content[key] = from_numpy(value)
        else:
            content["metrics"][key] = value
    return Message(content, reply_to=sent)


def configure(strategy, round_=1):
    return list(strategy.configure_train(round_, from_numpy(GLOBAL), ConfigRecord({}), grid=None))


def test_sampling_is_seeded_and_per_client():
    s = make(FedAvg)
    first = [m.metadata.dst_node_id for m in configure(s, 1)]
    assert first == [m.metadata.dst_node_id for m in configure(make(FedAvg), 1)]
    assert len(first) == 3 and len(set(first)) == 3
    rounds = {tuple(m.metadata.dst_node_id for m in configure(s, r)) for r in range(1, 10)}
    assert len(rounds) > 1


def test_fedavg_weighted_average_exact():
    s = make(FedAvg)
    configure(s)
    a = {"w": np.array([0.0, 0.0], np.float32), "b": np.array([1.0], np.float32), "steps": np.array(5)}
    b = {"w": np.array([3.0, 6.0], np.float32), "b": np.array([4.0], np.float32), "steps": np.array(9)}
    arrays, metrics = s.aggregate_train(1, [reply(0, a, n=10), reply(1, b, n=20)])
    out = to_numpy(arrays)
    np.testing.assert_allclose(out["w"], [2.0, 4.0])
    np.testing.assert_allclose(out["b"], [3.0])
    assert out["steps"].dtype == GLOBAL["steps"].dtype and int(out["steps"]) == 8  # round(5/3 + 6)
    assert metrics["num-examples"] == 30


@pytest.mark.parametrize(
    "bad, reason",
    [
        ({"w": np.array([np.nan, 0.0], np.float32), "b": np.zeros(1, np.float32), "steps": np.array(1)}, "NaN/Inf"),
        ({"w": np.zeros(3, np.float32), "b": np.zeros(1, np.float32), "steps": np.array(1)}, "shape"),
        ({"w": np.zeros(2, np.float32), "steps": np.array(1)}, "keys differ"),
    ],
)
def test_bad_replies_are_dropped_with_their_client(bad, reason):
    s = make(FedAvg)
    configure(s)
    good = reply(0, GLOBAL), reply(1, GLOBAL)
    arrays, _ = s.aggregate_train(1, [*good, reply(2, bad)])
    np.testing.assert_allclose(to_numpy(arrays)["w"], GLOBAL["w"])
    assert len(s.dropped) == 1 and s.dropped[0]["client"] == 2 and reason in s.dropped[0]["reason"]


def test_client_error_is_dropped_and_too_few_fails_the_round():
    s = make(FedAvg)
    configure(s)
    with pytest.raises(RoundFailedError, match="only 1 usable"):
        s.aggregate_train(1, [reply(0, GLOBAL), reply(1, error="ValueError: boom")])
    assert s.dropped == [{"client": 1, "reason": "client raised: ValueError: boom"}]


def test_fedprox_sends_mu():
    messages = configure(make(FedProx))
    assert all(m.content["config"]["proximal-mu"] == 0.5 for m in messages)


def test_fednova_matches_fedavg_when_steps_equal():
    a = {"w": np.array([0.0, 0.0], np.float32), "b": np.array([1.0], np.float32), "steps": np.array(5)}
    b = {"w": np.array([3.0, 6.0], np.float32), "b": np.array([4.0], np.float32), "steps": np.array(5)}
    nova, avg = make(FedNova), make(FedAvg)
    configure(nova), configure(avg)
    x_nova, _ = nova.aggregate_train(1, [reply(0, a, 10, **{"tau-eff": 7.0}), reply(1, b, 30, **{"tau-eff": 7.0})])
    x_avg, _ = avg.aggregate_train(1, [reply(0, a, 10), reply(1, b, 30)])
    for key in ("w", "b"):
        np.testing.assert_allclose(to_numpy(x_nova)[key], to_numpy(x_avg)[key], rtol=1e-6)


def test_fednova_normalises_by_local_steps():
    # client 0 moved -2 in 2 steps, client 1 moved -8 in 8 steps: both at "-1 per step"
    x = GLOBAL["w"].astype(np.float64)
    a = dict(GLOBAL, w=(x - 2).astype(np.float32))
    b = dict(GLOBAL, w=(x - 8).astype(np.float32))
    s = make(FedNova)
    configure(s)
    out, _ = s.aggregate_train(1, [reply(0, a, 10, **{"tau-eff": 2.0}), reply(1, b, 10, **{"tau-eff": 8.0})])
    # tau_eff = 5 steps of -1 each, whereas FedAvg would give the -5 only by coincidence of weights
    np.testing.assert_allclose(to_numpy(out)["w"], x - 5.0, rtol=1e-6)


def test_accumulation_norm():
    assert accumulation_norm(5, 0.0) == 5.0
    rho, tau = 0.9, 3
    direct = sum(sum(rho**j for j in range(k + 1)) for k in range(tau))  # 1 + (1+rho) + (1+rho+rho^2)
    assert accumulation_norm(tau, rho) == pytest.approx(direct)


def test_scaffold_sends_control_and_updates_it():
    s = make(Scaffold)
    messages = configure(s)
    assert all(set(m.content["control"].keys()) == {"w", "b"} for m in messages)
    dc0 = {"w": np.array([1.0, 1.0], np.float32), "b": np.array([2.0], np.float32)}
    dc1 = {"w": np.array([3.0, 1.0], np.float32), "b": np.array([0.0], np.float32)}
    y0 = dict(GLOBAL, w=GLOBAL["w"] + 1)
    y1 = dict(GLOBAL, w=GLOBAL["w"] + 3)
    arrays, _ = s.aggregate_train(
        1, [reply(0, y0, 10, **{"control-delta": dc0}), reply(1, y1, 90, **{"control-delta": dc1})]
    )
    np.testing.assert_allclose(to_numpy(arrays)["w"], GLOBAL["w"] + 2)  # unweighted mean, eta_g = 1
    c = to_numpy(s.control)
    np.testing.assert_allclose(c["w"], 2 / 4 * np.array([2.0, 1.0]))  # |S|/N * mean(delta c)
    np.testing.assert_allclose(c["b"], 2 / 4 * np.array([1.0]))
    restored = make(Scaffold)
    restored.load_state_dict(s.state_dict())
    np.testing.assert_allclose(to_numpy(restored.control)["w"], c["w"])


def test_scaffold_rejects_reply_without_control_delta():
    s = make(Scaffold)
    configure(s)
    with pytest.raises(RoundFailedError):
        s.aggregate_train(1, [reply(0, GLOBAL), reply(1, GLOBAL)])
    assert "control-delta" in s.dropped[0]["reason"]


@pytest.mark.parametrize("name", group_options("strategy"))
def test_every_strategy_is_built_with_typed_params_and_cites_its_paper(name):
    from fedsim.validation import compose_run
    from strategies import strategy_from_config

    model = "cnn" if name == "fedsa" else "mlp"
    strategy = strategy_from_config(compose_run([f"strategy={name}", f"model={model}", "backend=inprocess"]), ["w"])
    assert type(strategy.params).__module__ == f"strategies.{name}" and strategy.params.name == name
    assert strategy.paper and strategy.paper in strategy.describe()


def test_a_bad_strategy_value_fails_when_the_strategy_is_built():
    from fedsim.config import compose
    from fedsim.errors import ConfigError
    from strategies import strategy_from_config

    with pytest.raises(ConfigError, match="strategy.mu=-1"):
        strategy_from_config(compose(["strategy=fedprox", "strategy.mu=-1"]), ["w"])


def test_default_params_are_the_config_files_typed_and_checked():
    from omegaconf import OmegaConf

    from fedsim.config import CONFIG_DIR
    from fedsim.errors import ConfigError
    from strategies import default_params

    for name in group_options("strategy"):
        params = default_params(name)
        yaml = OmegaConf.load(CONFIG_DIR / "strategy" / f"{name}.yaml")
        assert {k: getattr(params, k) for k in yaml if k != "setting"} == {
            k: v for k, v in OmegaConf.to_container(yaml).items() if k != "setting"
        }, name
    assert default_params("fedprox", mu=0.5).mu == 0.5
    with pytest.raises(ConfigError, match=r"strategy.mu=-1: must be >= 0"):
        default_params("fedprox", mu=-1)
    with pytest.raises(ConfigError, match="no such key; did you mean strategy.mu"):
        default_params("fedprox", muu=0.1)
