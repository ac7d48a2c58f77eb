import numpy as np
import pytest

from fedsim.data.partition import dirichlet, label_histograms, make_partition, shards
from fedsim.errors import ConfigError

LABELS = np.repeat(np.arange(10), 200)


def covers_all_once(parts, n):
    joined = np.concatenate(parts)
    return len(joined) == n and len(np.unique(joined)) == n


def test_iid_equal_disjoint_complete():
    splits = make_partition(LABELS, 7, {"name": "iid"}, seed=1)
    sizes = [len(s.all) for s in splits]
    assert max(sizes) - min(sizes) <= 1
    assert covers_all_once([s.all for s in splits], len(LABELS))


def test_dirichlet_reproducible_and_seed_dependent():
    cfg = {"name": "dirichlet", "alpha": 0.3, "min_size": 10}
    a = make_partition(LABELS, 10, cfg, seed=3)
    b = make_partition(LABELS, 10, cfg, seed=3)
    c = make_partition(LABELS, 10, cfg, seed=4)
    assert all(np.array_equal(x.all, y.all) for x, y in zip(a, b))
    assert not all(np.array_equal(x.all, y.all) for x, y in zip(a, c))
    assert covers_all_once([s.all for s in a], len(LABELS))
    assert min(len(s.all) for s in a) >= 10


def test_dirichlet_alpha_controls_skew():
    def mean_classes(alpha):
        parts = dirichlet(LABELS, 10, alpha, np.random.default_rng(0))
        return np.mean([len(np.unique(LABELS[p])) for p in parts])

    assert mean_classes(0.05) < mean_classes(1.0) < mean_classes(100.0) + 1e-9
    assert mean_classes(100.0) == 10


def test_shards_give_exactly_k_classes():
    parts = shards(LABELS, 10, 2, np.random.default_rng(0))
    assert all(len(np.unique(LABELS[p])) == 2 for p in parts)
    assert covers_all_once(parts, len(LABELS))


def test_shards_rejects_too_many_classes():
    with pytest.raises(ConfigError, match="classes_per_client"):
        shards(LABELS, 4, 11, np.random.default_rng(0))


def test_labeled_ratio_per_client():
    splits = make_partition(LABELS, 5, {"name": "iid", "labeled_ratio": 0.1}, seed=0)
    for s in splits:
        assert len(s.labeled) == round(0.1 * len(s.all))
        assert len(np.intersect1d(s.labeled, s.unlabeled)) == 0


def test_labeled_clients_split_whole_clients():
    splits = make_partition(LABELS, 5, {"name": "iid", "labeled_clients": 2}, seed=0)
    assert [len(s.unlabeled) == 0 for s in splits] == [True, True, False, False, False]
    assert all(len(s.labeled) == 0 for s in splits[2:])


def test_histograms_match_counts():
    splits = make_partition(LABELS, 4, {"name": "dirichlet", "alpha": 0.5}, seed=0)
    hist = label_histograms(LABELS, splits, 10)
    assert [sum(h) for h in hist] == [len(s.all) for s in splits]


def test_max_samples_per_client_takes_a_subset_of_each_client():
    full = make_partition(LABELS, 5, {"name": "shards", "classes_per_client": 2}, seed=0)
    capped = make_partition(
        LABELS, 5, {"name": "shards", "classes_per_client": 2, "max_samples_per_client": 30}, seed=0
    )
    for f, c in zip(full, capped):
        assert len(c.all) == min(30, len(f.all)) and set(c.all.tolist()) <= set(f.all.tolist())
    with pytest.raises(ConfigError, match="max_samples_per_client=0"):
        make_partition(LABELS, 5, {"name": "iid", "max_samples_per_client": 0}, seed=0)


def test_overlapping_clients_outnumber_the_samples():
    """partition.samples_per_client: every client draws its own distinct samples (cross-device scale)."""
    labels = np.random.default_rng(0).integers(0, 10, 500)
    cfg = {"name": "iid", "samples_per_client": 4}
    splits = make_partition(labels, 2000, cfg, seed=3)
    assert len(splits) == 2000 and all(len(s.labeled) == 4 and len(np.unique(s.labeled)) == 4 for s in splits)
    assert all(s.labeled.max() < 500 for s in splits)
    again = make_partition(labels, 2000, cfg, seed=3)
    assert all(np.array_equal(a.labeled, b.labeled) for a, b in zip(splits, again))
    with pytest.raises(ConfigError, match="samples_per_client"):
        make_partition(labels, 2000, {"name": "iid"}, seed=3)
