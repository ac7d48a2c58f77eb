"""``logger=mlflow``: an MLflow run per fedsim run (params, per-round metrics, artifacts)."""

from __future__ import annotations

import fcntl
import json
import logging
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import DictConfig, OmegaConf
from typing_extensions import override

from fedsim.results import RunDirectory
from fedsim.tracking import RunLogger, require, scalar_metrics

RUN_ID_FILE = "mlflow_run.json"  # in the run directory: a resumed run keeps logging to the same MLflow run
ARTIFACTS = ("config.yaml", "summary.json", "accuracy.png", "metrics.csv")
MAX_PARAM_CHARS = 6000  # MLflow's limit on a parameter value


def default_tracking_uri() -> str:
    """A SQLite store in ./mlruns (MLflow 3 no longer creates plain-folder stores)."""
    folder = Path("mlruns").resolve()
    folder.mkdir(exist_ok=True)
    return f"sqlite:///{folder / 'mlflow.db'}"


@contextmanager
def store_lock(uri: str):
    """Hold a file lock beside a SQLite store while opening it.

    Runs of a sweep started together would otherwise create its tables at the same time (and fail on
    'duplicate column').
    """
    if not uri.startswith("sqlite:///"):
        yield
        return
    with open(Path(uri.removeprefix("sqlite:///")).with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def flat_params(cfg: DictConfig) -> dict[str, str]:
    """The resolved config flattened to dotted keys, each value as MLflow stores it (a string)."""
    row = pd.json_normalize(OmegaConf.to_container(cfg, resolve=True), sep=".").iloc[0]
    return {key: str(value)[:MAX_PARAM_CHARS] for key, value in row.items()}


class MlflowLogger(RunLogger):
    """Params = the flattened config; metrics per round (step = round); plots, config and summary as artifacts."""

    def __init__(self, options: DictConfig, cfg: DictConfig, run_dir: RunDirectory, start_round: int) -> None:
        require("mlflow", "mlflow")
        from mlflow.tracking import MlflowClient

        if not cfg.get("verbose"):
            for name in ("mlflow", "alembic"):
                logging.getLogger(name).setLevel(logging.WARNING)
        uri = options.get("tracking_uri") or default_tracking_uri()
        self.run_dir = run_dir
        id_file = run_dir.path / RUN_ID_FILE
        with store_lock(uri):
            self.client = MlflowClient(tracking_uri=uri)
            if start_round and id_file.is_file():
                self.run_id = json.loads(id_file.read_text())["run_id"]
                self.client.update_run(self.run_id, status="RUNNING")
                return
            experiment_id = self.experiment_id(str(options.get("experiment") or "fedsim"), uri)
        run = self.client.create_run(
            experiment_id, run_name=run_dir.path.name, tags={"fedsim.run_dir": str(run_dir.path)}
        )
        self.run_id = run.info.run_id
        id_file.write_text(json.dumps({"run_id": self.run_id, "tracking_uri": uri}) + "\n")
        from mlflow.entities import Param

        params = [Param(k, v) for k, v in flat_params(cfg).items()]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=params[i : i + 100])

    def experiment_id(self, name: str, uri: str) -> str:
        """The MLflow experiment ``name``, created (artifacts beside a SQLite store) if new."""
        experiment = self.client.get_experiment_by_name(name)
        if experiment is not None:
            return experiment.experiment_id
        artifacts = Path(uri.removeprefix("sqlite:///")).parent / "artifacts" if uri.startswith("sqlite:///") else None
        return self.client.create_experiment(name, artifact_location=artifacts.as_uri() if artifacts else None)

    @override
    def log_round(self, record: dict[str, Any]) -> None:
        from mlflow.entities import Metric

        stamp, step = int(time.time() * 1000), int(record["round"])
        metrics = [Metric(key, value, stamp, step) for key, value in scalar_metrics(record).items()]
        self.client.log_batch(self.run_id, metrics=metrics)

    @override
    def finish(self) -> None:
        for name in ARTIFACTS:
            if (self.run_dir.path / name).is_file():
                self.client.log_artifact(self.run_id, str(self.run_dir.path / name))
        self.client.set_terminated(self.run_id)
