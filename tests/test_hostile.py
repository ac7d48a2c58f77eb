"""Hostile clients: a reply may claim any weight and carry any arrays. Per strategy, a client that
inflates its example count leaves the run exactly as the honest run; clients that send NaN in an
extra payload or arrays of the wrong shape are dropped with their reason, and the run is exactly the
run in which those replies never arrived."""

from __future__ import annotations

import sys

import pytest
from omegaconf import OmegaConf

from fedsim.config import CONFIG_DIR, group_options
from fedsim.engine import run
from tests import hostile_client
from tests.conftest import read_metrics

SETTINGS = {  # the smallest setting each strategy runs in (digits, MLP, 4 clients)
    "fedfed": ["strategy.distill_rounds=1"],
    "fedsa": [
        "model=cnn",
        "partition=shards",
        "partition.classes_per_client=3",
        "strategy.teachers.epochs=1",
        "strategy.probe_epochs=1",
        "strategy.adapt_epochs=1",
        "strategy.select_every=1",
    ],
    "twinsight": ["partition.labeled_clients=2", "partition.labeled_ratio=1.0"],
    "fixmatch": ["partition.labeled_clients=2", "partition.labeled_ratio=1.0"],
}


def outcome(path) -> list[dict]:
    """Per-round metrics without timings, drop reasons (which name the mode) and upload bytes (a
    tampered reply arrives, a withheld one does not)."""
    return [
        {k: v for k, v in r.items() if not k.endswith("time_s") and k != "dropped" and not k.startswith("bytes_up")}
        for r in read_metrics(path)
    ]


def run_with(make_cfg, monkeypatch, strategy: str, modes: dict[int, str], name: str):
    real = OmegaConf.load(CONFIG_DIR / "strategy" / f"{strategy}.yaml").client
    monkeypatch.setitem(sys.modules, "clients.hostile", hostile_client)
    monkeypatch.setattr(hostile_client, "REAL", real)
    monkeypatch.setattr(hostile_client, "MODES", modes)
    cfg = make_cfg(
        f"strategy={strategy}",
        "strategy.client=hostile",
        "num_rounds=1",
        "num_clients=6",
        "clients_per_round=5",
        *SETTINGS.get(strategy, []),
        name=name,
    )
    return run(cfg)


@pytest.mark.parametrize("strategy", group_options("strategy"))
def test_hostile_replies_leave_the_run_as_without_them(make_cfg, monkeypatch, strategy):
    honest = outcome(run_with(make_cfg, monkeypatch, strategy, {}, "honest"))
    inflated = outcome(run_with(make_cfg, monkeypatch, strategy, {1: "inflate"}, "inflate"))
    assert inflated == honest  # the claim is cut to what the server knows client 1 holds
    tampered_path = run_with(make_cfg, monkeypatch, strategy, {1: "nan", 2: "shape", 3: "dtype"}, "tampered")
    withheld = outcome(run_with(make_cfg, monkeypatch, strategy, {1: "crash", 2: "crash", 3: "crash"}, "withheld"))
    assert outcome(tampered_path) == withheld
    reasons = {d["client"]: d["reason"] for r in read_metrics(tampered_path) for d in r.get("dropped", [])}
    assert reasons, "no hostile reply reached the server"
    assert all(("NaN" in why or "shape" in why or "dtype" in why or "malformed" in why) for why in reasons.values()), (
        reasons
    )
