"""FedFed: the x = x_s + x_r split, the sharing noise, the shared pool, and composition with each base."""

import json

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from clients.fedfed import SHARE, DistillationPair
from fedsim.client_app import ClientRuntime
from fedsim.engine import resume_config, run
from fedsim.errors import ConfigError
from fedsim.records import model_to_record
from flwr.app import ConfigRecord, RecordDict
from strategies.fedfed import STRATEGY
from tests.conftest import comparable, read_metrics

FEDFED = ["strategy=fedfed", "strategy.distill_rounds=2"]


def share_from(make_cfg, sigma: float, client_id: int = 0):
    cfg = make_cfg(*FEDFED, f"strategy.share_noise_std={sigma}")
    runtime = ClientRuntime(OmegaConf.to_container(cfg, resolve=True))
    client = runtime.client(client_id)
    torch.manual_seed(0)
    pair = DistillationPair(cfg, runtime.dataset.input_shape, runtime.dataset.num_classes)
    content = RecordDict({"arrays": model_to_record(pair), "config": ConfigRecord({"fedfed-phase": SHARE})})
    shared = client.train(content, server_round=0)["shared"]
    x01 = client.env.data.x.float() / 255
    with torch.no_grad():
        x_r = pair.eval().generator(x01)[0]
    return shared, x01, x_r, client


def test_split_and_zero_noise(make_cfg):
    shared, x01, x_r, client = share_from(make_cfg, 0.0)
    x_s = torch.from_numpy(shared["x"].numpy()).float()
    assert shared["x"].numpy().dtype == np.float16
    assert x_s.shape == x01.shape and len(shared["y"].numpy()) == len(client.env.data)
    assert torch.all((x_r >= 0) & (x_r <= 1))
    torch.testing.assert_close(x_s + x_r, x01, atol=2e-3, rtol=0)  # x = x_s + x_r (float16 sharing)
    np.testing.assert_array_equal(shared["y"].numpy(), client.env.data.y.numpy())


def test_share_noise_follows_sigma(make_cfg):
    clean = torch.from_numpy(share_from(make_cfg, 0.0)[0]["x"].numpy()).float()
    noisy = torch.from_numpy(share_from(make_cfg, 0.3)[0]["x"].numpy()).float()
    noise = noisy - clean
    assert abs(noise.std().item() - 0.3) < 0.01 and abs(noise.mean().item()) < 0.01
    # a fresh draw per sample, not one noise image broadcast over the batch
    assert (noise[0] - noise[1]).abs().mean() > 0.1


def test_pool_and_composition_with_each_base(make_cfg, tmp_path):
    sizes = {}
    for base in ("fedavg", "fedprox", "scaffold", "fednova"):
        path = run(make_cfg(*FEDFED, f"strategy.base={base}", "num_rounds=2", name=base))
        records = read_metrics(path)
        assert [r["round"] for r in records] == [1, 2] and records[-1]["test_accuracy"] > 0.5, base
        pool = torch.load(path / "shared_pool.pt", weights_only=True)
        partition = json.loads((path / "partition.json").read_text())
        assert len(pool["y"]) == sum(c["num_labeled"] for c in partition["clients"])
        assert tuple(pool["x"].shape[1:]) == (1, 8, 8) and pool["x"].dtype == torch.float16
        log = [json.loads(line) for line in (path / "distill_metrics.jsonl").read_text().splitlines()]
        assert [r["phase"] for r in log] == ["distill", "distill", "share"]
        assert log[-1]["pool_bytes"] == pool["x"].numel() * 2 + len(pool["y"]) * 8
        sizes[base] = records[0]["bytes_down"]
    # FedFed's own traffic: the shared draw rides on every train message
    plain = read_metrics(run(make_cfg("num_rounds=1", name="plain")))[0]["bytes_down"]
    assert sizes["fedavg"] > plain


def test_shared_draw_is_class_balanced_and_sized(make_cfg):
    cfg = make_cfg(*FEDFED)
    strategy = STRATEGY(cfg, [])
    strategy.set_clients({0: 1}, {0: 600})
    strategy.pool_x = np.zeros((1000, 1, 8, 8), np.float16)
    strategy.pool_y = np.repeat(np.arange(10), 100)[np.r_[0:100, 100:1000]]
    strategy.pool_y[:50] = 1  # class 0 rarer than the others
    draw = strategy.shared_draw(0, server_round=1, epochs=2)
    counts = np.bincount(draw["y"].numpy(), minlength=10)
    assert counts.sum() == 1200 and counts.min() > 80  # ~120 per class whatever the pool's skew


def test_unknown_base_is_a_config_error(make_cfg):
    with pytest.raises(ConfigError, match="FedFed plugs into fedavg, fedprox, scaffold, fednova"):
        STRATEGY(make_cfg(*FEDFED, "strategy.base=fedfed"), [])


def test_resume_reuses_the_pool(make_cfg):
    full = read_metrics(run(make_cfg(*FEDFED, "num_rounds=3", "checkpoint_every=1", name="full")))
    cut = run(make_cfg(*FEDFED, "num_rounds=2", "checkpoint_every=1", name="cut"))
    (cut / "checkpoints" / "round_000002.pt").unlink()
    before = (cut / "distill_metrics.jsonl").read_text()
    run(resume_config(cut, make_cfg("num_rounds=3")))
    assert (cut / "distill_metrics.jsonl").read_text() == before  # no second distillation
    assert comparable(read_metrics(cut)) == comparable(full)
