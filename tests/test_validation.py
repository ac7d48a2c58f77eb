"""Bad input: every config key is checked against its schema before any work starts, and runtime
mistakes (device, run folder, resume, full disk) stay one line with exit code 2."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf

from fedsim.cli import main
from fedsim.config import group_options
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
        (
            "strategy=fedfed attack=feature_inversion +attack.final_model=true",
            "attack.final_model=true needs a gradient inversion",
        ),
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
    assert (
        f"run_dir={blocker}/run: cannot write the run there ({blocker} is a file, not a folder)"
        in capsys.readouterr().err
    )


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


# -- property: any override of any key gives exit 0 or one line naming the key -------------------
TINY = [
    "backend=inprocess",
    "dataset=digits",
    "model=mlp",
    "num_clients=3",
    "clients_per_round=2",
    "min_clients=1",
    "num_rounds=1",
    "local_epochs=1",
    "batch_size=64",
    "checkpoint_every=0",
    "eval_batch_size=500",
]
NEEDS = {
    "strategy=fedsa": ["model=cnn"],
    "attack=april": ["model=vit_tiny", "batch_size=1"],
    "defence=mjp": ["model=vit_tiny"],
    "strategy=fedfed": ["strategy.distill_rounds=1"],
}
WORK = (
    "rounds",
    "epochs",
    "iterations",
    "steps",
    "restarts",
    "samples",
    "num_images",
    "images_per_class",
    "max_classes",
    "probe_per_class",
    "num_selected",
    "sbm_blocks",
    "width",
    "hidden",
    "dim",
    "depth",
    "heads",
    "projection_dim",
    "generator",
    "likelihood",
    "num_neighbours",
    "num_cpus",
    "num_threads",
    "unroll",
)  # unroll_limit: a gradient attack replays local training on up to that many samples
SKIP = (
    "data_root",
    "runs_root",
    "run_dir",
    "resume",
    "deploy.",
    "logger",
    "device",
    "strategy.setting",
    "strategy.client",
    "dataset.download",
    "strategy.teachers.paths",
    "attack.lpips_home",
    "backend.ray_init_args",
    "backend.num_cpus",
    "backend.num_gpus",
)  # paths, network, and Ray start-up (checked by the schema tests above)


def option_keys() -> list[tuple[tuple[str, ...], str]]:
    """(the group choices a key needs, the dotted key) for every key of every option of every group."""
    from fedsim.params import all_keys

    base = compose_run(TINY)
    found = [
        ((), k) for k in all_keys(base) if "." not in k and not isinstance(base[k], (dict,)) and k not in GROUP_NAMES
    ]
    for group in ("strategy", "model", "partition", "attack", "defence", "optimizer"):
        options = group_options(group) if group != "optimizer" else [None]
        for option in options:
            choice = () if option is None else (f"{group}={option}", *NEEDS.get(f"{group}={option}", []))
            cfg = compose_run([*TINY, *choice])
            found += [
                (choice, k)
                for k in all_keys(cfg[group], group)
                if k != f"{group}.name"
                and k != group
                and not isinstance(OmegaConf.select(cfg, k), (dict,))
                and not OmegaConf.is_dict(OmegaConf.select(cfg, k))
            ]
    return [(c, k) for c, k in found if not any(k == s or k.startswith(s) for s in SKIP)]


GROUP_NAMES = (
    "strategy",
    "dataset",
    "model",
    "partition",
    "backend",
    "attack",
    "defence",
    "logger",
    "optimizer",
    "deploy",
)
KEYS = option_keys()
BAD_VALUES = [
    "-1",
    "0",
    "1",
    "2",
    "0.5",
    "1e-12",
    "nan",
    "inf",
    "-inf",
    "abc",
    "[1,2]",
    "true",
    "null",
    "''",
    "1000000000",
]


def value_for(key: str, raw: str) -> str:
    """Huge values only where they do not scale the work (a valid 10^9 rounds is no bad input)."""
    if raw == "1000000000" and any(w in key.rsplit(".", 1)[-1] for w in WORK):
        return "3"
    return raw


@st.composite
def overrides(draw):
    kind = draw(st.sampled_from(["value", "value", "value", "unknown_key", "unknown_option"]))
    if kind == "unknown_option":
        group = draw(st.sampled_from(["strategy", "model", "dataset", "partition", "backend", "attack", "defence"]))
        return (), f"{group}=nosuch", group
    choice, key = draw(st.sampled_from(KEYS))
    if kind == "unknown_key":
        return choice, f"{key}x=1", key + "x"
    return choice, f"{key}={value_for(key, draw(st.sampled_from(BAD_VALUES)))}", key


def one_case(choice: tuple[str, ...], override: str, key: str, tmp: str) -> None:
    import contextlib
    import io
    import signal

    def hang(signum, frame):
        raise AssertionError(f"{override}: no answer within 120 s")

    err = io.StringIO()
    signal.signal(signal.SIGALRM, hang)
    signal.alarm(120)
    try:
        with contextlib.redirect_stderr(err):
            code = main(["run", *TINY, *choice, override, f"run_dir={tmp}/run", f"runs_root={tmp}"])
    finally:
        signal.alarm(0)
    errors = [line for line in err.getvalue().splitlines() if line.startswith("fedsim: error")]
    assert code in (0, 2), (override, code, err.getvalue())
    assert "Traceback" not in err.getvalue()
    if code == 2:
        named = key.rsplit(".", 1)[-1]
        assert len(errors) == 1 and (named in errors[0] or key.split(".")[0] in errors[0]), (override, err.getvalue())


@settings(max_examples=int(os.environ.get("FEDSIM_PROPERTY_EXAMPLES", 25)), deadline=None, derandomize=True)
@given(case=overrides())
def test_any_override_runs_or_is_one_line_naming_its_key(case, tmp_path_factory):
    """Property (issue 22): over every key of every group, valid, boundary and invalid values, unknown
    keys and unknown options: exit 0 (the tiny run finished) or exit 2 with one error line naming the
    key, never a traceback, never a hang. FEDSIM_PROPERTY_EXAMPLES raises the count (the slow profile)."""
    choice, override, key = case
    one_case(choice, override, key, str(tmp_path_factory.mktemp("case")))


@pytest.mark.slow
def test_any_override_long_profile():
    """The same property with 150 cases."""
    env = {**os.environ, "FEDSIM_PROPERTY_EXAMPLES": "150"}
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            f"{__file__}::test_any_override_runs_or_is_one_line_naming_its_key",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=5400,
    )
    assert out.returncode == 0, out.stdout[-3000:]
