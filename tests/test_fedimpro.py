"""FedImpro: split points, per-class feature statistics, their pooling and sampling; update dissimilarity."""

import numpy as np
import pytest
import torch
from flwr.app import MetricRecord, RecordDict

from clients.fedimpro import RunningClassStats
from fedsim.engine import run
from fedsim.models import build_model, split_model
from fedsim.records import from_numpy
from fedsim.strategy import ClientReply, update_dissimilarity
from strategies.fedimpro import average_feature_stats, lambda_schedule
from tests.conftest import read_metrics


@pytest.mark.parametrize(
    "name, shape, dim",
    [("cnn", (1, 28, 28), 32 * 14 * 14), ("mlp", (1, 8, 8), 200), ("resnet18", (3, 32, 32), 128 * 16 * 16)],
)
def test_split_point_for_each_model(name, shape, dim):
    model = build_model(name, shape, 10).eval()
    low, high = split_model(model)
    x = torch.randn(3, *shape)
    h = low(x)
    assert h[0].numel() == dim
    torch.testing.assert_close(high(h), model(x))
    assert {id(p) for p in low.parameters()} | {id(p) for p in high.parameters()} == {id(p) for p in model.parameters()}


def test_running_estimate_moves_each_present_class_by_its_share():
    """Official update: mean_c <- (1 - w) mean_c + w mean(h_c), std likewise, w = n_c / 5000; std capped."""
    g = torch.Generator().manual_seed(0)
    mean, std = torch.rand(3, 4, generator=g), torch.full((3, 4), 0.1)
    estimate = RunningClassStats(mean, std, reference_count=10, std_max=0.5)
    h = torch.randn(8, 4, generator=g) * 0.3 + 2.0
    y = torch.tensor([0, 0, 0, 0, 0, 2, 2, 2])
    estimate.update(h, y)
    torch.testing.assert_close(estimate.mean[0], 0.5 * mean[0] + 0.5 * h[:5].mean(0))
    torch.testing.assert_close(estimate.mean[2], 0.7 * mean[2] + 0.3 * h[5:].mean(0))
    torch.testing.assert_close(estimate.mean[1], mean[1])  # a class not in the batch keeps the global statistics
    torch.testing.assert_close(estimate.std[0], (0.5 * 0.1 + 0.5 * h[:5].std(0)).clamp(max=0.5))
    estimate.update(torch.full((20, 4), 100.0) + torch.randn(20, 4, generator=g) * 50, torch.ones(20, dtype=torch.long))
    assert estimate.mean[1].mean() > 90 and estimate.std.max() <= 0.5  # w = min(1, 20/10): replaced; std capped


def test_sampling_is_class_balanced_over_every_class():
    mean = torch.tensor([[1.0, -2.0], [9.0, 9.0], [0.0, 4.0]])
    std = torch.tensor([[0.5, 2.0], [1.0, 1.0], [1.0, 0.1]])
    estimate = RunningClassStats(mean, std, reference_count=5000, std_max=None)
    h, c = estimate.sample(30000, torch.Generator().manual_seed(0))
    assert len(c) == 3 * (30000 // 3 + 1) and torch.equal(torch.bincount(c), torch.full((3,), 10001))
    for cls in range(3):
        torch.testing.assert_close(h[c == cls].mean(0), mean[cls], atol=0.05, rtol=0)
        torch.testing.assert_close(h[c == cls].std(0), std[cls], atol=0.05, rtol=0.02)


def test_server_averages_estimates_uniformly_and_lambda_ramps():
    records = [from_numpy({"mean": np.full((2, 3), v), "std": np.full((2, 3), s)}) for v, s in ((1.0, 0.1), (4.0, 0.3))]
    averaged = average_feature_stats(records)
    np.testing.assert_allclose(averaged["mean"], 2.5) and np.testing.assert_allclose(averaged["std"], 0.2)
    assert lambda_schedule(20, 500, None) == pytest.approx(0.04) and lambda_schedule(1000, 500, None) == 2.0
    assert lambda_schedule(1000, 500, 1.0) == 1.0 and lambda_schedule(25, 25, None) == 1.0


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
    path = run(
        make_cfg(
            "strategy=fedimpro",
            "strategy.stats_noise_std=0.01",
            "strategy.lambda_ramp_rounds=2",
            "partition=dirichlet",
            "num_rounds=4",
        )
    )
    records = read_metrics(path)
    assert records[-1]["test_accuracy"] > 0.5
    assert [r["fedimpro_lambda"] for r in records] == [0.5, 1.0, 1.5, 2.0]
    assert all(0 < r["feature_std_mean"] <= 0.1 + 0.05 for r in records)  # capped at 0.1, plus the noise
    assert all(r["update_dissimilarity"] > 0 for r in records)
