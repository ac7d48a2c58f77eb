"""Decentralized strategies: personal test splits, sparse masks and their encoding, mask-aware
aggregation, the SBM cooperation graph, link accounting, and end-to-end runs."""

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.supercore.task_identity import TaskIdentity
from torch import nn

from clients.dispfl import DisPFLClient, erk_densities, prune_and_regrow, random_mask
from clients.scool import mix_updates, official_row
from fedsim.data import personal_test_split
from fedsim.decentralized import link_metrics
from fedsim.engine import resume_config, run
from fedsim.experiments.graph import same_group_weight
from fedsim.experiments.runs import load_runs
from fedsim.records import from_numpy, payload_bytes
from fedsim.sparse import decode_sparse, encode_sparse
from strategies import strategy_from_config
from strategies.scool import sbm_fit_official, sbm_log_odds, sbm_prior, sbm_update
from tests.conftest import comparable, read_metrics

TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 0, SUPERLINK_NODE_ID

PATHOLOGICAL = ["partition=shards", "partition.classes_per_client=2"]


def test_personal_test_split_follows_each_clients_labels():
    test_labels = np.repeat(np.arange(3), 100)
    histograms = [[30, 0, 10], [10, 0, 0], [0, 0, 10]]  # class 1 held by nobody
    parts = personal_test_split(test_labels, histograms, np.random.default_rng(0))
    joined = np.concatenate(parts)
    assert len(joined) == len(set(joined.tolist())) == 200  # disjoint, classes 0 and 2 fully dealt
    counts = [np.bincount(test_labels[p], minlength=3).tolist() for p in parts]
    assert counts == [[75, 0, 50], [25, 0, 0], [0, 0, 50]]


def test_erk_densities_meet_the_overall_density():
    shapes = {"conv": (32, 1, 5, 5), "fc1": (512, 3136), "fc2": (10, 512)}
    d = erk_densities(shapes, 0.5)
    numel = {n: math.prod(s) for n, s in shapes.items()}
    assert sum(d[n] * numel[n] for n in shapes) == pytest.approx(0.5 * sum(numel.values()))
    assert all(0 < v <= 1 for v in d.values())
    assert d["fc1"] < d["fc2"] and d["conv"] == 1.0  # big layers sparser, tiny ones dense


@pytest.mark.parametrize("use_gradient", [False, True])
def test_prune_and_regrow_keeps_exact_density(use_gradient):
    g = torch.Generator().manual_seed(0)
    mask = random_mask((40, 25), 0.3, g)
    assert int(mask.sum()) == 300
    weights = torch.randn(40, 25) * mask
    for rate in (0.5, 0.25, 0.1, 0.0):
        gradient = torch.randn(40, 25) if use_gradient else None
        new = prune_and_regrow(weights, mask, rate, g, gradient)
        assert int(new.sum()) == 300
        kept_before = mask.flatten().bool()
        dropped = kept_before & ~new.flatten().bool()
        if rate == 0.0:
            assert torch.equal(new, mask)
        else:  # only the ceil(rate * nnz) smallest kept weights may leave the mask
            kept = torch.nonzero(kept_before).flatten()
            smallest = set(kept[weights.flatten()[kept].abs().argsort()[: math.ceil(rate * 300)]].tolist())
            assert set(torch.nonzero(dropped).flatten().tolist()) <= smallest
            assert not torch.equal(new, mask)
        mask, weights = new, torch.randn(40, 25) * new


def test_sparse_encoding_round_trips_and_counts_bytes():
    w = {"k": torch.arange(12, dtype=torch.float32).view(3, 4), "b": torch.ones(3)}
    m = {"k": torch.tensor([[1, 0, 0, 1], [0, 0, 0, 0], [1, 1, 0, 0]], dtype=torch.float32)}
    record = encode_sparse(w, m)
    assert sum(a.numpy().nbytes for a in record.values()) == 4 * 4 + 2 + 3 * 4  # values, 12-bit bitmap, dense bias
    weights, masks = decode_sparse(record, {"k": (3, 4), "b": (3,)})
    assert torch.equal(weights["k"], w["k"] * m["k"]) and torch.equal(masks["k"], m["k"])
    bad = encode_sparse({"k": w["k"], "b": w["b"]}, m)
    bad["k#values"] = from_numpy({"x": np.zeros(3, np.float32)})["x"]
    with pytest.raises(ValueError, match="3 values for 4 kept"):
        decode_sparse(bad, {"k": (3, 4), "b": (3,)})


def test_mask_aware_aggregation_on_a_constructed_example():
    own = {"k": torch.tensor([[2.0, 0.0], [4.0, 0.0]]), "b": torch.tensor([1.0])}
    own_shared = {"k": torch.tensor([[1.0, 0.0], [1.0, 0.0]])}
    own_next = {"k": torch.tensor([[1.0, 1.0], [0.0, 1.0]])}  # after its last prune-and-regrow
    peer = encode_sparse(
        {"k": torch.tensor([[6.0, 8.0], [0.0, 0.0]]), "b": torch.tensor([3.0])},
        {"k": torch.tensor([[1.0, 1.0], [0.0, 0.0]])},
    )
    model = nn.Module()
    model.k, model.b = nn.Parameter(torch.zeros(2, 2)), nn.Parameter(torch.zeros(1))
    client = DisPFLClient(env=SimpleNamespace(model=model))
    state = client.pack(own, own_shared, own_next)
    weights, shared, following = client.unpack(state)  # the kept state decodes to what was packed
    assert torch.equal(weights["k"], own["k"]) and torch.equal(shared["k"], own_shared["k"])
    assert torch.equal(following["k"], own_next["k"])
    dense = {"weights.k": own["k"], "weights.b": own["b"], "shared-mask.k": own_shared["k"], "mask.k": own_next["k"]}
    assert all(torch.equal(a["k"], b["k"]) for a, b in zip(client.unpack(dense), (weights, shared, following)))
    start = client.combine(state, {7: peer}, content=None)
    # entry (0,0): both keep it -> (2+6)/2; (0,1): only the peer -> 8; (1,1): nobody -> 0;
    # (1,0): dropped from the own mask -> 0; dense bias: plain mean
    assert torch.equal(start["k"], torch.tensor([[4.0, 8.0], [0.0, 0.0]]))
    assert torch.equal(start["b"], torch.tensor([2.0]))


def test_sbm_finds_the_blocks_of_clients_that_share_tasks():
    groups = np.array([0, 0, 0, 1, 1, 1])
    adjacency = np.where(groups[:, None] == groups[None, :], 1.0, 0.05)
    observed = ~np.eye(6, dtype=bool)
    phi0 = np.random.default_rng(0).dirichlet(np.ones(2), size=6)
    phi, blocks = sbm_update(adjacency, observed, phi0, np.full((2, 2), 0.2) + 0.6 * np.eye(2), iterations=10)
    z = phi.argmax(1)
    assert len(set(z[:3])) == 1 and len(set(z[3:])) == 1 and z[0] != z[3]
    prior = sbm_prior(phi, blocks)
    within = prior[np.equal.outer(groups, groups) & observed]
    across = prior[~np.equal.outer(groups, groups)]
    assert within.min() > across.max()


def test_link_accounting_equals_the_records_relayed(make_cfg):
    cfg = make_cfg("strategy=dispfl", "strategy.num_neighbours=2")
    strategy = strategy_from_config(cfg, ["w"])
    strategy.set_clients({c: 100 + c for c in range(4)}, {c: 10 for c in range(4)})
    initial = {"w": np.zeros((8, 8), np.float32)}
    for c in range(4):  # every client shared a sparse model of a different density
        strategy.shared[c] = encode_sparse(
            {"w": torch.ones(8, 8)}, {"w": (torch.rand(8, 8, generator=torch.Generator().manual_seed(c)) < 0.5).float()}
        )
    config = ConfigRecord({"lr": 0.1, "local-epochs": 1, "batch-size": 8, "last-checkpoint": 0})
    messages = list(strategy.configure_train(2, from_numpy(initial), config, grid=None))
    relayed = sum(
        payload_bytes(m.content) - payload_bytes(type(m.content)({"config": m.content["config"]})) for m in messages
    )
    totals = link_metrics(strategy.links)
    assert totals["p2p-bytes"] == relayed and totals["p2p-links"] == 2 * len(messages)
    for src, dst, size in strategy.links:
        assert src != dst and size == sum(len(a.data) for a in strategy.shared[src].values())


@pytest.mark.parametrize("strategy", ["local", "dpsgd", "dispfl", "scool-sbm", "scool-attention", "scool-dirac"])
def test_decentralized_strategies_run_and_personalize(make_cfg, strategy):
    name, _, prior = strategy.partition("-")
    overrides = [f"strategy={name}", "num_rounds=4", *PATHOLOGICAL] + ([f"strategy.prior={prior}"] if prior else [])
    records = read_metrics(run(make_cfg(*overrides)))
    last = records[-1]
    assert set(last["personal_accuracy"]) == {"0", "1", "2", "3"}
    assert last["test_accuracy"] == pytest.approx(np.mean(list(last["personal_accuracy"].values())))
    assert last["test_accuracy"] > 0.8  # two classes per client: chance is 0.5
    if name == "local":
        assert all(r["p2p_bytes"] == 0 for r in records)
    else:
        assert records[-1]["p2p_links"] > 0 and records[-1]["p2p_busiest_node_bytes"] > 0
    if name == "dispfl":
        assert all(r["density"] == pytest.approx(0.5, abs=1e-3) for r in records)


def test_dispfl_traffic_is_a_fraction_of_dense_gossip(make_cfg):
    dense = read_metrics(run(make_cfg("strategy=dpsgd", "num_rounds=2", name="dense")))[-1]
    sparse = read_metrics(run(make_cfg("strategy=dispfl", "strategy.density=0.25", "num_rounds=2", name="sparse")))[-1]
    assert dense["p2p_links"] == sparse["p2p_links"]
    assert sparse["p2p_bytes"] < 0.4 * dense["p2p_bytes"]


@pytest.mark.parametrize("strategy", ["dispfl", "scool"])
def test_personal_state_survives_resume(make_cfg, strategy):
    fixed = [*PATHOLOGICAL, "checkpoint_every=2"] + (["strategy.anneal_rounds=4"] if strategy == "dispfl" else [])
    full = read_metrics(run(make_cfg(f"strategy={strategy}", "num_rounds=4", *fixed, name="full")))
    cut = make_cfg(f"strategy={strategy}", "num_rounds=3", *fixed, name="cut")
    path = run(cut)
    (path / "checkpoints" / "round_000003.pt").unlink()
    run(resume_config(path, make_cfg("num_rounds=4")))
    assert comparable(read_metrics(path)) == comparable(full)


def test_unknown_topology_is_a_config_error(make_cfg):
    from fedsim.errors import ConfigError

    with pytest.raises(ConfigError, match="strategy.topology='star': expected one of none, ring, full, random"):
        make_cfg("strategy=dpsgd", "strategy.topology=star")


def test_dense_dispfl_is_dpsgd(make_cfg):
    """At density 1 with a frozen mask, mask-aware aggregation is plain gossip averaging."""
    dense = read_metrics(run(make_cfg("strategy=dpsgd", *PATHOLOGICAL, name="dpsgd")))
    dispfl = read_metrics(
        run(
            make_cfg(
                "strategy=dispfl", "strategy.density=1.0", "strategy.anneal_factor=0", *PATHOLOGICAL, name="dispfl"
            )
        )
    )
    for a, b in zip(dense, dispfl):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-6)
        assert a["personal_accuracy"] == pytest.approx(b["personal_accuracy"], rel=1e-6)


def test_official_scool_edges_are_normalised_sigmoids_and_it_mixes_updates():
    """SBM.optimize_W / output_W: W_j = sigmoid((prior_j - loss_j) / scale), row-normalised; then
    theta <- start + sum_j W_j delta_j (SCooL_SBM.py's combinate_gradients on start)."""
    prior, losses, scale = [1.0, -1.0, 0.5], [0.2, 2.0, 0.4], 2.0
    edges = [1 / (1 + math.exp(-(p - loss) / scale)) for p, loss in zip(prior, losses)]
    assert official_row(prior, losses, scale) == pytest.approx([e / sum(edges) for e in edges], rel=1e-12)
    start = {"w": torch.tensor([1.0, 2.0]), "n": torch.tensor(3)}
    updates = [{"w": torch.tensor([0.5, 0.0])}, {"w": torch.tensor([-1.0, 4.0])}]
    mixed = mix_updates(start, updates, [0.25, 0.75])
    assert torch.allclose(mixed["w"], torch.tensor([1.0 + 0.125 - 0.75, 2.0 + 3.0])) and mixed["n"] == 3


def test_official_sbm_fit_groups_clients_whose_models_fit_each_others_data():
    """Loss matrix of two groups (models fit their own group's data): the refit puts the groups in
    different blocks, and the prior log-odds are higher within a group than across. (With the
    official 2 passes from a fresh random start the blocks are often not yet separated: the
    official prior is weak, the likelihood term does most of the work.)"""
    groups = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    loss = np.where(np.equal.outer(groups, groups), 0.3, 3.0)
    observed = ~np.eye(8, dtype=bool)
    blocks = np.full((2, 2), 0.2) + 0.6 * np.eye(2)
    phi = sbm_fit_official(-loss, observed, blocks, scale=2.0, iterations=20, generator=np.random.default_rng(0))
    z = phi.argmax(1)
    assert len(set(z[:4])) == 1 and len(set(z[4:])) == 1 and z[0] != z[4]
    prior = sbm_log_odds(phi, blocks)
    assert prior[np.equal.outer(groups, groups) & observed].min() > prior[~np.equal.outer(groups, groups)].max()


def test_official_scool_with_the_dirac_prior_is_dpsgd(make_cfg):
    """All clients active, full graph, uniform weights: every start is the same, so mixing the
    updates into it equals averaging the models (D-PSGD on the full graph)."""
    every = [*PATHOLOGICAL, "clients_per_round=4", "num_rounds=3"]
    dpsgd = read_metrics(run(make_cfg("strategy=dpsgd", "strategy.topology=full", *every, name="dpsgd")))
    scool = read_metrics(
        run(make_cfg("strategy=scool", "strategy.prior=dirac", "strategy.topology=full", *every, name="scool"))
    )
    for a, b in zip(dpsgd, scool):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
        assert a["personal_accuracy"] == pytest.approx(b["personal_accuracy"], abs=1e-6)
    assert scool[-1]["p2p_bytes"] == 2 * dpsgd[-1]["p2p_bytes"]  # the model to score and the update to mix


def test_same_group_weight_scores_a_graph_against_the_label_groups():
    groups = [frozenset({0, 1}), frozenset({0, 1}), frozenset({2, 3}), frozenset({2, 3})]
    perfect = np.array([[5, 1, 0, 0], [1, 5, 0, 0], [0, 0, 5, 1], [0, 0, 1, 5]], dtype=float)
    assert same_group_weight(perfect, groups) == (1.0, pytest.approx(1 / 3))
    blind = np.ones((4, 4))
    assert same_group_weight(blind, groups) == (pytest.approx(1 / 3), pytest.approx(1 / 3))


def test_scool_logs_its_graph_and_the_report_scores_it_against_the_true_groups(make_cfg):
    """Shards of 2 classes over 10 clients: clients k and k+5 hold the same classes (the true groups).
    Every client's row and label subset accuracy are logged; the report derives the graph's score."""
    path = run(make_cfg("strategy=scool", *PATHOLOGICAL, "num_clients=10", "clients_per_round=10", "num_rounds=2"))
    last = read_metrics(path)[-1]
    assert len(last["graph_weights"]) == 100 and last["subset_accuracy"] >= last["test_accuracy"]
    table = load_runs([str(path)]).metrics
    share, chance = table["graph_same_group_weight"].iloc[-1], table["graph_same_group_chance"].iloc[-1]
    assert chance == pytest.approx(1 / 9) and 0.0 <= share <= 1.0


def test_personal_evaluation_scores_the_global_model_on_each_clients_split(make_cfg):
    """evaluation=personal: FedAvg's global model on every client's own test split (personalized FL's
    score, comparable with the decentralized strategies'); the subset accuracy is never below it."""
    last = read_metrics(run(make_cfg(*PATHOLOGICAL, "evaluation=personal")))[-1]
    assert set(last["personal_accuracy"]) == {"0", "1", "2", "3"}
    assert last["test_accuracy"] == pytest.approx(np.mean(list(last["personal_accuracy"].values())))
    assert last["subset_accuracy"] >= last["test_accuracy"]
    whole = read_metrics(run(make_cfg(*PATHOLOGICAL, name="global")))[-1]
    assert "personal_accuracy" not in whole and "subset_accuracy" not in whole
