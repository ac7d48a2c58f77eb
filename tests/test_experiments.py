"""Sweeps (Hydra grammar, manifest, parallel jobs, resume, failures), fedsim report and its statistics."""

from __future__ import annotations

import json
import math
import re
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from fedsim.cli import main
from fedsim.config import compose
from fedsim.errors import ConfigError
from fedsim.experiments.plan import plan_sweep
from fedsim.experiments.report import ReportOptions, build_report, group_labels, late_trend, paired_difference
from fedsim.experiments.report_files import markdown_table
from fedsim.experiments.runs import join_runs, load_runs
from fedsim.experiments.sweep import Manifest, SweepRunner, job_command, threads_per_job

TINY = ["dataset=digits", "model=mlp", "backend=inprocess", "num_rounds=1", "num_clients=3", "clients_per_round=2"]


def fake_run(folder: Path, seed: int, accuracies: list[float], **config) -> Path:
    """A run directory as fedsim writes one (config.yaml + metrics.jsonl), without training."""
    folder.mkdir(parents=True)
    cfg = {
        "seed": seed,
        "num_rounds": len(accuracies),
        "strategy": {"name": "fedavg"},
        "run_dir": str(folder),
        **config,
    }
    (folder / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    rows = [
        {"round": r + 1, "test_accuracy": a, "bytes_up": 1000, "bytes_down": 2000} for r, a in enumerate(accuracies)
    ]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return folder


def report(tmp_path: Path, **options):
    return build_report(load_runs([str(tmp_path)]), ReportOptions(out=tmp_path / "report", **options))


# ----------------------------------------------------------------------------------- planning


def test_sweep_expands_hydra_grammar():
    plan = plan_sweep(["seed=0,1", "strategy=fedavg,fedprox", "partition.alpha=0.1,0.5"])
    assert len(plan.jobs) == 8 and plan.name == "seed-strategy-partition_alpha"
    assert plan.jobs[5].overrides == ("seed=1", "strategy=fedavg", "partition.alpha=0.5")
    assert plan.jobs[5].name == "005-seed_1-strategy_fedavg-partition.alpha_0.5"
    assert [j.overrides[0] for j in plan_sweep(["seed=range(0,5)"]).jobs] == [f"seed={i}" for i in range(5)]
    assert [j.overrides for j in plan_sweep(["model=choice(cnn,mlp)"]).jobs] == [("model=cnn",), ("model=mlp",)]
    globbed = [j.overrides[0] for j in plan_sweep(["partition=glob(*)"]).jobs]
    assert globbed == ["partition=dirichlet", "partition=iid", "partition=shards"]
    fixed = plan_sweep(["seed=0,1", "logger=[csv,tensorboard]"]).jobs  # a list value is not a sweep
    assert [j.overrides for j in fixed] == [
        ("seed=0", "logger=[csv,tensorboard]"),
        ("seed=1", "logger=[csv,tensorboard]"),
    ]


def test_named_experiment_holds_its_sweep_and_the_command_line_wins():
    plan = plan_sweep(["+experiment=example_digits"])
    assert plan.name == "example_digits" and len(plan.jobs) == 6
    assert {j.overrides for j in plan.jobs} == {
        (f"seed={s}", f"strategy={m}", "+experiment=example_digits") for s in (0, 1, 2) for m in ("fedavg", "fedprox")
    }
    assert len(plan_sweep(["+experiment=example_digits", "seed=5,6,7"]).jobs) == 6
    with pytest.raises(ConfigError, match="unknown experiment 'nosuch'"):
        plan_sweep(["+experiment=nosuch"])


def test_an_experiment_built_on_another_keeps_its_keys_against_the_strategys_setting():
    """repro_fedsa_foreign builds on repro_fedsa, whose num_clients=6 must beat FedSA's setting (5 parties)."""
    job = plan_sweep(["+experiment=repro_fedsa_foreign"]).jobs[0]
    cfg = compose(list(job.overrides))
    assert cfg.num_clients == 6 and list(cfg.strategy.teachers.foreign) == [5]
    assert list(cfg.strategy.teachers.shuffled) == [] and cfg.num_rounds == 50


def test_strategy_options_reach_only_their_strategy():
    """A named experiment's `strategy_options.<name>` keys apply to that strategy alone, beat its own
    `setting`, and lose to the command line."""
    from fedsim.config import compose

    plain = compose(["+experiment=repro_fedfed_alpha005", "strategy=fedavg"])
    assert "generator_width" not in plain.strategy and "strategy_options" not in plain
    fedfed = compose(["+experiment=repro_fedfed_alpha005", "strategy=fedfed"])
    assert (fedfed.strategy.generator_width, fedfed.strategy.distill_rounds, fedfed.strategy.distill_clients) == (
        16,
        15,
        None,
    )
    mine = compose(["+experiment=repro_fedfed_alpha005", "strategy=fedfed", "strategy.distill_rounds=3"])
    assert mine.strategy.distill_rounds == 3 and mine.strategy.generator_width == 16
    with pytest.raises(ConfigError, match="strategy_options.nosuch: no such strategy"):
        compose(["+experiment=repro_fedfed_alpha005", "strategy=fedfed", "+strategy_options.nosuch.x=1"])


def test_sweep_options_are_checked(capsys):
    assert main(["run", "--jobs", "2", "seed=0"]) == 2
    assert "--jobs runs sweeps: add -m" in capsys.readouterr().err
    assert main(["run", "-m", "seed=0,1", "--jobs", "x"]) == 2
    assert "--jobs x is invalid" in capsys.readouterr().err


# ----------------------------------------------------------------------------------- real sweeps


def sweep_process(tmp_path: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "fedsim", "run", "-m", *args, *TINY, f"runs_root={tmp_path / 'runs'}"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def manifest_of(tmp_path: Path) -> tuple[Path, dict]:
    (folder,) = (tmp_path / "runs" / "sweeps").iterdir()
    return folder, json.loads((folder / "manifest.json").read_text())


def test_killed_sweep_reruns_only_unfinished_jobs(tmp_path):
    args = ("seed=0,1", "strategy=fedavg,fedprox")
    proc = sweep_process(tmp_path, *args)
    deadline = time.time() + 120
    while time.time() < deadline:
        manifest_path = (
            next((tmp_path / "runs" / "sweeps").glob("*/manifest.json"), None)
            if (tmp_path / "runs" / "sweeps").is_dir()
            else None
        )
        if manifest_path and any(j["status"] == "done" for j in json.loads(manifest_path.read_text())["jobs"]):
            break
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    folder, manifest = manifest_of(tmp_path)
    first = [j for j in manifest["jobs"] if j["status"] == "done"]
    assert len(first) == 1 and len(manifest["jobs"]) == 4
    finished_metrics = (folder / first[0]["run_dir"] / "metrics.jsonl").read_text()

    rerun = sweep_process(tmp_path, *args, "--jobs", "2")  # started with --jobs 1: each job keeps its threads
    output, _ = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, output
    assert "1 already done, 3 to run" in output and f"continuing the unfinished sweep {folder}" in output
    assert output.count("] done in") == 3  # the finished job was not run again
    folder_again, manifest = manifest_of(tmp_path)
    assert folder_again == folder and all(j["status"] == "done" for j in manifest["jobs"])
    assert (folder / first[0]["run_dir"] / "metrics.jsonl").read_text() == finished_metrics
    for job in manifest["jobs"]:
        run_dir = folder / job["run_dir"]
        assert (run_dir / "summary.json").is_file() and job["final"]["final_test_accuracy"] is not None
        config = yaml.safe_load((run_dir / "config.yaml").read_text())
        assert config["seed"] == int(job["varying"][0].split("=")[1])
        assert config["backend"]["num_threads"] == manifest["threads"] == threads_per_job(1)

    out = subprocess.run(
        [sys.executable, "-m", "fedsim", "report", str(folder), "--baseline", "strategy=fedavg"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    assert re.search(r"\| strategy=fedavg +\| 2 +\|", out.stdout) and re.search(
        r"\| strategy=fedprox +\| 2 +\|", out.stdout
    )
    assert all((folder / name).is_file() for name in ("report.md", "report.csv", "report.png"))


def test_a_resumed_sweep_keeps_the_thread_count_it_started_with(tmp_path):
    """Pending jobs of a sweep get the torch threads fixed at its start, whatever --jobs resumes it."""
    plan = plan_sweep([*TINY, "seed=0,1"])
    (tmp_path / "sweep").mkdir()
    manifest = Manifest.create(tmp_path / "sweep", plan, [], threads=3)
    runner = SweepRunner(Manifest.load(tmp_path / "sweep"), jobs=2)
    assert runner.threads == 3
    command = job_command(manifest.jobs[1], manifest.folder, runner.threads)
    assert "backend.num_threads=3" in command and command[-1].startswith("run_dir=")
    del manifest.data["threads"]  # a manifest written before the count was recorded takes this invocation's
    manifest.save()
    assert SweepRunner(Manifest.load(tmp_path / "sweep"), jobs=1).threads == threads_per_job(1)
    assert json.loads((tmp_path / "sweep" / "manifest.json").read_text())["threads"] == threads_per_job(1)


def test_failing_job_is_recorded_and_the_rest_finish(tmp_path):
    """A job that fails while it runs (clients asked to hold more samples than there are: found when
    the data is split) is recorded with its error; a bad value caught by the schemas stops the sweep before it
    starts instead (tests/test_validation.py)."""
    proc = sweep_process(tmp_path, "seed=0,1", "partition.min_size=2,100000", "--jobs", "2")
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 1
    _, manifest = manifest_of(tmp_path)
    status = {tuple(j["varying"]): (j["status"], j.get("error")) for j in manifest["jobs"]}
    assert status[("seed=0", "partition.min_size=2")] == ("done", None) and status[
        ("seed=1", "partition.min_size=2")
    ] == ("done", None)
    for seed in (0, 1):
        state, error = status[(f"seed={seed}", "partition.min_size=100000")]
        assert state == "failed" and "could not give every one of 3 clients" in error
    assert output.count("failed: ") == 2 and "2/4 jobs done" in output


# ----------------------------------------------------------------------------------- report


def test_constant_difference_gives_that_difference_and_an_interval_excluding_zero(tmp_path):
    for seed in range(3):
        curve = [0.5 + 0.07 * seed, 0.6 + 0.05 * seed]
        fake_run(tmp_path / f"avg{seed}", seed, curve)
        fake_run(tmp_path / f"prox{seed}", seed, [a + 0.03 for a in curve], strategy={"name": "fedprox", "mu": 0.01})
    result = report(tmp_path, baseline=["strategy=fedavg"])
    table = result.table.set_index("group")
    assert list(table.index) == ["strategy=fedavg", "strategy=fedprox"]
    row = table.loc["strategy=fedprox"]
    assert row["pairs"] == 3 and row["diff"] == pytest.approx(0.03) and row["significant"]
    assert row["ci_low"] > 0 and row["ci_low"] == pytest.approx(0.03) and row["ci_high"] == pytest.approx(0.03)
    assert table.loc["strategy=fedavg", "final"] == pytest.approx(0.65) and table.loc["strategy=fedavg", "n"] == 3


def test_identical_groups_give_zero_and_are_not_marked(tmp_path):
    for seed in range(3):
        fake_run(tmp_path / f"a{seed}", seed, [0.4, 0.5 + 0.1 * seed])
        fake_run(tmp_path / f"b{seed}", seed, [0.4, 0.5 + 0.1 * seed], strategy={"name": "fedprox", "mu": 0.01})
    row = report(tmp_path, baseline=["strategy=fedavg"]).table.set_index("group").loc["strategy=fedprox"]
    assert row["diff"] == 0 and row["ci_low"] == 0 and row["ci_high"] == 0 and not row["significant"]


def test_interval_is_students_t():
    result = paired_difference(
        __import__("numpy").array([0.51, 0.52, 0.53]), __import__("numpy").array([0.5, 0.5, 0.5])
    )
    half = 4.302652729911275 * 0.01 / 3**0.5  # t(0.975, df=2) * std / sqrt(n)
    assert result["diff"] == pytest.approx(0.02) and result["ci_low"] == pytest.approx(0.02 - half)
    assert result["ci_high"] == pytest.approx(0.02 + half) and not result["significant"]


def test_unpaired_seeds_are_named_in_a_warning(tmp_path):
    for seed in range(2):
        fake_run(tmp_path / f"avg{seed}", seed, [0.5])
    for seed in range(3):
        fake_run(tmp_path / f"prox{seed}", seed, [0.6], strategy={"name": "fedprox", "mu": 0.01})
    result = report(tmp_path, baseline=["strategy=fedavg"])
    assert any("strategy=fedprox: seed 2 has no baseline run" in w for w in result.warnings)
    assert result.table.set_index("group").loc["strategy=fedprox", "pairs"] == 2


def test_pairing_keeps_other_swept_keys_equal(tmp_path):
    for seed in range(2):
        for alpha, gain in ((0.1, 0.05), (0.5, 0.01)):
            part = {"name": "dirichlet", "alpha": alpha}
            fake_run(tmp_path / f"avg{alpha}-{seed}", seed, [0.5 + alpha], partition=part)
            fake_run(
                tmp_path / f"fed{alpha}-{seed}", seed, [0.5 + alpha + gain], strategy={"name": "fedfed"}, partition=part
            )
    table = report(tmp_path, baseline=["strategy=fedavg"]).table.set_index("group")
    assert table.loc["strategy=fedfed, partition.alpha=0.1", "diff"] == pytest.approx(0.05)
    assert table.loc["strategy=fedfed, partition.alpha=0.5", "diff"] == pytest.approx(0.01)


def test_groups_show_what_differs(tmp_path):
    fake_run(tmp_path / "a", 0, [0.5])
    fake_run(tmp_path / "b", 1, [0.5])  # another seed: same group
    fake_run(tmp_path / "c", 0, [0.5], strategy={"name": "fedprox", "mu": 0.01})
    fake_run(tmp_path / "d", 0, [0.5], strategy={"name": "fedprox", "mu": 0.1})
    runs = load_runs([str(tmp_path)])
    labels = sorted(set(group_labels(runs.configs, [])))
    assert labels == ["strategy=fedavg", "strategy=fedprox, strategy.mu=0.01", "strategy=fedprox, strategy.mu=0.1"]
    assert sorted(set(group_labels(runs.configs, ["strategy"]))) == ["strategy=fedavg", "strategy=fedprox"]


def test_joined_tables_equal_the_runs_loaded_together(tmp_path):
    """Two sets of runs loaded apart and joined give the table their paths give together, a key one set lacks
    included (so a rerun and the committed runs need not be read twice)."""
    fake_run(tmp_path / "old" / "a", 0, [0.5, 0.6])
    fake_run(tmp_path / "new" / "b", 1, [0.4], strategy={"name": "fedprox", "mu": 0.01})
    together = load_runs([str(tmp_path / "old"), str(tmp_path / "new")])
    joined = join_runs([load_runs([str(tmp_path / "old")]), load_runs([str(tmp_path / "new")])])
    pd.testing.assert_frame_equal(joined.configs.sort_index(axis=1), together.configs.sort_index(axis=1))
    pd.testing.assert_frame_equal(joined.metrics, together.metrics)
    assert len(joined.configs) == 2 and len(joined.metrics) == 3


def test_trend_tells_a_rising_curve_from_a_levelled_one(tmp_path):
    rising = [0.01 * r for r in range(20)]  # the last 5 rounds' mean is 0.05 above the 5 before
    levelled = [0.5] * 10 + [0.9] * 10
    fake_run(tmp_path / "a", 0, rising, strategy={"name": "fedavg"})
    fake_run(tmp_path / "b", 0, levelled, strategy={"name": "fedprox"})
    built = report(tmp_path)
    table = built.table.set_index("group")
    assert table.loc["strategy=fedavg", "trend"] == pytest.approx(0.05)
    assert table.loc["strategy=fedprox", "trend"] == pytest.approx(0.0)
    markdown = markdown_table(built)
    assert "trend (%)" in markdown and "+5.00" in markdown and "+0.00" in markdown


def test_report_targets_files_and_errors(tmp_path, capsys):
    for seed in range(2):
        fake_run(tmp_path / "runs" / f"r{seed}", seed, [0.5, 0.7 + 0.2 * seed, 0.95])
    assert main(["report", str(tmp_path / "runs"), "--target", "0.8", "--out", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    assert "rounds to 0.8" in printed and "2.5 ± 0.7 (2/2)" in printed
    text = (tmp_path / "out" / "report.md").read_text()
    assert re.search(r"\| all runs \| 2 +\|", text) and "95.00 ± 0.00" in text
    assert main(["report", str(tmp_path / "nothing")]) == 2
    assert main(["report", str(tmp_path / "runs"), "--baseline", "strategy=scaffold"]) == 2
    assert main(["report", str(tmp_path / "runs"), "--bogus"]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 3 and "no such directory" in errors[0] and "matches none of the runs" in errors[1]


def test_round_axes_use_whole_numbers(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from fedsim.results import integer_round_axis

    fig, ax = plt.subplots()
    ax.plot([1, 2, 3], [0.1, 0.2, 0.3])
    integer_round_axis(ax)
    fig.canvas.draw()
    ticks = [t for t in ax.get_xticks() if 1 <= t <= 3]
    assert ticks and all(float(t).is_integer() for t in ticks)
    plt.close(fig)


# ----------------------------------------------------------------------------------- tracking


def test_tensorboard_events_hold_every_round(make_cfg):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from fedsim.engine import run
    from tests.conftest import read_metrics

    run_dir = run(make_cfg("logger=[csv,tensorboard]"))
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    scalars = [(e.step, e.value) for e in events.Scalars("test_accuracy")]
    expected = [(r["round"], r["test_accuracy"]) for r in read_metrics(run_dir)]
    assert [s for s, _ in scalars] == [s for s, _ in expected] == [1, 2, 3]
    assert [v for _, v in scalars] == pytest.approx([v for _, v in expected])
    assert "config/text_summary" in events.Tags()["tensors"] and (run_dir / "metrics.csv").is_file()


def test_mlflow_run_has_params_metrics_and_artifacts(make_cfg, tmp_path):
    import mlflow

    from fedsim.engine import run

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run_dir = run(make_cfg("logger=mlflow", f"logger.mlflow.tracking_uri={uri}", "logger.mlflow.experiment=tests"))
    mlflow.set_tracking_uri(uri)
    found = mlflow.search_runs(experiment_names=["tests"])
    assert len(found) == 1
    row = found.iloc[0]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert row["params.strategy.name"] == "fedavg" and row["params.num_rounds"] == "3" and row["status"] == "FINISHED"
    assert row["metrics.test_accuracy"] == pytest.approx(summary["final_test_accuracy"])
    history = mlflow.tracking.MlflowClient(uri).get_metric_history(row["run_id"], "test_accuracy")
    assert sorted(m.step for m in history) == [1, 2, 3]
    artifacts = {a.path for a in mlflow.tracking.MlflowClient(uri).list_artifacts(row["run_id"])}
    assert {"config.yaml", "summary.json", "accuracy.png"} <= artifacts
    assert not (run_dir / "metrics.csv").exists()  # logger=mlflow alone: no CSV logger


def test_missing_tracking_package_is_one_line(tmp_path, monkeypatch, capsys):
    from tests.conftest import FAST

    monkeypatch.setitem(sys.modules, "tensorboard", None)  # as if the extra were not installed
    assert main(["run", *FAST, "logger=tensorboard", f"run_dir={tmp_path / 'run'}"]) == 2
    err = capsys.readouterr().err
    assert (
        err.strip()
        == "fedsim: error: logger=tensorboard needs the 'tensorboard' package: pip install \"fedsim[tensorboard]\""
    )


def test_runs_keep_integer_keys_and_fill_keys_older_runs_lacked(tmp_path):
    """An integer key stays '4' where other runs have null (it used to become 4.0 and match no
    '--baseline k=4'); a top-level key a run's fedsim did not have yet reads as its default."""
    fake_run(tmp_path / "a", 0, [0.5], partition={"labeled_clients": 4}, augment="none")
    fake_run(tmp_path / "b", 0, [0.6], partition={"labeled_clients": None})  # written before `augment` existed
    configs = load_runs([str(tmp_path)]).configs
    assert sorted(map(str, configs["partition.labeled_clients"])) == ["4", "None"]
    assert list(configs["augment"]) == ["none", "none"]


def test_late_trend_is_the_last_means_difference_and_nan_where_undefined():
    assert late_trend(np.array([0.1, 0.2, 0.5, 0.6]), 2) == pytest.approx(0.4)  # (0.5 + 0.6 - 0.1 - 0.2) / 2
    assert late_trend(np.array([0.1, 0.2, 0.5]), 2) == pytest.approx(0.3)  # fewer than twice `last`: k = 1
    assert math.isnan(late_trend(np.array([0.5]), 5))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an infinite epsilon has no trend, and no warning either
        assert math.isnan(late_trend(np.array([1.0, math.inf, math.inf, math.inf]), 2))
