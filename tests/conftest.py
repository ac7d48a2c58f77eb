"""Shared fixtures: small, offline, in-process runs on scikit-learn's digits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedsim.config import compose

FAST = [
    "backend=inprocess",
    "dataset=digits",
    "model=mlp",
    "num_clients=4",
    "clients_per_round=3",
    "num_rounds=3",
    "local_epochs=2",
    "batch_size=16",
    "optimizer.lr=0.05",
    "partition=iid",
    "checkpoint_every=1",
]


@pytest.fixture
def make_cfg(tmp_path: Path):
    """Compose a fast test config; later overrides win."""

    def make(*overrides: str, name: str = "run"):
        return compose(FAST + [f"run_dir={tmp_path / name}", f"runs_root={tmp_path}"] + list(overrides))

    return make


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def comparable(records: list[dict]) -> list[dict]:
    """Metrics without wall-clock fields."""
    return [{k: v for k, v in r.items() if not k.endswith("time_s")} for r in records]
