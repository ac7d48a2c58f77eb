"""Bad input: every config key is checked against its schema before any work starts, and runtime
mistakes (device, run folder, resume, full disk) stay one line with exit code 2."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf

from fedsim.cli import main
from fedsim.config import group_options
from fedsim.errors import ConfigError
from fedsim.validation import compose_run
from tests.conftest import FAST


@pytest.mark.parametrize(
    "overrides, expected",
    [
        # the mistakes a new user made (issue 22), each now named with what is allowed
        ("partition.alpha=-1", "partition.alpha=-1: must be > 0 (Dirichlet concentration of the label split)"),
        ("partition.alpha=abc", "partition.alpha='abc': expected a number"),
        ("partition.alpha=0", "partition.alpha=0: must be > 0"),
        ("strategy=dpsgd strategy.num_neighbours=-1", "strategy.num_neighbours=-1: must be >= 0"),
        ("strategy=fedprox strategy.mu=-1", "strategy.mu=-1: must be >= 0 (FedProx proximal weight)"),
        ("strategy=scaffold strategy.server_lr=-1", "strategy.server_lr=-1: must be > 0"),
        ("strategy=fedfed strategy.share_noise_std=[0.2,-1]", "strategy.share_noise_std=[0.2, -1]: must be >= 0"),
        ("strategy=fedfed strategy.share_noise_std=[]", "share_noise_std=[]: give at least one noise level"),
        ("strategy=dispfl strategy.density=0", "strategy.density=0: must be > 0"),
        ("strategy=dispfl strategy.density=1.5", "strategy.density=1.5: must be <= 1"),
        ("optimizer.lr=nan", "optimizer.lr=nan: expected a finite number"),
        ("optimizer.momentum=inf", "optimizer.momentum=inf: expected a finite number"),
        ("strategy=scool strategy.prior=gaussian", "strategy.prior='gaussian': expected one of dirac, sbm, attention"),
        ("strategy=fedsa strategy.teachers.lr=0", "strategy.teachers.lr=0: must be > 0"),
        ("attack=dlg attack.iterations=0", "attack.iterations=0: must be >= 1"),
        ("attack=dlg attack.every=0", "attack.every=0: must be >= 1"),
        ("attack=dlg attack.clients=3", "attack.clients=3: expected a list of integers or null"),
        ("defence=local_dp defence.noise_multiplier=-0.5", "defence.noise_multiplier=-0.5: must be >= 0"),
        ("defence=pruning defence.ratio=1", "defence.ratio=1: must be < 1"),
        ("model=vit_tiny model.heads=5", "heads=5: must divide dim=96"),
        ("backend=simulation backend.num_gpus=-1", "backend.num_gpus=-1: must be >= 0"),
        ("logger=[csv,tensorboard] logger.tensorboard.flush_secs=0", "logger.tensorboard.flush_secs=0: must be > 0"),
        ("deploy.port=70000", "deploy.port=70000: must be <= 65535"),
        # what a plug-in needs of the rest of the run
        ("strategy=fedsa model=mlp", "strategy=fedsa needs a convolutional model"),
        ("defence=dp_sgd model=resnet18", "defence=dp_sgd cannot wrap model=resnet18"),
        ("attack=april", "attack=april needs model=vit_tiny"),
        # unknown keys name the closest valid one
        ("strategy=fedprox strategy.mux=0.1", "strategy.mux=0.1: no such key; did you mean strategy.mu?"),
        ("num_round=3", "num_round=3: no such key; did you mean num_rounds?"),
        ("strategy=fedfed strategy.distil_rounds=3", "did you mean strategy.distill_rounds?"),
        ("+strategy.extra=1", "strategy.extra=1: no such key"),
    ],
)
def test_bad_values_are_one_line_before_any_work(capsys, tmp_path, overrides, expected):
    run_dir = tmp_path / "run"
    assert main(["run", "backend=inprocess", f"run_dir={run_dir}", *overrides.split()]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and expected in err and "Traceback" not in err and "Warning" not in err
    assert not run_dir.exists()  # nothing was started


def test_every_option_file_fits_its_schema():
    """Each config option composes and passes its schema (a key missing from a YAML or a schema
    field without a YAML value fails here)."""
    for strategy in group_options("strategy"):
        compose_run([f"strategy={strategy}"])
    for model in group_options("model"):
        compose_run([f"model={model}"])
    for group in ("dataset", "partition", "backend", "defence"):
        for option in group_options(group):
            compose_run([f"{group}={option}"])
    needs = {"analytic": ["model=mlp"], "april": ["model=vit_tiny"]}
    for attack in group_options("attack"):
        compose_run([f"attack={attack}", *needs.get(attack, [])])
    compose_run(["logger=[csv,tensorboard,mlflow]"])


def test_cuda_without_a_gpu_is_one_line(capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["run", "device=cuda"]) == 2
    assert "device=cuda: no CUDA GPU is visible here" in capsys.readouterr().err


def test_unwritable_run_folder_is_one_line(capsys, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert main(["run", *FAST, f"run_dir={blocker}/run"]) == 2
    assert f"run_dir={blocker}/run: cannot write the run there ({blocker} is a file, not a folder)" in capsys.readouterr().err


def test_resume_refuses_another_strategy_and_a_newer_version(capsys, tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    assert main(["run", *FAST, "num_rounds=1", f"run_dir={run_dir}"]) == 0
    capsys.readouterr()
    assert main(["run", f"resume={run_dir}", "strategy=fedprox"]) == 2
    assert "strategy=fedprox: the run in" in capsys.readouterr().err
    import fedsim.checkpoint as checkpoint

    monkeypatch.setattr(checkpoint, "__version__", "0.0.1")  # this fedsim is older than the run's writer
    assert main(["run", f"resume={run_dir}", "num_rounds=2"]) == 2
    assert "newer than this fedsim 0.0.1" in capsys.readouterr().err


def test_full_disk_keeps_the_previous_checkpoint(capsys, tmp_path, monkeypatch):
    import fedsim.checkpoint as checkpoint

    run_dir = tmp_path / "run"
    real_save = torch.save

    def save_until_round_2(obj, path, *args, **kwargs):
        if isinstance(obj, dict) and obj.get("round") == 2:
            with open(path, "wb") as f:
                f.write(b"partial")  # a half-written file, then the disk is full
            raise OSError(28, "No space left on device")
        return real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(checkpoint.torch, "save", save_until_round_2)
    assert main(["run", *FAST, "num_rounds=2", "checkpoint_every=1", f"run_dir={run_dir}"]) == 2
    err = capsys.readouterr().err
    assert "No space left on device" in err and "the checkpoint of round 1 is intact" in err and err.count("\n") == 1
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["round_000001.pt"]
    monkeypatch.setattr(checkpoint.torch, "save", real_save)
    assert main(["run", f"resume={run_dir}"]) == 0  # space freed: the run continues from round 1


def test_a_bad_sweep_value_stops_the_sweep_before_any_job(capsys, tmp_path):
    assert main(["run", "-m", *FAST, f"runs_root={tmp_path}", "strategy=fedprox", "strategy.mu=0.1,-1"]) == 2
    assert "sweep job 001-strategy.mu_-1: strategy.mu=-1: must be >= 0" in capsys.readouterr().err
    assert not (tmp_path / "sweeps").exists()


NUMBER_KEYS = ["num_rounds", "batch_size", "optimizer.lr", "optimizer.momentum", "partition.alpha", "eval_every",
               "strategy.mu", "clients_per_round", "partition.max_samples_per_client"]
ODD_VALUES = st.one_of(
    st.integers(-10**6, 10**6),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["abc", "null", "true", "[1,2]", "''", "1e309", "-0"]),
)


@settings(max_examples=60, deadline=None)
@given(key=st.sampled_from(NUMBER_KEYS), value=ODD_VALUES)
def test_any_value_gives_a_valid_config_or_one_line_naming_the_key(key, value):
    """Property: whatever value a key gets, composing either succeeds with every number finite and
    in range, or fails with one ConfigError line that names the key: never another exception."""
    text = repr(value) if isinstance(value, float) and not math.isfinite(value) else str(value)
    text = {"nan": "nan", "inf": "inf", "-inf": "-inf"}.get(text.strip("'"), text)
    try:
        cfg = compose_run(["strategy=fedprox", f"{key}={text}"])
    except ConfigError as err:
        assert "\n" not in str(err) and key.split(".")[-1] in str(err)
        return
    chosen = OmegaConf.select(cfg, key)
    assert chosen is None or (isinstance(chosen, (int, float)) and math.isfinite(chosen))
    assert cfg.num_rounds >= 1 and cfg.batch_size >= 1 and cfg.optimizer.lr > 0 and cfg.strategy.mu >= 0
    assert cfg.partition.alpha > 0 and 0 <= cfg.optimizer.momentum < 1
