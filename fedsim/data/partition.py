"""Client partitioners.

IID, Dirichlet(alpha) over labels, k classes per client (shards), and a labeled/unlabeled split inside each
client for semi-supervised methods.

All are pure functions of the labels, the partition config and the seed, so every process
(server, Ray actors, a resumed run) derives the same split.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedsim.errors import ConfigError


@dataclass(frozen=True)
class ClientSplit:
    """Indices into the training set held by one client."""

    labeled: np.ndarray
    unlabeled: np.ndarray

    @property
    def all(self) -> np.ndarray:
        """Every index the client holds, labeled first."""
        return np.concatenate([self.labeled, self.unlabeled])


def iid(labels: np.ndarray, num_clients: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Shuffle and cut into equal parts."""
    return [np.sort(p) for p in np.array_split(rng.permutation(len(labels)), num_clients)]


def overlapping(num_samples: int, num_clients: int, per_client: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Overlapping IID draws: each client samples independently of the others.

    Each client draws ``per_client`` distinct samples uniformly from all ``num_samples``, independently of the
    other clients (so clients share samples): a cross-device federation with more clients than the dataset has
    samples.
    """
    if per_client > num_samples:
        raise ConfigError(f"partition.samples_per_client={per_client} exceeds the {num_samples} training samples")
    draws = np.sort(rng.integers(0, num_samples, size=(num_clients, per_client)), axis=1)
    repeated = np.flatnonzero((np.diff(draws, axis=1) == 0).any(axis=1)) if per_client > 1 else np.zeros(0, int)
    for row in repeated:  # rare: a client drew a sample twice; it draws again without replacement
        draws[row] = np.sort(rng.choice(num_samples, per_client, replace=False))
    return list(draws)


def dirichlet(
    labels: np.ndarray, num_clients: int, alpha: float, rng: np.random.Generator, min_size: int = 10
) -> list[np.ndarray]:
    """Label-skew split: each class is divided among clients by proportions ~ Dir(alpha).

    As in Yurochkin et al. (2019) and the FedFed/FedML code: a client already holding its
    1/num_clients share stops receiving, and the draw is repeated until every client holds at
    least ``min_size`` samples.
    """
    n, classes = len(labels), np.unique(labels)
    min_size = min(min_size, n // num_clients)
    for _ in range(1000):
        parts: list[list[int]] = [[] for _ in range(num_clients)]
        for c in classes:
            idx = rng.permutation(np.flatnonzero(labels == c))
            p = rng.dirichlet(np.full(num_clients, alpha))
            p = p * np.array([len(part) < n / num_clients for part in parts])
            p = p / p.sum()
            cuts = (np.cumsum(p) * len(idx)).astype(int)[:-1]
            for part, chunk in zip(parts, np.split(idx, cuts)):
                part.extend(chunk.tolist())
        if min(len(part) for part in parts) >= min_size:
            return [np.sort(np.asarray(part, dtype=np.int64)) for part in parts]
    raise ConfigError(
        f"partition.alpha={alpha} could not give every one of {num_clients} clients {min_size} samples: "
        "raise partition.alpha or lower num_clients"
    )


def shards(labels: np.ndarray, num_clients: int, classes_per_client: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Pathological split: every client holds exactly ``classes_per_client`` classes.

    Classes are dealt round-robin over a random class order so each class goes to the same
    number of clients (±1); a class's samples are then cut evenly among its holders.
    """
    classes = np.unique(labels)
    if not 1 <= classes_per_client <= len(classes):
        raise ConfigError(f"partition.classes_per_client={classes_per_client} must be between 1 and {len(classes)}")
    order = rng.permutation(classes)
    holders: dict[int, list[int]] = {int(c): [] for c in classes}
    slot = 0
    for client in range(num_clients):
        for _ in range(classes_per_client):
            holders[int(order[slot % len(order)])].append(client)
            slot += 1
    parts: list[list[int]] = [[] for _ in range(num_clients)]
    for c, owners in holders.items():
        if not owners:
            continue
        idx = rng.permutation(np.flatnonzero(labels == c))
        for owner, chunk in zip(owners, np.array_split(idx, len(owners))):
            parts[owner].extend(chunk.tolist())
    return [np.sort(np.asarray(part, dtype=np.int64)) for part in parts]


def split_labeled(part: np.ndarray, labeled: float | bool, rng: np.random.Generator) -> ClientSplit:
    """Keep a fraction (or all / none, given a bool) of a client's indices labeled."""
    if isinstance(labeled, bool):
        ratio = 1.0 if labeled else 0.0
    else:
        ratio = float(labeled)
    if ratio in (0.0, 1.0):  # all or none: the sorted part, whatever order a draw would give
        whole = np.sort(part)
        return ClientSplit(whole, whole[:0]) if ratio else ClientSplit(whole[:0], whole)
    shuffled = rng.permutation(part)
    k = int(round(ratio * len(part)))
    return ClientSplit(np.sort(shuffled[:k]), np.sort(shuffled[k:]))


def make_partition(labels: np.ndarray, num_clients: int, cfg: Mapping[str, Any], seed: int) -> list[ClientSplit]:
    """Split training labels among ``num_clients`` clients as ``cfg`` (the partition group) says.

    ``cfg.samples_per_client`` (iid only) lets every client draw that many samples from all of them
    instead of splitting them (:func:`overlapping`). ``cfg.max_samples_per_client`` keeps a seeded subset of at most
    that many samples per client
    (data-scarce clients). ``cfg.labeled_ratio`` keeps that fraction of each client's data labeled; with
    ``cfg.labeled_clients = m`` the first m clients are fully labeled and the rest unlabeled.
    """
    labels = np.asarray(labels)
    kind = cfg["name"]
    per_client = cfg.get("samples_per_client") if kind == "iid" else None
    if num_clients < 1 or (num_clients > len(labels) and per_client is None):
        raise ConfigError(
            f"num_clients={num_clients} must be between 1 and the {len(labels)} training samples "
            "(more clients: partition=iid partition.samples_per_client=N, clients that overlap)"
        )
    rng = np.random.default_rng(seed)
    if kind == "iid":
        parts = (
            iid(labels, num_clients, rng)
            if per_client is None
            else overlapping(len(labels), num_clients, int(per_client), rng)
        )
    elif kind == "dirichlet":
        parts = dirichlet(labels, num_clients, float(cfg["alpha"]), rng, int(cfg.get("min_size", 10)))
    elif kind == "shards":
        parts = shards(labels, num_clients, int(cfg["classes_per_client"]), rng)
    else:
        raise ConfigError(f"unknown partition '{kind}': choose iid, dirichlet or shards")
    cap = cfg.get("max_samples_per_client")
    if cap is not None:
        if int(cap) < 1:
            raise ConfigError(f"partition.max_samples_per_client={cap} must be at least 1 (or null for no cap)")
        parts = [np.sort(rng.permutation(p)[: int(cap)]) for p in parts]
    labeled_clients = cfg.get("labeled_clients")
    ratio = float(cfg.get("labeled_ratio", 1.0))
    if not 0.0 <= ratio <= 1.0:
        raise ConfigError(f"partition.labeled_ratio={ratio} must be in [0, 1]")
    if labeled_clients is not None:
        return [split_labeled(p, cid < int(labeled_clients), rng) for cid, p in enumerate(parts)]
    return [split_labeled(p, ratio, rng) for p in parts]


def label_histograms(labels: np.ndarray, splits: list[ClientSplit], num_classes: int) -> list[list[int]]:
    """Per-client count of each class over all of the client's samples."""
    labels = np.asarray(labels)
    sizes = np.array([len(s.labeled) + len(s.unlabeled) for s in splits], dtype=np.int64)
    owner = np.repeat(np.arange(len(splits)), sizes)
    held = (
        np.concatenate([np.concatenate([s.labeled, s.unlabeled]) for s in splits]).astype(np.int64)
        if len(splits)
        else np.zeros(0, np.int64)
    )
    counts = np.bincount(owner * num_classes + labels[held], minlength=len(splits) * num_classes)
    return counts.reshape(len(splits), num_classes).tolist()


def personal_test_split(
    test_labels: np.ndarray, histograms: list[list[int]], rng: np.random.Generator
) -> list[np.ndarray]:
    """Each client's own test set, following its label distribution.

    Each client's own test set, for personalized evaluation: the test samples of every class are dealt out
    (disjointly) in proportion to how many training samples of that class each client holds, so a client is
    tested on its own label distribution.
    """
    test_labels = np.asarray(test_labels)
    counts = np.asarray(histograms, dtype=np.float64)  # (clients, classes)
    owners, samples = [], []
    for c in range(counts.shape[1]):
        total = counts[:, c].sum()
        if total == 0:
            continue
        idx = rng.permutation(np.flatnonzero(test_labels == c))
        cuts = np.rint(np.cumsum(counts[:, c] / total) * len(idx)).astype(int)[:-1]
        owners.append(
            np.searchsorted(cuts, np.arange(len(idx)), side="right")
        )  # sample j goes to the client whose cut follows it
        samples.append(idx)
    if not owners:
        return [np.zeros(0, dtype=np.int64) for _ in range(len(counts))]
    owner, sample = np.concatenate(owners), np.concatenate(samples).astype(np.int64)
    order = np.lexsort((sample, owner))
    bounds = np.cumsum(np.bincount(owner, minlength=len(counts)))[:-1]
    return np.split(sample[order], bounds)
