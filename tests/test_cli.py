"""The command line: help, composed config, and one-line errors with exit code 2."""

import subprocess
import sys

import pytest

from fedsim.cli import main


def fedsim(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fedsim", *args], capture_output=True, text=True, timeout=120)


def test_help_lists_commands():
    out = fedsim("--help")
    assert out.returncode == 0 and "run" in out.stdout


def test_run_help_shows_groups_and_config(capsys):
    assert main(["run", "--help"]) == 0
    out = capsys.readouterr().out
    assert (
        "strategy   dispfl, dpsgd, fedavg, fedfed, fedimpro, fednova, fedprox, fedsa, fixmatch, local, scaffold, "
        "scool, twinsight"
        in out
        and "num_rounds:" in out
    )


def test_cfg_job_prints_composed_config(capsys):
    assert main(["run", "strategy=fedprox", "strategy.mu=0.1", "--cfg", "job"]) == 0
    out = capsys.readouterr().out
    assert "name: fedprox" in out and "mu: 0.1" in out


@pytest.mark.parametrize(
    "override, expected",
    [
        (
            "strategy=nosuch",
            "unknown strategy 'nosuch': choose one of dispfl, dpsgd, fedavg, fedfed, fedimpro, fednova, fedprox, "
            "fedsa, fixmatch, local, scaffold, scool, twinsight",
        ),
        ("dataset=imagenet", "unknown dataset 'imagenet': choose one of cifar10"),
        ("num_rounds=abc", "num_rounds='abc': expected an integer (FL rounds)"),
        ("nosuchkey=1", "nosuchkey=1: no such key"),
        ("clients_per_round=50", "clients_per_round=50 exceeds num_clients=10"),
        ("optimizer.lr=-1", "optimizer.lr=-1: must be > 0 (local learning rate)"),
        ("num_rounds", "cannot parse override 'num_rounds'"),
        ("resume=/nonexistent/run", "resume=/nonexistent/run: no config.yaml there"),
    ],
)
def test_bad_input_gives_one_line_and_exit_2(capsys, override, expected):
    assert main(["run", override]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and expected in err and "Traceback" not in err


def test_bad_input_in_a_real_process():
    out = fedsim("run", "strategy=nosuch")
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "fedsim: error: unknown strategy 'nosuch': choose one of dispfl, dpsgd, fedavg, fedfed, fedimpro, fednova, "
        "fedprox, fedsa, fixmatch, local, scaffold, scool, twinsight"
    ]


def test_missing_data_path_is_one_line(tmp_path):
    out = fedsim("run", "dataset=cifar10", f"data_root={tmp_path}", f"runs_root={tmp_path}/runs", "backend=inprocess")
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "CIFAR10 not found under" in lines[0]


def test_resume_on_the_command_line_keeps_the_runs_rounds_unless_asked(tmp_path, capsys):
    from tests.conftest import FAST, read_metrics

    run_dir = tmp_path / "run"
    assert main(["run", *FAST, "num_rounds=2", f"run_dir={run_dir}"]) == 0
    assert main(["run", f"resume={run_dir}"]) == 0  # the default num_rounds (5) must not lengthen it
    assert [r["round"] for r in read_metrics(run_dir)] == [1, 2]
    assert main(["run", f"resume={run_dir}", "num_rounds=3"]) == 0
    assert [r["round"] for r in read_metrics(run_dir)] == [1, 2, 3]


@pytest.mark.parametrize("backend", ["inprocess", "simulation"])
def test_a_run_without_run_dir_trains_every_sampled_client(tmp_path, backend):
    """The README's main job names no run directory: the clients must still find theirs."""
    from tests.conftest import FAST, read_metrics

    overrides = [o for o in FAST if not o.startswith("backend=")]
    assert main(["run", *overrides, f"backend={backend}", "num_rounds=1", f"runs_root={tmp_path}"]) == 0
    (run_dir,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    (record,) = read_metrics(run_dir)
    assert record["clients_ok"] == record["clients_sampled"] == 3 and "failed" not in record
