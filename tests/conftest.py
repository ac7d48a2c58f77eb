"""Shared fixtures: small, offline, in-process runs on scikit-learn's digits."""

from __future__ import annotations

import json
import sys
from dataclasses import fields
from pathlib import Path

import pytest

from fedsim.validation import compose_run

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
        return compose_run(FAST + [f"run_dir={tmp_path / name}", f"runs_root={tmp_path}"] + list(overrides))

    return make


def write_cifar(root: Path, variant: str = "cifar10", per_file: int = 20, seed: int = 0) -> Path:
    """Tiny synthetic CIFAR-10/100 in the real python-pickle format (random pixels, every class)."""
    import pickle

    import numpy as np

    folder, train, test, key, classes = {
        "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], b"labels", 10),
        "cifar100": ("cifar-100-python", ["train"], ["test"], b"fine_labels", 100),
    }[variant]
    rng = np.random.default_rng(seed)
    (root / folder).mkdir(parents=True, exist_ok=True)
    for name in train + test:
        n = per_file if variant == "cifar10" else per_file * 5
        batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), key: [int(i % classes) for i in range(n)]}
        with open(root / folder / name, "wb") as f:
            pickle.dump(batch, f)
    return root


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def comparable(records: list[dict]) -> list[dict]:
    """Metrics without wall-clock fields."""
    return [{k: v for k, v in r.items() if not k.endswith("time_s")} for r in records]


def strategy_params(strategy_cls, **values):
    """The ``Params`` of ``strategy_cls``'s module with ``values`` (the keys it has) and placeholder names."""
    schema = sys.modules[strategy_cls.__module__].Params
    names = {f.name for f in fields(schema)}
    return schema(**{k: v for k, v in {"name": "test", "client": "test", **values}.items() if k in names})
