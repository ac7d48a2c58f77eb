"""The benchmarks' floor (scripts/plain_fedavg.py) does the same work as a fedsim run: same
partition, same sampled clients, same optimizer; the accuracies agree, so a speed ratio compares
like with like."""

import sys
from pathlib import Path

import pytest

from fedsim.engine import run
from fedsim.validation import compose_run
from tests.conftest import read_metrics

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
from plain_fedavg import plain_fedavg  # noqa: E402


def test_the_floor_reaches_fedsims_accuracy(tmp_path):
    floor = plain_fedavg(
        "mlp", {"name": "iid"}, clients=200, per_round=20, rounds=3, seed=0, evaluate_every_round=False
    )
    cfg = compose_run(
        [
            "strategy=fedavg",
            "model=mlp",
            "partition=iid",
            "num_clients=200",
            "clients_per_round=20",
            "num_rounds=3",
            "eval_every=3",
            "checkpoint_every=0",
            "backend=inprocess",
            f"run_dir={tmp_path / 'run'}",
        ]
    )
    fedsim = read_metrics(run(cfg))[-1]
    assert len(floor["round_s"]) == 3 and fedsim["clients_ok"] == 20
    assert floor["accuracy"] == pytest.approx(
        fedsim["test_accuracy"], abs=0.002
    )  # the same models up to float rounding
