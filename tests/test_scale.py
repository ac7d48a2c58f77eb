"""Many registered clients: every one answers the handshake, sampling covers them, state stays small."""

from __future__ import annotations

from fedsim.engine import run
from tests.conftest import read_metrics


def test_a_thousand_clients_with_a_hundred_per_round(make_cfg):
    path = run(make_cfg("num_clients=1000", "clients_per_round=100", "num_rounds=2", "local_epochs=1", "checkpoint_every=0"))
    metrics = read_metrics(path)
    assert [m["clients_ok"] for m in metrics] == [100, 100]
    assert all(m["num_examples"] < 400 for m in metrics)  # ~1.4 samples per client
    assert not (path / "client_state").exists()  # FedAvg clients keep no state: an idle client costs nothing on disk
