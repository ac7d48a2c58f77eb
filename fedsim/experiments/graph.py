"""The cooperation graph a decentralized strategy inferred, against the true grouping of the clients.

A strategy that infers who should learn from whom (SCooL) logs its graph each round as
``graph_weights`` (row-major N x N, row i: client i's weights over every client). The truth comes
from the run's ``partition.json``: clients holding exactly the same set of labels form a group.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def label_groups(partition: dict) -> list[frozenset[int]]:
    """Per client (in id order), the set of labels it holds (its group)."""
    clients = sorted(partition["clients"], key=lambda c: c["client"])
    return [frozenset(int(k) for k, n in enumerate(c["label_histogram"]) if n > 0) for c in clients]


def same_group_weight(weights: np.ndarray, groups: list[frozenset[int]]) -> tuple[float, float]:
    """How much of a learned graph's weight stays within the true groups.

    (mean over clients of the share of its peer weight, self excluded, on peers of its own group; the same
    share under uniform weights over every other client: what a graph blind to the grouping scores). Clients
    without peer weight are left out.
    """
    n = len(groups)
    same = np.array([[groups[i] == groups[j] and i != j for j in range(n)] for i in range(n)])
    peer = weights.copy()
    np.fill_diagonal(peer, 0.0)
    totals = peer.sum(1)
    rows = totals > 0
    if not rows.any():
        return float("nan"), float("nan")
    share = (peer * same).sum(1)[rows] / totals[rows]
    chance = same.sum(1)[rows] / (n - 1)
    return float(share.mean()), float(chance.mean())


def graph_metrics(run_dir: Path, rows: list[dict]) -> None:
    """Add the graph's same-group weight and its chance level to a run's metrics rows.

    Add ``graph_same_group_weight`` and ``graph_same_group_chance`` to every metrics row of a run that logged
    ``graph_weights`` (in place); nothing where the run has no partition.json.
    """
    path = run_dir / "partition.json"
    if not path.is_file() or not any("graph_weights" in r for r in rows):
        return
    groups = label_groups(json.loads(path.read_text()))
    n = len(groups)
    for row in rows:
        flat = row.get("graph_weights")
        if isinstance(flat, list) and len(flat) == n * n:
            row["graph_same_group_weight"], row["graph_same_group_chance"] = same_group_weight(
                np.reshape(flat, (n, n)), groups
            )
