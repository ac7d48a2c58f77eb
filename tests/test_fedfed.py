"""FedFed: the x = x_s + x_r split, the sharing noise, the shared pool, and composition with each base."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord, RecordDict
from omegaconf import OmegaConf

from clients.fedfed import balanced_draw, label_skewed, mosaic, recon_weight
from fedsim.engine import resume_config, run
from fedsim.errors import ConfigError
from fedsim.models.generator import kl_divergence
from fedsim.plugins import client_runtime
from fedsim.protocols.fedfed import SHARE, DistillationPair
from fedsim.records import model_to_record
from strategies.fedfed import FedFedMixin
from tests.conftest import comparable, read_metrics

FEDFED = ["strategy=fedfed", "strategy.distill_rounds=2"]


def share_from(make_cfg, sigma: float, client_id: int = 0, copies: int = 2):
    levels = ",".join(str(k * sigma) for k in range(1, copies + 1))
    cfg = make_cfg(*FEDFED, f"strategy.share_noise_std=[{levels}]")
    runtime = client_runtime(OmegaConf.to_container(cfg, resolve=True))
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
    for key in ("x1", "x2"):
        x_s = torch.from_numpy(shared[key].numpy()).float()
        assert shared[key].numpy().dtype == np.float16
        assert x_s.shape == x01.shape and len(shared["y"].numpy()) == len(client.env.data)
        torch.testing.assert_close(x_s + x_r, x01, atol=2e-3, rtol=0)  # x = x_s + x_r (float16 sharing)
    assert torch.all((x_r >= 0) & (x_r <= 1))
    np.testing.assert_array_equal(shared["y"].numpy(), client.env.data.y.numpy())


def test_share_noise_follows_sigma_per_copy(make_cfg):
    clean = share_from(make_cfg, 0.0)[0]
    noisy = share_from(make_cfg, 0.15)[0]
    for key, sigma in (("x1", 0.15), ("x2", 0.3)):
        noise = torch.from_numpy(noisy[key].numpy()).float() - torch.from_numpy(clean[key].numpy()).float()
        assert abs(noise.std().item() - sigma) < 0.01 and abs(noise.mean().item()) < 0.01
        # a fresh draw per sample, not one noise image broadcast over the batch
        assert (noise[0] - noise[1]).abs().mean() > 0.1


def test_one_shared_copy_per_noise_level(make_cfg):
    clean = share_from(make_cfg, 0.0, copies=3)[0]
    noisy = share_from(make_cfg, 0.1, copies=3)[0]
    assert set(noisy.keys()) == {"x1", "x2", "x3", "y"}
    for key, sigma in (("x1", 0.1), ("x2", 0.2), ("x3", 0.3)):
        noise = torch.from_numpy(noisy[key].numpy()).float() - torch.from_numpy(clean[key].numpy()).float()
        assert abs(noise.std().item() - sigma) < 0.01


def test_generator_loss_has_the_official_balance():
    """KL / (B x 3 x z) and re x10 (curriculum at local epoch 1), as the official client computes them."""
    g = torch.Generator().manual_seed(0)
    mu, logvar = torch.randn(8, 20, generator=g), torch.randn(8, 20, generator=g) * 0.1
    summed = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
    assert kl_divergence(mu, logvar).item() == pytest.approx(summed.item() / (8 * 3 * 20))
    assert recon_weight(5.0, 0) == 50.0 and recon_weight(5.0, 9) == 25.0 and recon_weight(5.0, 30) == 5.0
    pair = DistillationPair(
        OmegaConf.create({"strategy": {"generator_width": 32, "generator_latent": None}, "model": {"name": "cnn"}}),
        (1, 28, 28),
        10,
    )
    assert pair.generator.mu.out_features == pair.generator.mu.in_features == 32 * 7 * 7  # no bottleneck


def test_label_skew_rule_and_mosaic():
    assert label_skewed(torch.tensor([3] * 80 + [1] * 20), equal_share=100)  # 80% one class
    assert not label_skewed(torch.tensor([3] * 60 + [1] * 40), equal_share=100)
    assert not label_skewed(torch.tensor([3] * 10), equal_share=100)  # too few samples: quantity skew
    x = torch.arange(4.0).view(4, 1, 1, 1).expand(4, 1, 8, 8).contiguous() / 4 + 0.1
    m = mosaic(x, torch.Generator().manual_seed(0))
    assert m.shape == x.shape
    quadrant_values = {round(float(v), 4) for v in m[0, 0, :4, :4].unique()} - {0.0}
    assert len(quadrant_values) == 1 and quadrant_values <= {0.1, 0.35, 0.6, 0.85}  # each quadrant one source image
    assert (m == 0).any()  # the cutout


def test_shared_items_are_drawn_class_balanced():
    labels = np.repeat(np.arange(10), 100)
    labels[:50] = 1  # class 0 rarer than the others
    draw = balanced_draw(labels, 1205, np.random.default_rng(0), 10)
    counts = np.bincount(labels[draw], minlength=10)
    assert len(draw) == 1205 and counts.min() >= 120 and counts.max() <= 125  # 120 per class + 5 anywhere


def test_pool_and_composition_with_each_base(make_cfg, tmp_path):
    sizes = {}
    for base in ("fedavg", "fedprox", "scaffold", "fednova"):
        path = run(make_cfg(*FEDFED, f"strategy.base={base}", "num_rounds=2", name=base))
        records = read_metrics(path)
        assert [r["round"] for r in records] == [1, 2] and records[-1]["test_accuracy"] > 0.5, base
        pool = torch.load(path / "shared_pool.pt", weights_only=True)
        partition = json.loads((path / "partition.json").read_text())
        assert len(pool["y"]) == sum(c["num_labeled"] for c in partition["clients"])
        assert all(tuple(pool[k].shape[1:]) == (1, 8, 8) and pool[k].dtype == torch.float16 for k in ("x1", "x2"))
        log = [json.loads(line) for line in (path / "distill_metrics.jsonl").read_text().splitlines()]
        assert [r["phase"] for r in log] == ["distill", "distill", "share", "receive"]
        pool_bytes = (pool["x1"].numel() + pool["x2"].numel()) * 2 + len(pool["y"]) * 8
        assert log[2]["pool_bytes"] == pool_bytes
        assert log[3]["clients_ok"] == 4 and log[3]["bytes_down"] >= 4 * pool_bytes  # sent once to every client
        sizes[base] = records[0]["bytes_down"]
    # the shared set is not sent again in the FL rounds: a round costs what FedAvg's does (+ the config)
    plain = read_metrics(run(make_cfg("num_rounds=1", name="plain")))[0]["bytes_down"]
    assert plain <= sizes["fedavg"] < plain + 1000


def test_unknown_base_is_a_config_error(make_cfg):
    with pytest.raises(ConfigError, match="strategy.base='fedfed': expected one of fedavg, fedprox, scaffold, fednova"):
        make_cfg(*FEDFED, "strategy.base=fedfed")


def test_resume_reuses_the_pool(make_cfg):
    full = read_metrics(run(make_cfg(*FEDFED, "num_rounds=3", "checkpoint_every=1", name="full")))
    cut = run(make_cfg(*FEDFED, "num_rounds=2", "checkpoint_every=1", name="cut"))
    (cut / "checkpoints" / "round_000002.pt").unlink()
    before = (cut / "distill_metrics.jsonl").read_text()
    run(resume_config(cut, make_cfg("num_rounds=3")))
    assert (cut / "distill_metrics.jsonl").read_text() == before  # no second distillation
    assert comparable(read_metrics(cut)) == comparable(full)


class Stopped(Exception):
    """The test's stand-in for a run killed mid-way."""


def test_a_run_stopped_during_distillation_resumes_after_its_last_distillation_round(make_cfg, monkeypatch):
    """Stopped before distillation round 3 of 3, the resumed run does only round 3 and ends as an uninterrupted one."""
    three = (*FEDFED[:1], "strategy.distill_rounds=3", "num_rounds=2")
    full = run(make_cfg(*three, name="full"))
    calls: list[int] = []
    distill_clients = FedFedMixin.distill_clients

    def stop_at_round_3(self, distill_round: int) -> list[int]:
        calls.append(distill_round)
        if calls == [1, 2, 3]:
            raise Stopped
        return distill_clients(self, distill_round)

    monkeypatch.setattr(FedFedMixin, "distill_clients", stop_at_round_3)
    cut = make_cfg(*three, name="cut")
    with pytest.raises(Stopped):
        run(cut)
    path = Path(cut.run_dir)
    assert [json.loads(line)["round"] for line in (path / "distill_metrics.jsonl").read_text().splitlines()] == [1, 2]
    run(resume_config(path))
    assert calls == [1, 2, 3, 3]  # the resumed run redid no finished distillation round
    pool, full_pool = (torch.load(p / "shared_pool.pt", weights_only=True) for p in (path, full))
    for name in ("x1", "x2", "y"):
        assert torch.equal(pool[name], full_pool[name])
    assert not (path / "distill_checkpoints").exists()
    log = [json.loads(line) for line in (path / "distill_metrics.jsonl").read_text().splitlines()]
    assert [r["phase"] for r in log] == ["distill"] * 3 + ["share", "receive"]
    assert comparable(read_metrics(path)) == comparable(read_metrics(full))
