"""Twin-sight and the FixMatch baseline: losses, augmentations, label-deficient runs."""

import numpy as np
import pytest
import torch

from clients.twinsight import info_nce, neighbourhood_loss
from fedsim.data import make_partition
from fedsim.data.augment import strong, weak
from fedsim.engine import run
from tests.conftest import read_metrics


def test_neighbourhood_loss_zero_iff_geometry_agrees():
    g = torch.Generator().manual_seed(0)
    u = torch.randn(16, 8, generator=g)
    rotation, _ = torch.linalg.qr(torch.randn(8, 8, generator=g))
    assert neighbourhood_loss(u, u).item() < 1e-12
    assert neighbourhood_loss(u, 3.0 * u @ rotation).item() < 1e-10  # same neighbourhoods, other basis/scale
    assert neighbourhood_loss(u, torch.randn(16, 8, generator=g)).item() > 1e-2


def test_neighbourhood_loss_has_the_official_strength():
    """Official Twin-sight: sum((Gu - Gv)^2) / (B ^ 2) with ^ a XOR (about B): B times a mean over B x B."""
    g = torch.Generator().manual_seed(1)
    for batch in (8, 64, 128):
        u, v = torch.randn(batch, 5, generator=g), torch.randn(batch, 5, generator=g)
        un, vn = torch.nn.functional.normalize(u, dim=1), torch.nn.functional.normalize(v, dim=1)
        squared = (un @ un.T - vn @ vn.T).pow(2)
        assert neighbourhood_loss(u, v).item() == pytest.approx(squared.sum().item() / batch, rel=1e-5)
        assert neighbourhood_loss(u, v).item() == pytest.approx(batch * squared.mean().item(), rel=1e-5)
        official = squared.sum().item() / (batch ^ 2)
        assert abs(neighbourhood_loss(u, v).item() / official - 1) <= 2 / batch + 1e-6


def test_info_nce_prefers_matching_views():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(32, 16, generator=g)
    matched = info_nce(z, z + 0.01 * torch.randn(32, 16, generator=g), temperature=0.07)
    unmatched = info_nce(z, torch.randn(32, 16, generator=g), temperature=0.07)
    assert matched.item() < 0.1 < unmatched.item()


def test_augmentations_seeded_and_shape_preserving():
    x = torch.randint(0, 256, (8, 1, 28, 28), dtype=torch.uint8)
    a = weak(x, torch.Generator().manual_seed(1))
    b = weak(x, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and a.shape == x.shape and a.dtype == torch.uint8
    assert not torch.equal(a, weak(x, torch.Generator().manual_seed(2)))
    ones = torch.zeros(4, 1, 16, 16, dtype=torch.uint8)
    ones[:, :, :, :8] = 255  # left half white: a flip would move it right
    unflipped = weak(ones, torch.Generator().manual_seed(0), flip=False)
    assert (unflipped[:, :, :, :6].float().mean() > unflipped[:, :, :, 10:].float().mean()).item()
    s = strong(x, torch.Generator().manual_seed(1))
    assert s.shape == x.shape and not torch.equal(s, a)


def test_labeled_split_is_reproducible_with_the_right_ratio():
    labels = np.repeat(np.arange(10), 100)
    cfg = {"name": "dirichlet", "alpha": 0.5, "labeled_ratio": 0.05}
    a, b = make_partition(labels, 10, cfg, 3), make_partition(labels, 10, cfg, 3)
    for x, y in zip(a, b):
        assert np.array_equal(x.labeled, y.labeled)
        assert len(x.labeled) == round(0.05 * len(x.all))


def test_twinsight_end_to_end_with_labeled_and_unlabeled_clients(make_cfg):
    path = run(
        make_cfg(
            "strategy=twinsight", "partition.labeled_clients=2", "clients_per_round=4", "num_rounds=3", "local_epochs=1"
        )
    )
    records = read_metrics(path)
    assert [r["round"] for r in records] == [1, 2, 3] and all(r["clients_ok"] == 4 for r in records)
    assert records[-1]["test_accuracy"] > 0.3


def test_supervised_baseline_skips_unlabeled_clients(make_cfg):
    path = run(make_cfg("strategy=fedavg", "partition.labeled_clients=2", "clients_per_round=4", "num_rounds=2"))
    assert all(r["clients_sampled"] == 2 and r["clients_ok"] == 2 for r in read_metrics(path))
    fixmatch = read_metrics(
        run(
            make_cfg(
                "strategy=fixmatch", "partition.labeled_clients=2", "clients_per_round=4", "num_rounds=2", name="fm"
            )
        )
    )
    assert all(r["clients_sampled"] == 4 and r["clients_ok"] == 4 for r in fixmatch)


def test_fixmatch_steps_pair_a_labeled_and_an_unlabeled_batch():
    from types import SimpleNamespace

    import torch
    from flwr.app import ConfigRecord

    from clients.fixmatch import FixMatchClient
    from fedsim.data.local import LocalData

    labeled = LocalData(torch.zeros(10, 1, 2, 2, dtype=torch.uint8), torch.arange(10) % 3, None)
    unlabeled = LocalData(
        torch.arange(90, dtype=torch.uint8).view(90, 1, 1, 1).expand(90, 1, 2, 2).clone(),
        torch.zeros(90, dtype=torch.int64),
        None,
    )
    client = FixMatchClient(SimpleNamespace(data=labeled, unlabeled=unlabeled))
    batches = list(client.batches(ConfigRecord({"batch-size": 8}), torch.Generator().manual_seed(0)))
    assert len(batches) == 12  # one pass over the 90 unlabeled samples, the 10 labeled ones cycled
    seen = []
    for x, y in batches:
        assert (y >= 0).sum() in (8, 2) and (y == -1).sum() in (8, 2)  # 10 = 8 + 2, 90 = 11 x 8 + 2
        seen += x[y == -1, 0, 0, 0].tolist()
    assert sorted(seen) == list(range(90))
