"""Expand ``python -m fedsim run -m ...`` into the list of jobs, with Hydra's override grammar.

Sweeps use Hydra's own parser and its basic sweeper's Cartesian product, so every form Hydra
accepts works: comma lists (``seed=0,1,2``), ``range(0,5)``, ``choice(a,b)``, ``glob(*)`` over a
config group. A named experiment (``+experiment=NAME``, ``configs/experiment/NAME.yaml``) may hold
its own sweep under ``hydra.sweeper.params``, as in Hydra; sweeps typed on the command line are
added to it and win for the same key.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from fedsim.config import CONFIG_DIR, explain_hydra_error, override_key
from fedsim.errors import ConfigError


@dataclass(frozen=True)
class Job:
    """One cell of a sweep: its full override list and the part that varies across the sweep."""

    index: int
    overrides: tuple[str, ...]
    varying: tuple[str, ...]

    @property
    def name(self) -> str:
        """A directory name: the job's number and its varying overrides (``003-seed_1-strategy_fedprox``)."""
        slug = re.sub(r"[^A-Za-z0-9_.+-]", "_", "-".join(o.lstrip("+~") for o in self.varying))[:100]
        return f"{self.index:03d}-{slug}" if slug else f"{self.index:03d}"


@dataclass(frozen=True)
class SweepPlan:
    """A sweep's name, its jobs and the runs root its folder goes under."""

    name: str
    jobs: tuple[Job, ...]
    runs_root: str


def plan_sweep(args: list[str]) -> SweepPlan:
    """The jobs of ``python -m fedsim run -m <args>`` (``args`` are Hydra overrides)."""
    from hydra import compose, initialize_config_dir
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
            parser = OverridesParser.create(config_loader=GlobalHydra.instance().config_loader())
            typed = parser.parse_overrides(args)
            fixed = [str(o.input_line) for o in typed if not o.is_sweep_override()]
            base = compose("config", overrides=fixed, return_hydra_config=True)
            params = base.hydra.sweeper.params
            experiment_sweep = [f"{k}={v}" for k, v in (params or {}).items()]
            cells = BasicSweeper.split_arguments(parser.parse_overrides(experiment_sweep + list(args)), None)[0]
            runs_root = str(base.runs_root)
            experiment = base.hydra.runtime.choices.get("experiment")
    except Exception as err:  # Hydra raises several unrelated exception types for bad input
        raise ConfigError(explain_hydra_error(err)) from None
    finally:
        GlobalHydra.instance().clear()
    values: dict[str, set[str]] = {}
    for cell in cells:
        for override in cell:
            values.setdefault(override_key(override), set()).add(override)
    varying_keys = [k for k, v in values.items() if len(v) > 1]
    jobs = tuple(
        Job(i, tuple(cell), tuple(o for o in cell if override_key(o) in varying_keys)) for i, cell in enumerate(cells)
    )
    name = experiment or "-".join(k.replace(".", "_") for k in varying_keys) or "sweep"
    return SweepPlan(name, jobs, runs_root)
