"""Every named experiment (configs/experiment/*.yaml) is a command a user reruns: its sweep plans, and every job's
config passes the checks a run makes before it starts, so that no claim's command on docs/REPRODUCTIONS.md rots."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedsim.experiments.plan import plan_sweep
from fedsim.validation import compose_run

EXPERIMENTS = sorted(p.stem for p in (Path(__file__).parents[1] / "configs" / "experiment").glob("*.yaml"))


def test_experiments_are_found():
    assert "repro_fedfed" in EXPERIMENTS and "fedfed_paper" in EXPERIMENTS


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_plans_and_each_job_config_is_valid(name):
    jobs = plan_sweep([f"+experiment={name}"]).jobs
    assert jobs, f"{name}: its sweep plans no job"
    # the seed cannot make a config invalid: one job per setting the sweep varies besides it
    settings = {tuple(o for o in job.overrides if not o.startswith("seed=")) for job in jobs}
    for overrides in sorted(settings):
        compose_run(list(overrides))
