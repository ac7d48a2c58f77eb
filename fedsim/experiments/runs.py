"""Load run directories into tables: one row of flattened config per run, one row per round of metrics."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from fedsim.config import CONFIG_DIR, as_dict, load_dict_config
from fedsim.errors import ConfigError
from fedsim.experiments.graph import graph_metrics
from fedsim.results import read_records

# Keys that say where or how a run was executed, not what was run: never a reason to group apart.
BOOKKEEPING = (
    "run_dir",
    "runs_root",
    "resume",
    "verbose",
    "data_root",
    "device",
    "round_timeout",
    "connect_timeout",
    "checkpoint_every",
    "checkpoints_kept",
    "eval_batch_size",
    "backend.num_threads",
    "backend.ray_init_args",
    "logger",
    "deploy",
)


@dataclass
class RunTable:
    """The configs and per-round metrics of a set of runs.

    ``configs``: one row per run (index = run path), dotted config keys as columns; ``metrics``: one row per
    (run, round) with every scalar metric.
    """

    configs: pd.DataFrame
    metrics: pd.DataFrame


def find_run_dirs(paths: list[str]) -> list[Path]:
    """Every run directory in ``paths`` (a run directory, or a folder holding some, e.g. a sweep)."""
    found: list[Path] = []
    for given in map(Path, paths):
        if not given.exists():
            raise ConfigError(
                f"{given}: no such directory; pass run directories or sweep directories (runs/sweeps/...)"
            )
        candidates = (
            [given] if (given / "config.yaml").is_file() else sorted(p.parent for p in given.rglob("config.yaml"))
        )
        found += [p for p in candidates if (p / "metrics.jsonl").is_file() and p not in found]
    if not found:
        raise ConfigError(f"no run directory (config.yaml + metrics.jsonl) under {', '.join(paths)}")
    return found


def as_text(frame: pd.DataFrame) -> pd.DataFrame:
    """Config values as comparable strings; a key a run does not have becomes ''."""
    return frame.map(lambda v: "" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v))


def is_bookkeeping(key: str) -> bool:
    """Whether a config key is bookkeeping (paths, resume, verbosity), not part of what a run is."""
    return any(key == b or key.startswith(b + ".") for b in BOOKKEEPING)


def own_strategy_keys(strategy: dict) -> dict:
    """The strategy node without keys its option file does not define.

    The strategy node without keys its option file (configs/strategy/<name>.yaml) does not define: runs
    composed before per-strategy ``strategy_options`` recorded an experiment's keys for every strategy of a
    sweep, e.g. FedImpro's schedule on the FedAvg runs, which FedAvg never read.
    """
    path = CONFIG_DIR / "strategy" / f"{strategy.get('name')}.yaml"
    if not path.is_file():
        return strategy
    own = set(as_dict(load_dict_config(path)))
    return {k: v for k, v in strategy.items() if k in own}


def base_defaults() -> dict:
    """The defaults of the top-level keys of configs/config.yaml, flattened.

    The top-level keys of configs/config.yaml that are not groups (seed, augment, optimizer.*, ...),
    flattened: what a run saved before a key existed ran with (a new key's default keeps the earlier
    behaviour).
    """
    base = as_dict(load_dict_config(CONFIG_DIR / "config.yaml"))
    base.pop("defaults", None)
    return pd.json_normalize(base, sep=".").iloc[0].to_dict()


def load_runs(paths: list[str]) -> RunTable:
    """Configs and per-round metrics of every run under ``paths`` (runs that logged no round are left out)."""
    tables = []
    defaults = base_defaults()
    for run in find_run_dirs(paths):
        rows = read_records(run / "metrics.jsonl")
        if not rows:
            continue
        graph_metrics(run, rows)
        config = as_dict(load_dict_config(run / "config.yaml"), resolve=True)
        config["strategy"] = own_strategy_keys(config["strategy"])
        flat = pd.json_normalize(config, sep=".")
        for key in defaults.keys() - set(flat.columns):  # a key the run's fedsim did not have yet
            flat[key] = [defaults[key]]
        flat.index = [str(run)]
        frame = pd.DataFrame([{k: v for k, v in r.items() if not isinstance(v, (list, dict))} for r in rows])
        frame.insert(0, "run", str(run))
        flat = flat.map(lambda v: json.dumps(v) if isinstance(v, (list, dict)) else v)  # lists compare as text
        tables.append(RunTable(flat, frame))
    if not tables:
        raise ConfigError(f"no run under {', '.join(paths)} has finished a round yet")
    return join_runs(tables)


def join_runs(tables: list[RunTable]) -> RunTable:
    """The runs of ``tables`` in one table, as :func:`load_runs` gives for all their paths together."""
    return RunTable(  # object columns: an int stays an int where other runs lack the key
        pd.concat([t.configs.astype(object) for t in tables]), pd.concat([t.metrics for t in tables], ignore_index=True)
    )
