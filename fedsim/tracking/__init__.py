"""Experiment tracking: where a run's per-round metrics go besides ``metrics.jsonl``.

The ``logger`` config group picks any number of loggers (``logger=[csv,tensorboard,mlflow]``).
A logger is built when the run's server side is prepared (a missing optional package is a
one-line error before any training), gets every round's metrics record, and is finished after the
run's summary and plots are written.
"""

from __future__ import annotations

import importlib
from typing import Any, Protocol

from omegaconf import DictConfig

from fedsim.errors import ConfigError
from fedsim.results import RunDirectory

# logger name -> "module:class" (imported only when chosen, so optional packages stay optional)
LOGGERS = {
    "csv": "fedsim.tracking.csv_logger:CsvLogger",
    "tensorboard": "fedsim.tracking.tensorboard_logger:TensorBoardLogger",
    "mlflow": "fedsim.tracking.mlflow_logger:MlflowLogger",
}


class RunLogger(Protocol):
    """What the round loop calls; constructors take ``(options, cfg, run_dir, start_round)``."""

    def log_round(self, record: dict[str, Any]) -> None:
        """Record one round's metrics (``record['round']`` is the step)."""

    def finish(self) -> None:
        """Flush and close, after summary.json and the plots exist."""


def scalar_metrics(record: dict[str, Any]) -> dict[str, float]:
    """The numeric scalars of a metrics record (no lists, flags or the round number)."""
    return {
        k: float(v)
        for k, v in record.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "round"
    }


def require(module: str, logger: str) -> Any:
    """Import ``module`` for ``logger``, or a one-line error naming the pip command."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError(
            f"logger={logger} needs the '{module.split('.')[0]}' package: pip install \"fedsim[{logger}]\""
        ) from None


def loggers_from_config(cfg: DictConfig, run_dir: RunDirectory, start_round: int) -> list[RunLogger]:
    """One logger per entry of ``cfg.logger``; ``start_round`` > 0 when resuming."""
    chosen = cfg.get("logger") or {}
    loggers = []
    for name, options in chosen.items():
        if name not in LOGGERS:
            raise ConfigError(f"unknown logger '{name}': choose any of {', '.join(LOGGERS)}")
        module, cls = LOGGERS[name].split(":")
        loggers.append(getattr(importlib.import_module(module), cls)(options, cfg, run_dir, start_round))
    return loggers
