"""FedImpro: split points, per-class feature statistics, their pooling and sampling; update dissimilarity."""

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord

from clients.fedimpro import FeatureStats, sample_features
from fedsim.engine import run
from fedsim.models import build_model, split_model
from fedsim.records import from_numpy
from fedsim.strategy import ClientReply, update_dissimilarity
from flwr.app import MetricRecord, RecordDict
from strategies.fedimpro import pool_feature_stats
from tests.conftest import read_metrics


@pytest.mark.parametrize("name, shape, dim", [("cnn", (1, 28, 28), 3136), ("mlp", (1, 8, 8), 200), ("resnet18", (3, 32, 32), 128 * 16 * 16)])
def test_split_point_for_each_model(name, shape, dim):
    model = build_model(name, shape, 10).eval()
    low, high = split_model(model)
    x = torch.randn(3, *shape)
    h = low(x)
    assert h[0].numel() == dim
    torch.testing.assert_close(high(h), model(x))
    assert {id(p) for p in low.parameters()} | {id(p) for p in high.parameters()} == {id(p) for p in model.parameters()}


def test_feature_stats_match_direct_moments():
    g = torch.Generator().manual_seed(0)
    h, y = torch.randn(200, 5, generator=g), torch.randint(0, 3, (200,), generator=g)
    stats = FeatureStats(4, 5)
    for chunk in range(0, 200, 32):
        stats.add(h[chunk : chunk + 32], y[chunk : chunk + 32])
    mean, second = stats.moments()
    for c in range(3):
        torch.testing.assert_close(mean[c].float(), h[y == c].mean(0))
        torch.testing.assert_close(second[c].float(), (h[y == c] ** 2).mean(0))
    assert stats.count.tolist()[:3] == [float((y == c).sum()) for c in range(3)] and stats.count[3] == 0


def test_pooling_is_exact_count_weighted():
    rng = np.random.default_rng(0)
    feats = {0: rng.normal(size=(30, 4)), 1: rng.normal(2.0, 3.0, size=(10, 4))}  # client -> features of class 0
    records = []
    for k, f in feats.items():
        records.append(from_numpy({
            "count": np.array([len(f), 0.0]), "mean": np.stack([f.mean(0), np.zeros(4)]), "second": np.stack([(f**2).mean(0), np.zeros(4)]),
        }))
    previous = {"count": np.array([0.0, 7.0]), "mean": np.zeros((2, 4)), "var": np.full((2, 4), 5.0)}
    pooled = pool_feature_stats(records, previous)
    everything = np.concatenate(list(feats.values()))
    np.testing.assert_allclose(pooled["mean"][0], everything.mean(0))
    np.testing.assert_allclose(pooled["var"][0], everything.var(0))
    assert pooled["count"][0] == 40
    # class 1: no client held it this round -> previous statistics kept
    assert pooled["count"][1] == 7 and np.all(pooled["var"][1] == 5.0)


def test_sampling_follows_the_aggregated_distribution():
    stats = ArrayRecord({
        "count": torch.tensor([5.0, 0.0, 3.0]),
        "mean": torch.tensor([[1.0, -2.0], [9.0, 9.0], [0.0, 4.0]]),
        "var": torch.tensor([[0.25, 4.0], [1.0, 1.0], [1.0, 0.01]]),
    })
    h, c = sample_features(stats, 20000, torch.Generator().manual_seed(0))
    assert set(c.tolist()) == {0, 2}  # never a class without statistics
    assert abs((c == 0).float().mean().item() - 0.5) < 0.02  # class-balanced
    for cls, mean, std in ((0, [1.0, -2.0], [0.5, 2.0]), (2, [0.0, 4.0], [1.0, 0.1])):
        torch.testing.assert_close(h[c == cls].mean(0), torch.tensor(mean), atol=0.05, rtol=0)
        torch.testing.assert_close(h[c == cls].std(0), torch.tensor(std), atol=0.05, rtol=0.02)


def _reply(delta, n):
    arrays = from_numpy({"w": np.array(delta, np.float32)})
    return ClientReply(0, RecordDict({"arrays": arrays, "metrics": MetricRecord({"num-examples": n})}))


def test_update_dissimilarity():
    x = from_numpy({"w": np.zeros(2, np.float32)})
    same = update_dissimilarity(x, [_reply([1, 1], 5), _reply([1, 1], 15)], ["w"])
    assert same["update-variance"] == 0 and same["update-dissimilarity"] == 0
    out = update_dissimilarity(x, [_reply([2, 0], 1), _reply([0, 2], 1)], ["w"])
    # mean (1, 1); each deviates by ||(1, -1)||^2 = 2
    assert out["update-variance"] == pytest.approx(2.0) and out["update-dissimilarity"] == pytest.approx(1.0)


def test_fedimpro_end_to_end_with_noised_stats(make_cfg):
    path = run(make_cfg("strategy=fedimpro", "strategy.stats_noise_std=0.01", "partition=dirichlet", "num_rounds=4"))
    records = read_metrics(path)
    assert records[-1]["test_accuracy"] > 0.5
    assert all(r["classes_with_stats"] == 10 for r in records)
    assert all(r["update_dissimilarity"] > 0 for r in records)
