"""Privacy attacks, defences and leakage metrics: reference checks and the client update path."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fedsim.data import load_dataset
from fedsim.engine import run
from fedsim.models import build_model
from fedsim.models.vit import block_mask
from fedsim.privacy.attacks.base import ImageSpace, score_images
from fedsim.privacy.attacks.gradient_inversion import DLG, AnalyticFC, InvertingGradients
from fedsim.privacy.attacks.labels import largest_remainder, recover_labels
from fedsim.privacy.attacks.observation import attacker_copy, observe_update
from fedsim.privacy.defences.dp import CentralDP, LocalDP, PrivacyLedger, epsilon
from fedsim.privacy.defences.pruning import prune
from fedsim.privacy.defences.update import global_norm
from fedsim.privacy.metrics import label_accuracy, match, membership_scores, psnr, ssim
from tests.conftest import read_metrics

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def fmnist():
    ds = load_dataset("fashion_mnist")
    return ds, ImageSpace.of(ds)


def victim(ds, n: int, offset: int = 0):
    return ds.x_test[offset : offset + n].float() / 255.0, ds.y_test[offset : offset + n]


def untrained(name: str, shape=(1, 28, 28), seed: int = 1):
    torch.manual_seed(seed)
    return attacker_copy(build_model(name, shape, 10))


# -- metrics -------------------------------------------------------------------------------------
def test_image_metrics_and_matching():
    x = torch.rand(5, 1, 28, 28)
    assert torch.all(ssim(x, x) > 0.999) and torch.all(psnr(x, x) > 90)
    mid = 0.2 + 0.6 * x
    assert torch.allclose(psnr(mid + 0.1, mid), torch.full((5,), 20.0), atol=1e-3)  # MSE 0.01 -> 20 dB
    g = torch.Generator().manual_seed(0)
    slight, strong = (mid + 0.05 * torch.randn(x.shape, generator=g)), (mid + 0.3 * torch.randn(x.shape, generator=g))
    assert torch.all(ssim(strong.clamp(0, 1), mid) < ssim(slight.clamp(0, 1), mid)) and torch.all(
        ssim(slight, mid) < 0.999
    )
    perm = torch.tensor([3, 0, 4, 1, 2])
    assert match(x[perm], x).tolist() == perm.tolist()  # each reconstruction finds its own original
    scored = score_images(x[perm], x)
    assert scored.metrics["psnr"] > 90


def test_label_accuracy_is_order_free_and_counts_repeats():
    assert label_accuracy([3, 1, 1], [1, 3, 1]) == 1.0
    assert label_accuracy([1, 1, 1], [1, 2, 3]) == pytest.approx(1 / 3)


def test_membership_auc_and_tpr_at_low_fpr():
    members, outside = torch.linspace(1, 2, 200), torch.linspace(0, 0.99, 200)
    assert membership_scores(members, outside) == {"auc": pytest.approx(1.0), "tpr_at_0.01_fpr": pytest.approx(1.0)}
    g = torch.Generator().manual_seed(0)
    chance = membership_scores(torch.randn(2000, generator=g), torch.randn(2000, generator=g))
    assert abs(chance["auc"] - 0.5) < 0.05 and chance["tpr_at_0.01_fpr"] < 0.05


# -- reference checks ----------------------------------------------------------------------------
def test_analytic_fc_inversion_recovers_the_input_exactly(fmnist):
    ds, space = fmnist
    x01, y = victim(ds, 1, offset=3)
    obs = observe_update(untrained("mlp"), space.from_unit(x01), y, "gradient")
    rec = AnalyticFC().reconstruct(obs, 1, space, torch.Generator().manual_seed(0))
    assert torch.allclose(space.to_unit(rec.images), x01, atol=1e-4)
    assert rec.labels.tolist() == y.tolist()


@pytest.mark.parametrize("offset", range(6))
def test_idlg_recovers_the_label_of_a_single_sample(fmnist, offset):
    ds, space = fmnist
    x01, y = victim(ds, 1, offset)
    obs = observe_update(untrained("cnn", seed=offset), space.from_unit(x01), y, "gradient")
    assert recover_labels(obs, 1, space.shape, torch.Generator(), "single").tolist() == y.tolist()


def test_label_count_estimation_recovers_repeated_labels(fmnist):
    ds, space = fmnist
    g = torch.Generator().manual_seed(0)
    idx = torch.tensor([0, 1, 2, 3, 4, 5, 6, 7])
    x01, y = ds.x_test[idx].float() / 255, ds.y_test[idx]
    assert len(set(y.tolist())) < len(y)  # the batch repeats labels: top-k cannot get them all
    obs = observe_update(untrained("cnn"), space.from_unit(x01), y, "gradient")
    assert label_accuracy(recover_labels(obs, 8, space.shape, g, "count"), y) == 1.0
    assert label_accuracy(recover_labels(obs, 8, space.shape, g, "top-k"), y) < 1.0
    assert largest_remainder(torch.tensor([0.4, 2.6, 1.0]), 4).tolist() == [0, 3, 1]


def test_inverting_gradients_reaches_high_psnr_and_dp_noise_lowers_it(fmnist):
    """Untrained FedAvg CNN, batch 1, 100 iterations (~1 s). Measured: ~23 dB (48 dB at 200 iterations)."""
    ds, space = fmnist
    x01, y = victim(ds, 1)
    model = untrained("cnn")
    attack = InvertingGradients(iterations=100)
    obs = observe_update(model, space.from_unit(x01), y, "gradient")
    clean = score_images(space.to_unit(attack.reconstruct(obs, 1, space, torch.Generator().manual_seed(0)).images), x01)
    assert clean.metrics["psnr"] > 20
    obs.update = LocalDP(clip=1.0, noise_multiplier=0.1).transform_update(obs.update, torch.Generator().manual_seed(1))
    noised = score_images(
        space.to_unit(attack.reconstruct(obs, 1, space, torch.Generator().manual_seed(0)).images), x01
    )
    assert noised.metrics["psnr"] < clean.metrics["psnr"] - 8


def test_inverting_gradients_replays_multi_step_fedavg_updates(fmnist):
    """2 images, 2 local epochs of full-batch SGD: the server sees a weight delta, not a gradient."""
    ds, space = fmnist
    x01, y = victim(ds, 2)
    obs = observe_update(untrained("cnn"), space.from_unit(x01), y, "delta", batch_size=2, local_epochs=2, lr=0.05)
    assert obs.kind == "delta" and obs.local_steps == 2
    rec = InvertingGradients(iterations=300).reconstruct(obs, 2, space, torch.Generator().manual_seed(0))
    assert score_images(space.to_unit(rec.images), x01).metrics["psnr"] > 25


def test_idlg_reconstructs_with_the_recovered_label(fmnist):
    ds, space = fmnist
    x01, y = victim(ds, 1)
    obs = observe_update(untrained("cnn"), space.from_unit(x01), y, "gradient")
    rec = DLG(iterations=200, idlg=True).reconstruct(obs, 1, space, torch.Generator().manual_seed(0))
    assert rec.labels.tolist() == y.tolist()
    assert score_images(space.to_unit(rec.images), x01).metrics["psnr"] > 15  # a random guess scores ~6 dB


# -- defences ------------------------------------------------------------------------------------
def test_local_dp_clips_then_noises():
    update = {"w": torch.full((100,), 3.0), "b": torch.full((10,), -2.0)}
    clipped = LocalDP(clip=1.0, noise_multiplier=0.0).transform_update(update, torch.Generator())
    assert global_norm(clipped) == pytest.approx(1.0, rel=1e-6)
    assert torch.allclose(clipped["w"] / clipped["w"][0], torch.ones(100))  # direction kept
    noised = LocalDP(clip=1.0, noise_multiplier=2.0).transform_update(update, torch.Generator().manual_seed(0))
    residual = torch.cat([(noised[k] - clipped[k]).flatten() for k in update])
    assert residual.std().item() == pytest.approx(2.0, rel=0.2)


def test_pruning_keeps_the_largest_entries():
    update = {"w": torch.tensor([0.1, -3, 0.5, 2, -0.2, -5, 0.3, -1, 0.05, 4])}
    kept = prune(update, 0.8)["w"]
    assert kept.nonzero().flatten().tolist() == [5, 9] and kept[5] == -5


def test_central_dp_without_noise_is_the_clipped_uniform_mean():
    import numpy as np

    from fedsim.records import from_numpy

    base = from_numpy({"w": np.zeros(4, dtype=np.float32)})
    replies = [
        from_numpy({"w": np.array([10, 0, 0, 0], dtype=np.float32)}),
        from_numpy({"w": np.array([0, 0.5, 0, 0], dtype=np.float32)}),
    ]
    out = CentralDP(clip=1.0, noise_multiplier=0.0).aggregate(base, replies, torch.Generator())
    assert np.allclose(out["w"].numpy(), [0.5, 0.25, 0, 0])


def test_epsilon_grows_with_releases_and_shrinks_with_noise():
    assert epsilon([(1.0, 1)], 1.0, 1e-5) < epsilon([(1.0, 5)], 1.0, 1e-5)
    assert epsilon([(1.0, 5)], 2.0, 1e-5) < epsilon([(1.0, 5)], 1.0, 1e-5)
    assert epsilon([(0.01, 100)], 1.0, 1e-5) < epsilon([(1.0, 100)], 1.0, 1e-5)  # sampling amplifies
    ledger = PrivacyLedger(LocalDP(noise_multiplier=1.0))
    ledger.add("0", 1.0, 3)
    ledger.add("1", 1.0, 1)
    restored = PrivacyLedger(LocalDP(noise_multiplier=1.0))
    restored.load_state_dict(ledger.state_dict())
    assert restored.epsilon() == ledger.epsilon() == pytest.approx(epsilon([(1.0, 3)], 1.0, 1e-5))


# -- MJP -----------------------------------------------------------------------------------------
def test_block_mask_selects_exactly_the_requested_patches():
    for count in (1, 5, 20, 44, 49):
        chosen = block_mask(7, 7, count, torch.Generator().manual_seed(count))
        assert len(chosen) == len(set(chosen.tolist())) == count and int(chosen.max()) < 49


def test_mjp_shuffles_in_training_only_and_adds_the_localisation_loss():
    torch.manual_seed(0)
    model = build_model("vit_tiny", (1, 28, 28), 10, position_embedding="mjp", mjp_ratio=0.5, mjp_prob=1.0)
    assert model.positions.pos_embed.shape[1] == 49 + 2  # patches + CLS + unknown
    x = torch.randn(2, 1, 28, 28)
    model.eval()
    assert torch.equal(model(x), model(x)) and model.auxiliary_loss() == 0.0
    model.jigsaw(0.9, torch.Generator().manual_seed(0))
    jigsawed = model(x)
    model.jigsaw(None)
    assert not torch.allclose(jigsawed, model(x))
    model.train()
    assert not torch.allclose(model(x), model(x))  # a fresh jigsaw every training step
    aux = model.auxiliary_loss()
    assert isinstance(aux, torch.Tensor) and aux.item() > 0
    aux.backward()
    assert model.positions.localiser[0].weight.grad is not None


# -- the client update path in runs ----------------------------------------------------------------
def test_attack_observes_each_round_and_reports_leakage(make_cfg):
    cfg = make_cfg(
        "attack=inverting_gradients",
        "attack.iterations=20",
        "attack.num_images=2",
        "attack.clients=[0,1]",
        "num_rounds=2",
    )
    run_dir = run(cfg)
    records = read_metrics(run_dir)
    for r in records:
        assert 1 <= r["attack_clients"] <= 2 and r["attack_psnr"] > 0 and 0 <= r["attack_label_accuracy"] <= 1
    files = sorted((Path(run_dir) / "attacks").rglob("client_*.json"))
    assert files and all(json.loads(f.read_text())["client"] in (0, 1) for f in files)
    assert all(f.with_suffix(".png").exists() for f in files)


def test_observer_sees_the_defended_update(monkeypatch, make_cfg):
    """The attack mod wraps the defence mod: what it sees is what the server receives."""
    import fedsim.privacy.mods as mods

    seen = []

    class Recorder:
        def observe(self, view):
            seen.append(view)
            return None

    monkeypatch.setattr(mods, "attack_from_config", lambda *a, **k: Recorder())
    cfg = make_cfg("attack=membership", "defence=pruning", "defence.ratio=0.95", "num_rounds=1")
    run(cfg)
    assert seen
    for view in seen:
        sent, reply = view.sent["arrays"], view.reply["arrays"]
        delta = torch.cat([torch.from_numpy(reply[k].numpy() - sent[k].numpy()).flatten() for k in sent.keys()])
        assert (delta != 0).float().mean() <= 0.06  # the pruned update, not the raw one


@pytest.mark.parametrize("defence", ["local_dp", "dp_sgd", "central_dp"])
def test_dp_defences_run_and_report_epsilon(make_cfg, defence):
    cfg = make_cfg(f"defence={defence}", "defence.noise_multiplier=0.5", "num_rounds=2")
    records = read_metrics(run(cfg))
    assert 0 < records[0]["dp_epsilon"] < records[1]["dp_epsilon"]
    assert all(r["clients_ok"] == 3 for r in records)


def test_dp_run_resumes_with_the_same_epsilon(make_cfg, tmp_path):
    full = read_metrics(run(make_cfg("defence=local_dp", name="full")))
    cut = make_cfg("defence=local_dp", "num_rounds=2", name="cut")
    run(cut)
    from fedsim.engine import resume_config

    resumed = read_metrics(run(resume_config(cut.run_dir, make_cfg("num_rounds=3"))))
    assert [r["dp_epsilon"] for r in resumed] == [r["dp_epsilon"] for r in full]


def test_central_dp_refuses_strategies_with_their_own_aggregation(make_cfg):
    from fedsim.errors import ConfigError

    with pytest.raises(ConfigError, match="central_dp"):
        run(make_cfg("strategy=scaffold", "defence=central_dp"))


@pytest.mark.parametrize("backend", ["inprocess", "simulation"])
def test_central_dp_clips_every_update_on_the_simulation_backends(make_cfg, backend):
    """The clients' replies must reach DP-FedAvg one by one, not summed where they are produced: with a
    clip of 1e-9 and no noise the global model cannot move, while plain FedAvg learns."""
    frozen = read_metrics(
        run(
            make_cfg(
                f"backend={backend}",
                "defence=central_dp",
                "defence.clip=1e-9",
                "defence.noise_multiplier=0",
                "num_rounds=2",
                name="frozen",
            )
        )
    )
    assert frozen[0]["test_loss"] == pytest.approx(frozen[1]["test_loss"], abs=1e-6)
    plain = read_metrics(run(make_cfg(f"backend={backend}", "num_rounds=2", name="plain")))
    assert plain[1]["test_loss"] < frozen[1]["test_loss"] - 0.1


def test_membership_and_shared_statistics_attacks_in_runs(make_cfg):
    records = read_metrics(run(make_cfg("attack=membership", "num_rounds=1", name="mia")))
    assert 0 <= records[0]["attack_loss_auc"] <= 1 and "attack_confidence_tpr_at_0.01_fpr" in records[0]
    records = read_metrics(
        run(
            make_cfg(
                "strategy=fedimpro",
                "model=cnn",
                "attack=statistics_inversion",
                "attack.iterations=10",
                "attack.max_classes=2",
                "num_rounds=1",
                name="impro",
            )
        )
    )
    assert records[0]["attack_psnr"] > 0


def test_fixed_point_inversion_undoes_a_known_generator():
    """x - G(x) = x_s has the solution x when G is a contraction: the attack finds it, the raw x_s is far off."""
    from fedsim.privacy.attacks.shared_features import combine_copies, fixed_point_inversion

    class Blur(torch.nn.Module):  # G(x) = 0.5 * (x averaged with its neighbours): a known, contracting generator
        def forward(self, x):
            return (0.5 * torch.nn.functional.avg_pool2d(x, 3, 1, 1, count_include_pad=False),)

    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 1, 8, 8, generator=g)
    x_s = x - Blur()(x)[0]
    recovered = fixed_point_inversion(Blur(), x_s, steps=500, lr=0.05)
    assert psnr(recovered, x).mean() > 35 > psnr(x_s.clamp(0, 1), x).mean() + 20
    combined, sigma = combine_copies(
        [x_s + 0.15, x_s - 0.25], [0.15, 0.25]
    )  # inverse-variance weights 1/0.0225, 1/0.0625
    assert sigma == pytest.approx((1 / (1 / 0.0225 + 1 / 0.0625)) ** 0.5)
    torch.testing.assert_close(combined, x_s + (0.15 / 0.0225 - 0.25 / 0.0625) / (1 / 0.0225 + 1 / 0.0625))
    three, sigma3 = combine_copies([x_s + 0.1, x_s - 0.1, x_s + 0.4], [0.5, 0.5, 1.0])  # weights 4, 4, 1
    assert sigma3 == pytest.approx(1 / 3)
    torch.testing.assert_close(three, x_s + 0.4 / 9)
    exact, sigma0 = combine_copies([x_s + 1, x_s], [0.3, 0.0])  # a noiseless copy is the signal
    assert sigma0 == 0.0 and torch.equal(exact, x_s)


def test_fedfed_shared_features_are_attacked(make_cfg):
    records = read_metrics(
        run(
            make_cfg(
                "strategy=fedfed",
                "strategy.distill_rounds=1",
                "model=cnn",
                "attack=feature_inversion",
                "attack.decoder_steps=20",
                "attack.fixed_point_steps=20",
                "attack.max_samples=32",
                "num_rounds=1",
            )
        )
    )
    metrics = {k.removeprefix("attack_setup_"): v for k, v in records[0].items() if k.startswith("attack_setup_")}
    assert metrics["psnr"] == max(metrics["direct_psnr"], metrics["decoder_psnr"], metrics["fixed_point_psnr"]) > 0
    assert 0 < metrics["reference_psnr"] < 40 and 0 < metrics["reference_ssim"] < 1  # the mean public image: no leakage


def test_mjp_vit_trains_in_a_run(make_cfg):
    records = read_metrics(
        run(make_cfg("model=vit_tiny", "model.patch=2", "model.dim=24", "model.depth=1", "defence=mjp", "num_rounds=1"))
    )
    assert records[0]["train_loss"] > 0


# -- python -m fedsim attack -----------------------------------------------------------------------
def test_attack_command_writes_grid_and_table(tmp_path):
    out = tmp_path / "attack"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "fedsim",
            "attack",
            "dataset=digits",
            "model=mlp",
            "attack=analytic",
            "num_images=3",
            f"out_dir={out}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert (out / "grid.png").exists() and (out / "metrics.csv").read_text().count("\n") == 4
    summary = json.loads((out / "summary.json").read_text())
    assert summary["mean"]["psnr"] > 60 and summary["mean"]["label_accuracy"] == 1.0
    assert "mean" in proc.stdout


def test_attack_command_rejects_run_only_attacks(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "fedsim", "attack", "attack=membership"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "membership" in proc.stderr


def test_april_recovers_a_vit_input_exactly_and_mjp_defeats_it(fmnist):
    ds, space = fmnist
    x01, y = victim(ds, 1, offset=5)
    g = torch.Generator().manual_seed(0)
    plain = untrained("vit_tiny")
    obs = observe_update(plain, space.from_unit(x01), y, "gradient")
    from fedsim.privacy.attacks.gradient_inversion import APRIL

    exact = score_images(space.to_unit(APRIL().reconstruct(obs, 1, space, g).images), x01)
    assert exact.metrics["psnr"] > 60
    torch.manual_seed(1)
    mjp = attacker_copy(build_model("vit_tiny", (1, 28, 28), 10, position_embedding="mjp"))
    mjp.jigsaw(0.9, torch.Generator().manual_seed(0))  # the victim's image is jigsawed
    obs = observe_update(mjp, space.from_unit(x01), y, "gradient")
    mjp.jigsaw(None)
    defended = score_images(space.to_unit(APRIL().reconstruct(obs, 1, space, g).images), x01)
    assert defended.metrics["psnr"] < exact.metrics["psnr"] - 40


def test_adaptive_attacker_reads_the_jigsawed_slots_off_the_update(fmnist):
    from fedsim.privacy.attacks.gradient_inversion import jigsawed_slots

    ds, space = fmnist
    x01, y = victim(ds, 1)
    torch.manual_seed(1)
    model = attacker_copy(build_model("vit_tiny", (1, 28, 28), 10, position_embedding="mjp"))
    model.jigsaw(0.5, torch.Generator().manual_seed(3))
    obs = observe_update(model, space.from_unit(x01), y, "gradient")
    expected = block_mask(7, 7, round(0.5 * 49), torch.Generator().manual_seed(3))
    assert sorted(jigsawed_slots(obs).tolist()) == sorted(expected.tolist())


def test_lpips_is_skipped_without_local_weights(tmp_path, caplog):
    from fedsim.privacy.metrics import image_scores

    x = torch.rand(2, 1, 28, 28)
    with caplog.at_level("INFO", logger="fedsim"):
        scores = image_scores(x, x, lpips_home=str(tmp_path))
    assert "lpips" not in scores and "LPIPS skipped" in caplog.text


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["attack=membership", "attack.every=0"], "attack.every=0"),
        (["attack=membership", "attack.clients=3"], "attack.clients=3"),
        (["attack=nosuch"], "unknown attack 'nosuch'"),
        (["defence=nosuch"], "unknown defence 'nosuch'"),
    ],
)
def test_bad_attack_and_defence_config_is_one_clear_error(overrides, message):
    from fedsim.errors import ConfigError
    from fedsim.validation import compose_run

    with pytest.raises(ConfigError, match=message):
        compose_run(overrides)


def test_stand_alone_dp_sgd_step_is_the_clipped_noised_mean_gradient(fmnist):
    from fedsim.privacy.attacks.observation import gradient
    from fedsim.privacy.defences.dp import DPSGD
    from fedsim.privacy.evaluate import dp_sgd_gradient

    ds, space = fmnist
    x01, y = victim(ds, 3)
    x = space.from_unit(x01)
    model = untrained("cnn")
    params = {k: p.detach().requires_grad_(True) for k, p in model.named_parameters()}
    per_example = [gradient(model, params, x[i : i + 1], y[i : i + 1], False) for i in range(3)]
    mean = {k: sum(g[k] for g in per_example) / 3 for k in params}
    unclipped = dp_sgd_gradient(model, x, y, DPSGD(clip=1e6, noise_multiplier=0.0), torch.Generator())
    assert all(torch.allclose(unclipped[k], mean[k], atol=1e-5) for k in mean)
    clipped = dp_sgd_gradient(model, x, y, DPSGD(clip=0.01, noise_multiplier=0.0), torch.Generator())
    assert global_norm(clipped) <= 0.01 + 1e-6


def test_an_attack_that_cannot_apply_warns_and_leaves_training_alone(make_cfg):
    import logging

    class Collect(logging.Handler):
        def __init__(self):
            super().__init__()
            self.lines = []

        def emit(self, record):
            self.lines.append(record.getMessage())

    collect = Collect()
    logging.getLogger("fedsim").addHandler(collect)
    try:
        # APRIL needs a single-image gradient; these clients hold many images and batch 16
        records = read_metrics(
            run(
                make_cfg(
                    "attack=april", "model=vit_tiny", "model.patch=2", "model.dim=24", "model.depth=1", "num_rounds=2"
                )
            )
        )
    finally:
        logging.getLogger("fedsim").removeHandler(collect)
    assert all(r["clients_ok"] == 3 and "attack_psnr" not in r for r in records)
    assert sum("APRIL closed form needs" in line for line in collect.lines) == 1  # one warning, not one per client


@pytest.mark.parametrize("defence", ["none", "mjp"])
def test_final_model_audit_inverts_single_image_gradients_of_the_trained_model(make_cfg, defence):
    """attack.final_model: no round update is attacked; after the last round APRIL inverts one-image
    gradients of the final ViT, exactly without a defence and no better than a random image under MJP."""
    path = run(
        make_cfg(
            "attack=april",
            "attack.final_model=true",
            "attack.num_images=3",
            "attack.clients=[1]",
            f"defence={defence}",
            "model=vit_tiny",
            "model.patch=2",
            "model.dim=24",
            "model.depth=1",
            "num_rounds=2",
        )
    )
    first, last = read_metrics(path)
    assert not any(k.startswith("attack_") for k in first) and "attack_psnr" not in last
    assert last["attack_final_label_accuracy"] == 1.0
    if defence == "none":
        assert last["attack_final_psnr"] > 60 > last["attack_final_reference_psnr"]  # APRIL's closed form is exact
    else:
        assert last["attack_final_psnr"] < last["attack_final_reference_psnr"] + 3
    with (path / "attacks" / "final" / "metrics.csv").open() as f:
        assert len(list(csv.DictReader(f))) == 3
    assert (path / "attacks" / "final" / "grid.png").is_file()


def test_the_final_model_audit_attacks_on_the_cpu_whatever_device_trained_the_model(make_cfg, tmp_path):
    """A run trained with device=cuda hands the audit its final weights; the attacks are CPU code, so the audit
    must not move the model to the training device (it did: 'Input type (torch.FloatTensor) and weight type
    (torch.cuda.FloatTensor)' on a GPU machine, 'Torch not compiled with CUDA' or 'no NVIDIA driver' here)."""
    from omegaconf import open_dict

    from fedsim.data.partition import make_partition
    from fedsim.models import model_from_config
    from fedsim.privacy.audit import FinalModelAudit
    from fedsim.records import model_to_record
    from fedsim.results import RunDirectory

    cfg = make_cfg(
        "attack=april",
        "attack.final_model=true",
        "attack.num_images=2",
        "model=vit_tiny",
        "model.patch=2",
        "model.dim=24",
        "model.depth=1",
        "num_rounds=1",
    )
    with open_dict(cfg):
        cfg.device = "cuda"  # what trained the model; no GPU needs to be here
    dataset = load_dataset(cfg.dataset.name, cfg.data_root)
    splits = make_partition(dataset.y_train.numpy(), cfg.num_clients, cfg.partition, cfg.seed)
    audit = FinalModelAudit(cfg, dataset, splits, RunDirectory(tmp_path / "run"))
    record: dict = {}
    audit.observe_round(1, model_to_record(model_from_config(cfg, dataset.input_shape, dataset.num_classes)), record)
    assert record["attack_final_psnr"] > 60  # APRIL's closed form on the plain ViT: exact
