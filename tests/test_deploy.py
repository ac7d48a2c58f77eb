"""Real deployment on 127.0.0.1: `fedsim server` (SuperLink, TLS, node authentication) and
`fedsim client` processes (SuperNodes), against the equivalent simulation."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fedsim.config import compose
from fedsim.deploy.credentials import make_node_keys, make_tls
from fedsim.deploy.launch import client_parser, free_port, retry_wait
from fedsim.engine import run
from tests.conftest import read_metrics

ROOT = Path(__file__).resolve().parent.parent
RUN = [
    "dataset=digits",
    "model=mlp",
    "num_clients=3",
    "clients_per_round=3",
    "min_clients=2",
    "partition=iid",
    "local_epochs=1",
    "batch_size=16",
    "optimizer.lr=0.05",
    "seed=0",
    "device=cpu",
    "connect_timeout=120",
]


@pytest.fixture
def federation(tmp_path):
    """Credentials for 3 SuperNodes, a free port, and process bookkeeping (everything is killed at the end)."""
    make_tls(tmp_path / "cred" / "tls", ["localhost", "127.0.0.1"])
    for k in range(3):
        make_node_keys(tmp_path / "cred" / "nodes", f"node-{k}")
    procs: list[subprocess.Popen] = []
    port = free_port()

    def start(args: list[str], log: str) -> subprocess.Popen:
        out = (tmp_path / log).open("w")
        proc = subprocess.Popen(
            [sys.executable, "-m", "fedsim", *args],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        procs.append(proc)
        return proc

    def server(*overrides: str) -> subprocess.Popen:
        return start(
            [
                "server",
                *RUN,
                f"run_dir={tmp_path / 'run'}",
                f"deploy.credentials={tmp_path / 'cred'}",
                f"deploy.port={port}",
                *overrides,
            ],
            "server.log",
        )

    def client(k: int, key: str | None = None, *extra: str) -> subprocess.Popen:
        return start(
            [
                "client",
                "--server",
                f"127.0.0.1:{port}",
                "--partition-id",
                str(k),
                "--root-certificates",
                str(tmp_path / "cred" / "tls" / "ca.crt"),
                "--auth-key",
                key or str(tmp_path / "cred" / "nodes" / f"node-{k}"),
                "--state-dir",
                str(tmp_path / "devices"),
                *extra,
            ],
            f"client{k}.log",
        )

    yield tmp_path, server, client
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def wait_until(predicate, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while not predicate():
        if time.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.5)


def rounds_done(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def flower_processes_of(state: Path) -> list[int]:
    """Live processes (a SuperNode, its ClientApps) whose Flower home is in a client's state folder."""
    found = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if f"FLWR_HOME={state}".encode() in environ.read_bytes():
                found.append(int(environ.parent.name))
        except OSError:
            continue
    return found


def test_three_clients_over_tls_match_the_simulation(federation):
    tmp, server, client = federation
    srv = server("num_rounds=3", "round_timeout=120")
    clients = [client(0), client(1), client(2, None, "--keep-waiting")]
    assert srv.wait(timeout=400) == 0, (tmp / "server.log").read_text()[-3000:]
    for proc in clients[:2]:  # the run's end ends its clients ...
        assert proc.wait(timeout=60) == 0
    assert clients[2].poll() is None  # ... except one told to wait for the next run
    assert not flower_processes_of(tmp / "devices" / "client-0") and not flower_processes_of(
        tmp / "devices" / "client-1"
    )
    deployed = rounds_done(tmp / "run")
    simulated = read_metrics(run(compose([*RUN, "num_rounds=3", "backend=inprocess", f"run_dir={tmp / 'sim'}"])))
    assert [r["round"] for r in deployed] == [1, 2, 3] and all(r["clients_ok"] == 3 for r in deployed)
    for d, s in zip(deployed, simulated):
        assert d["test_accuracy"] == pytest.approx(s["test_accuracy"], abs=0.01)
        assert d["train_loss"] == pytest.approx(s["train_loss"], rel=1e-3)
        assert d["bytes_up"] == s["bytes_up"]
    assert "round 3/3" in (tmp / "server.log").read_text()


def kill_client_during_round_2(tmp: Path, clients: list[subprocess.Popen], srv: subprocess.Popen) -> None:
    wait_until(lambda: len(rounds_done(tmp / "run")) >= 1, 300, "round 1")
    os.killpg(clients[2].pid, signal.SIGKILL)  # dies while round 2 is in flight
    wait_until(
        lambda: (
            any(d.get("client") == 2 for r in rounds_done(tmp / "run") for d in r.get("dropped", []))
            or srv.poll() is not None
        ),
        300,
        "the dead client to be reported",
    )


@pytest.mark.slow  # ~2 min: the default suite keeps one full deployment (TLS, three clients, run end)
def test_a_killed_client_is_dropped_and_the_run_completes(federation):
    tmp, server, client = federation
    srv = server("num_rounds=3", "round_timeout=30")
    clients = [client(k) for k in range(3)]
    kill_client_during_round_2(tmp, clients, srv)
    assert srv.wait(timeout=400) == 0, (tmp / "server.log").read_text()[-3000:]
    records = rounds_done(tmp / "run")
    assert [r["round"] for r in records] == [1, 2, 3] and records[0]["clients_ok"] == 3
    for r in records[1:]:
        assert r["clients_ok"] == 2 and [d["client"] for d in r["dropped"]] == [2] and not r.get("failed")


def test_default_retries_outlast_flowers_hold_on_a_restarted_devices_key():
    """Flower refuses a key until its old session misses HEARTBEAT_PATIENCE heartbeats."""
    from flwr.common.constant import HEARTBEAT_DEFAULT_INTERVAL, HEARTBEAT_PATIENCE

    retries = client_parser().parse_args(["--server", "h:1", "--partition-id", "0"]).max_retries
    assert sum(retry_wait(a) for a in range(1, retries + 1)) > HEARTBEAT_PATIENCE * HEARTBEAT_DEFAULT_INTERVAL
    assert [retry_wait(a) for a in (1, 2, 3)] == [3, 6, 12]


@pytest.mark.slow
def test_a_restarted_client_rejoins_a_later_round(federation):
    """Flower lets a key back in once its old session has expired (about a minute), so this runs long."""
    tmp, server, client = federation
    srv = server("num_rounds=12", "round_timeout=30")
    clients = [client(k) for k in range(3)]
    kill_client_during_round_2(tmp, clients, srv)
    client(2)
    assert srv.wait(timeout=900) == 0, (tmp / "server.log").read_text()[-3000:]
    records = rounds_done(tmp / "run")
    assert [r["round"] for r in records] == list(range(1, 13))
    dropped_at = min(r["round"] for r in records if any(d["client"] == 2 for d in r.get("dropped", [])))
    assert all(r["clients_ok"] >= 2 for r in records)
    assert any(r["clients_ok"] == 3 for r in records if r["round"] > dropped_at)  # back after its restart
    assert "retrying in" in (tmp / "client2.log").read_text()  # it was refused while its old session held the key


def test_a_client_with_an_unknown_key_is_refused(federation):
    tmp, server, client = federation
    server("num_rounds=1", "connect_timeout=60")
    rogue, _ = make_node_keys(tmp / "rogue", "rogue")
    proc = client(0, str(rogue), "--connect-timeout", "15", "--max-retries", "1")
    assert proc.wait(timeout=120) == 2
    log = (tmp / "client0.log").read_text()
    last = log.strip().splitlines()[-1]
    assert last.startswith("fedsim: error: client 0: the server at --server") and "refused this device" in last
    assert (
        "after 2 attempts" in last and "Traceback" not in log and "Exit Code" not in log
    )  # Flower's logs: supernode.log


def test_a_client_without_a_server_gives_up_with_one_line(federation):
    tmp, _, client = federation
    proc = client(0, None, "--connect-timeout", "3", "--max-retries", "1")
    assert proc.wait(timeout=120) == 2
    last = (tmp / "client0.log").read_text().strip().splitlines()[-1]
    assert last.startswith("fedsim: error: client 0: nothing answers at --server") and "after 2 attempts" in last


@pytest.mark.slow  # ~2.5 min
def test_a_restarted_server_resumes_from_its_checkpoint(federation):
    tmp, server, client = federation
    first = server("num_rounds=4", "checkpoint_every=1")
    for k in range(3):
        client(k)
    wait_until(lambda: len(rounds_done(tmp / "run")) >= 2, 300, "round 2")
    os.killpg(first.pid, signal.SIGKILL)  # the server and its SuperLink die; the clients stay up
    first.wait()
    resumed = subprocess.run(
        [sys.executable, "-m", "fedsim", "server", f"resume={tmp / 'run'}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    assert "resuming" in resumed.stdout
    deployed = rounds_done(tmp / "run")
    simulated = read_metrics(run(compose([*RUN, "num_rounds=4", "backend=inprocess", f"run_dir={tmp / 'sim'}"])))
    assert [r["round"] for r in deployed] == [1, 2, 3, 4]
    assert [r["test_accuracy"] for r in deployed] == pytest.approx([r["test_accuracy"] for r in simulated], abs=0.01)


def test_a_device_trains_on_its_own_image_folder(tmp_path, make_cfg):
    """--data-dir: the device's own PNGs, in the run dataset's format, without the dataset's files."""
    from flwr.app import ConfigRecord, RecordDict
    from omegaconf import OmegaConf
    from PIL import Image

    from fedsim.data import load_dataset
    from fedsim.data.local_folder import dataset_info
    from fedsim.deploy.apps import node_run_config
    from fedsim.plugins import client_runtime
    from fedsim.records import model_to_record

    ds = load_dataset("digits")
    for i in range(40):
        folder = tmp_path / "device" / "train" / str(int(ds.y_test[i]))
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(ds.x_test[i, 0].numpy()).save(folder / f"{i}.png")
    cfg = OmegaConf.to_container(make_cfg(), resolve=True)
    cfg["dataset_info"] = dataset_info(ds)
    cfg["dataset"]["name"] = "no-such-dataset"  # the device never loads the run's dataset
    runtime = client_runtime(
        node_run_config(
            json.dumps(cfg),
            {"partition-id": 7, "data-dir": str(tmp_path / "device"), "state-dir": str(tmp_path / "state")},
        )
    )
    client = runtime.client(7)
    assert client.num_train_examples() == 40 and len(client.env.test) == 0
    before = model_to_record(runtime.model)
    config = ConfigRecord({"lr": 0.05, "local-epochs": 1, "batch-size": 16, "server-round": 1})
    reply = client.train(RecordDict({"arrays": before, "config": config}), 1)
    assert int(reply["metrics"]["num-examples"]) == 40
    assert any((reply["arrays"][k].numpy() != before[k].numpy()).any() for k in before.keys())
