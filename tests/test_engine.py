"""End-to-end runs on the in-process backend (and one through Flower's Ray simulation engine)."""

import json
import sys

import pytest
import torch
from omegaconf import OmegaConf

from fedsim.engine import resume_config, run
from tests import faulty_client
from tests.conftest import comparable, read_metrics


@pytest.mark.parametrize("strategy", ["fedavg", "fedprox", "scaffold", "fednova"])
def test_strategy_learns_above_chance(make_cfg, strategy):
    path = run(make_cfg(f"strategy={strategy}", "num_rounds=4", "partition=dirichlet", "partition.alpha=0.5"))
    records = read_metrics(path)
    assert [r["round"] for r in records] == [1, 2, 3, 4]
    assert records[-1]["test_accuracy"] > 0.5  # 10 classes: chance is 0.1
    assert records[-1]["train_loss"] < records[0]["train_loss"]


def test_run_directory_contents(make_cfg):
    path = run(make_cfg("num_rounds=2"))
    for name in ("config.yaml", "partition.json", "metrics.jsonl", "metrics.csv", "summary.json", "accuracy.png"):
        assert (path / name).is_file(), name
    partition = json.loads((path / "partition.json").read_text())
    assert len(partition["clients"]) == 4 and sum(partition["clients"][0]["label_histogram"]) > 0
    summary = json.loads((path / "summary.json").read_text())
    assert summary["final_test_accuracy"] == read_metrics(path)[-1]["test_accuracy"]
    record = read_metrics(path)[0]
    assert record["bytes_up"] > 0 and record["bytes_down"] > 0 and record["clients_sampled"] == 3
    assert sorted(p.name for p in (path / "checkpoints").iterdir()) == ["round_000001.pt", "round_000002.pt"]


def test_same_seed_same_metrics(make_cfg):
    a = read_metrics(run(make_cfg("strategy=scaffold", name="a")))
    b = read_metrics(run(make_cfg("strategy=scaffold", name="b")))
    c = read_metrics(run(make_cfg("strategy=scaffold", "seed=1", name="c")))
    assert comparable(a) == comparable(b)
    assert comparable(a) != comparable(c)


@pytest.mark.parametrize("strategy", ["fedavg", "scaffold", "fedimpro"])
def test_resume_after_kill_matches_uninterrupted_run(make_cfg, strategy):
    full = read_metrics(run(make_cfg(f"strategy={strategy}", "num_rounds=5", "checkpoint_every=2", name="full")))
    # A run killed during round 4: checkpoints after rounds 2 and 4 would exist only up to 2,
    # while metrics and client state of round 3 were already written.
    cut = make_cfg(f"strategy={strategy}", "num_rounds=3", "checkpoint_every=2", name="cut")
    path = run(cut)
    (path / "checkpoints" / "round_000003.pt").unlink()
    resumed = run(resume_config(path, make_cfg("num_rounds=5")))
    assert resumed == path
    assert comparable(read_metrics(path)) == comparable(full)


def test_only_the_newest_checkpoints_are_kept(make_cfg):
    """checkpoints_kept=N deletes older checkpoints once a newer one is written; 0 keeps them all."""
    kept = run(make_cfg("num_rounds=4", "checkpoints_kept=1", name="one"))
    assert sorted(p.name for p in (kept / "checkpoints").iterdir()) == ["round_000004.pt"]
    every = run(make_cfg("num_rounds=3", "checkpoints_kept=0", name="all"))
    assert len(list((every / "checkpoints").iterdir())) == 3


def test_a_run_saved_before_newer_keys_resumes(make_cfg):
    """A config.yaml written before augment and checkpoints_kept existed resumes with what those runs did."""
    path = run(make_cfg("num_rounds=2", "checkpoints_kept=0"))
    saved = OmegaConf.load(path / "config.yaml")
    for key in ("augment", "checkpoints_kept"):
        del saved[key]
    OmegaConf.save(saved, path / "config.yaml")
    resumed = resume_config(path, make_cfg("num_rounds=4"))
    assert resumed.augment == "none" and resumed.checkpoints_kept == 0
    run(resumed)
    assert [r["round"] for r in read_metrics(path)] == [1, 2, 3, 4]
    assert len(list((path / "checkpoints").iterdir())) == 4


def test_resume_before_the_first_checkpoint_redoes_the_rounds(make_cfg):
    """A run killed before its first checkpoint restarts from round 1 without duplicating records."""
    full = read_metrics(run(make_cfg("strategy=scaffold", "num_rounds=2", "checkpoint_every=5", name="full")))
    path = run(make_cfg("strategy=scaffold", "num_rounds=1", "checkpoint_every=5", name="cut"))
    for ckpt in (path / "checkpoints").glob("*.pt"):
        ckpt.unlink()
    run(resume_config(path, make_cfg("num_rounds=2")))
    assert comparable(read_metrics(path)) == comparable(full)


def test_faulty_clients_are_dropped_and_named(make_cfg, monkeypatch):
    monkeypatch.setitem(sys.modules, "clients.faulty", faulty_client)
    path = run(make_cfg("strategy.client=faulty", "clients_per_round=4", "min_clients=2", "num_rounds=2"))
    records = read_metrics(path)
    for record in records:
        assert record["clients_ok"] == 2 and not record.get("failed")
        reasons = {d["client"]: d["reason"] for d in record["dropped"]}
        assert set(reasons) == {1, 2}
        assert "NaN/Inf" in reasons[1] and "simulated crash on client 2" in reasons[2]
    assert records[-1]["test_accuracy"] > 0.3  # the healthy clients still train the model


def test_round_with_too_few_clients_is_reported(make_cfg, monkeypatch):
    monkeypatch.setitem(sys.modules, "clients.faulty", faulty_client)
    path = run(make_cfg("strategy.client=faulty", "clients_per_round=4", "min_clients=3", "num_rounds=2"))
    records = read_metrics(path)
    assert all("min_clients=3" in r["failed"] for r in records)
    assert records[0]["test_accuracy"] == records[1]["test_accuracy"]  # the model was kept, not averaged
    assert json.loads((path / "summary.json").read_text())["failed_rounds"] == [1, 2]


def test_ray_simulation_engines_agree(make_cfg):
    """Both Ray engines: Flower's (one actor call per message, through its LinkState) and the pool
    (a batch of clients per worker task) give the same run."""
    a = read_metrics(
        run(make_cfg("backend=simulation", "backend.engine=flower", "num_rounds=2", "strategy=scaffold", name="a"))
    )
    b = read_metrics(
        run(make_cfg("backend=simulation", "backend.engine=pool", "num_rounds=2", "strategy=scaffold", name="b"))
    )
    assert [r["round"] for r in a] == [1, 2]
    assert all(r["clients_ok"] == 3 for r in a)
    assert a[-1]["test_accuracy"] > 0.3
    assert comparable(a) == comparable(b)


def test_killed_process_resumes_to_the_same_metrics(make_cfg, tmp_path):
    """SIGKILL a real `fedsim run` after round 3 of 5, resume it from the CLI, compare with a clean run."""
    import os
    import signal
    import subprocess

    from tests.conftest import FAST

    args = [sys.executable, "-m", "fedsim", "run", *FAST, "strategy=scaffold", "num_rounds=5", "checkpoint_every=2"]
    full = read_metrics(run(make_cfg("strategy=scaffold", "num_rounds=5", "checkpoint_every=2", name="full")))
    killed = tmp_path / "killed"
    proc = subprocess.Popen(args + [f"run_dir={killed}"], stdout=subprocess.PIPE, text=True)
    for line in proc.stdout:
        if line.startswith("[round 3/5]"):
            os.kill(proc.pid, signal.SIGKILL)
            break
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert len(read_metrics(killed)) >= 3
    resumed = subprocess.run(
        [sys.executable, "-m", "fedsim", "run", f"resume={killed}"], capture_output=True, text=True, timeout=300
    )
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stdout
    assert comparable(read_metrics(killed)) == comparable(full)


def test_clients_that_never_reply_are_reported(make_cfg, monkeypatch):
    """A dead client (its reply never arrives) is named in the round's record; the round goes on."""
    from fedsim.backends import InProcessGrid

    deliver = InProcessGrid.send_and_receive

    def lose_client_0(self, messages, timeout=None):
        replies = deliver(self, messages, timeout=timeout)  # node 1 hosts client 0
        return [r for r in replies if r.metadata.src_node_id != 1 or r.metadata.message_type != "train"]

    monkeypatch.setattr(InProcessGrid, "send_and_receive", lose_client_0)
    # SCAFFOLD gets every reply (FedAvg's are summed where they are produced: nothing goes missing)
    path = run(make_cfg("strategy=scaffold", "clients_per_round=4", "num_rounds=2", "round_timeout=5"))
    for record in read_metrics(path):
        assert record["clients_ok"] == 3 and not record.get("failed")
        assert record["dropped"] == [{"client": 0, "reason": "no reply within round_timeout=5s"}]


def test_augment_applies_to_every_algorithms_batches(make_cfg):
    """augment=shift_flip crops and flips each local batch (same labels, other pixels); none leaves them."""
    from flwr.app import ConfigRecord

    from clients.base import Client
    from fedsim.plugins import client_runtime

    batches = {}
    for augment in ("none", "shift_flip"):
        cfg = make_cfg("strategy=fedprox", f"augment={augment}")
        client = client_runtime(OmegaConf.to_container(cfg, resolve=True)).client(0)
        assert isinstance(client, Client)
        config = ConfigRecord({"batch-size": 16})
        batches[augment] = next(client.batches(config, torch.Generator().manual_seed(0)))
    (x0, y0), (x1, y1) = batches["none"], batches["shift_flip"]
    assert torch.equal(y0, y1) and x0.shape == x1.shape and not torch.equal(x0, x1)
    idx = torch.randperm(len(client.env.data), generator=torch.Generator().manual_seed(0))[:16]
    torch.testing.assert_close(x0, client.env.data.dataset.normalize(client.env.data.x[idx]))


@pytest.mark.parametrize("clip_norm", [None, 1e-6])
def test_clip_norm_bounds_every_local_step(make_cfg, clip_norm):
    """optimizer.clip_norm (DisPFL's official clipping): with plain SGD a round moves the global model
    by at most steps x lr x clip_norm; without it, far more."""
    from fedsim.checkpoint import latest_checkpoint

    cfg = make_cfg(
        "num_rounds=1",
        "optimizer.momentum=0",
        "optimizer.weight_decay=0",
        "optimizer.lr=0.05",
        f"optimizer.clip_norm={'null' if clip_norm is None else clip_norm}",
        "checkpoint_every=1",
        name="one",
    )
    first = latest_checkpoint(run(cfg) / "checkpoints").arrays
    cfg2 = make_cfg(
        "num_rounds=2",
        "optimizer.momentum=0",
        "optimizer.weight_decay=0",
        "optimizer.lr=0.05",
        f"optimizer.clip_norm={'null' if clip_norm is None else clip_norm}",
        "checkpoint_every=1",
        name="two",
    )
    second = latest_checkpoint(run(cfg2) / "checkpoints").arrays
    moved = sum(float(((second[k].numpy() - first[k].numpy()) ** 2).sum()) for k in first.keys()) ** 0.5
    if clip_norm is None:
        assert moved > 1e-2
    else:
        assert moved <= 100 * 0.05 * clip_norm


def test_warnings_follow_a_redirected_stderr():
    """fedsim's log handler writes to the stderr of the moment (the CLI's one-line contract is
    checked by redirecting it), not the one it saw when it was made."""
    import contextlib
    import io
    import logging

    from fedsim.engine import quiet_logs

    earlier = io.StringIO()
    with contextlib.redirect_stderr(earlier):
        quiet_logs(False)
        logging.getLogger("fedsim").warning("first")
    earlier.close()  # as a finished command's captured stderr
    later = io.StringIO()
    with contextlib.redirect_stderr(later):
        logging.getLogger("fedsim").warning("second")
    assert later.getvalue() == "fedsim WARNING: second\n"
