"""Turn a resolved config into a Flower ServerApp loop + ClientApp and run them."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import torch
from flwr.app import ArrayRecord
from flwr.serverapp import Grid
from omegaconf import DictConfig, OmegaConf

from fedsim import __version__
from fedsim.backends import run_inprocess, run_ray
from fedsim.checkpoint import latest_checkpoint
from fedsim.client_app import resolve_device
from fedsim.config import as_dict, load_dict_config, override_key, validate
from fedsim.data import dataset_from_config, make_partition
from fedsim.data.local import LocalData
from fedsim.data.partition import label_histograms
from fedsim.errors import ConfigError
from fedsim.evaluation import ServerEvaluator
from fedsim.models import model_from_config
from fedsim.plugins import client_app, runtime_of
from fedsim.privacy.audit import FinalModelAudit
from fedsim.privacy.defences import defence_from_config
from fedsim.privacy.defences.dp import PrivacyLedger
from fedsim.privacy.mods import AttackRoundMeans
from fedsim.progress import show
from fedsim.records import model_to_record
from fedsim.results import RunDirectory, new_run_dir
from fedsim.seeding import seed_torch
from fedsim.server_loop import RoundLoop, RoundObserver
from fedsim.tracking import RunLogger, loggers_from_config
from fedsim.validation import check_plugins
from fedsim.worker_pool import WorkerPool, run_pool
from strategies import strategy_from_config

log = logging.getLogger("fedsim")


class StderrHandler(logging.StreamHandler):
    """A stream handler writing to whatever ``sys.stderr`` is when a message is logged.

    A stream handler writing to whatever ``sys.stderr`` is when a message is logged (a plain StreamHandler
    keeps the stderr of the moment it was made: a later redirection would miss it or write to a closed
    stream).
    """

    @property
    def stream(self) -> TextIO:
        """The current ``sys.stderr``."""
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def quiet_logs(verbose: bool) -> None:
    """Keep Flower's and Ray's logging at warning level unless ``verbose``."""
    level = logging.DEBUG if verbose else logging.WARNING
    for name in ("flwr", "ray"):
        logging.getLogger(name).setLevel(level)
    if not logging.getLogger("fedsim").handlers:
        handler = StderrHandler()
        handler.setFormatter(logging.Formatter("fedsim %(levelname)s: %(message)s"))
        logging.getLogger("fedsim").addHandler(handler)
        logging.getLogger("fedsim").propagate = False


def prepare_run_dir(cfg: DictConfig) -> RunDirectory:
    """Create (or, with ``resume``, reopen) the run directory and store ``run_dir`` in ``cfg``."""
    if cfg.resume:
        path = Path(cfg.resume)
    elif cfg.run_dir:
        path = Path(cfg.run_dir)
    else:
        path = new_run_dir(cfg.runs_root, cfg.strategy.name)
    cfg.run_dir = str(path.resolve())
    return RunDirectory(path)


# Keys added after runs were saved, with the behaviour those runs had (their config.yaml lacks them).
ADDED_KEYS = {"augment": "none", "checkpoints_kept": 0}


def resume_config(run_dir: str | Path, overrides: DictConfig | None = None) -> DictConfig:
    """The saved config of ``run_dir``; only ``num_rounds`` may be raised when resuming."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise ConfigError(f"resume={run_dir}: no config.yaml there; pass the directory of an earlier fedsim run")
    cfg = load_dict_config(path)
    if overrides is not None:
        cfg.num_rounds = max(int(cfg.num_rounds), int(overrides.num_rounds))
        cfg.verbose = overrides.verbose
    cfg.resume = str(run_dir)
    for group in ("attack", "defence"):  # runs saved before these groups existed
        if group not in cfg:
            cfg[group] = {"name": "none"}
    if "logger" not in cfg:
        cfg.logger = {"csv": {"file": "metrics.csv"}}
    for key, then in ADDED_KEYS.items():
        if key not in cfg:
            cfg[key] = then
    return cfg


RESUME_MAY_CHANGE = ("num_rounds", "verbose", "resume", "device")


def resume_from_command_line(cfg: DictConfig, args: list[str]) -> DictConfig:
    """The config of ``resume=<dir>`` given on the command line.

    ``resume=<dir>`` on the command line: the saved config, with ``num_rounds`` raised only when the user
    typed it (the default must not lengthen a resumed run). Any other key typed with a value different from
    the saved run's (e.g. another strategy) is an error: a resumed run keeps its config.
    """
    typed = any(override_key(a) == "num_rounds" for a in args)
    resumed = resume_config(cfg.resume, cfg if typed else None)
    for arg in args:
        key = override_key(arg)
        if key in RESUME_MAY_CHANGE or key == "experiment":
            continue
        path = (
            f"{key}.name" if key in resumed and isinstance(resumed[key], DictConfig) and "name" in resumed[key] else key
        )
        given, saved = OmegaConf.select(cfg, path, default=None), OmegaConf.select(resumed, path, default=None)
        if given != saved:
            raise ConfigError(
                f"{arg}: the run in {cfg.resume} has {key}={saved}, and a resumed run keeps its config "
                "(only num_rounds may be raised); drop the override or start a new run"
            )
    resumed.verbose = cfg.verbose
    resumed.device = cfg.device
    try:
        validate(resumed)
        check_plugins(resumed)
    except ConfigError as err:
        raise ConfigError(
            f"resume={cfg.resume}: its config.yaml does not fit this fedsim {__version__} ({err})"
        ) from None
    return resumed


def partition_summary(cfg: DictConfig, labels: np.ndarray, num_classes: int, splits) -> dict:
    """The run's partition as ``partition.json`` records it: per client its sample counts and label histogram."""
    hist = label_histograms(labels, splits, num_classes)
    return {
        "partition": OmegaConf.to_container(cfg.partition),
        "num_clients": cfg.num_clients,
        "seed": cfg.seed,
        "clients": [
            {"client": cid, "num_labeled": len(s.labeled), "num_unlabeled": len(s.unlabeled), "label_histogram": h}
            for cid, (s, h) in enumerate(zip(splits, hist))
        ],
    }


@dataclass
class ServerJob:
    """The server side of a run, ready to drive any Grid (simulation or deployment)."""

    cfg: DictConfig
    run_dir: RunDirectory
    strategy: Any
    evaluator: ServerEvaluator
    arrays: ArrayRecord
    start_round: int
    ledger: PrivacyLedger | None
    loggers: list[RunLogger]
    observers: list[RoundObserver]

    def serve(self, grid: Grid) -> None:
        """Run the rounds over ``grid``, from the start round to ``num_rounds``."""
        loop = RoundLoop(
            grid, self.strategy, self.cfg, self.run_dir, self.evaluator, self.ledger, self.loggers, self.observers
        )
        loop.run_rounds(self.arrays, self.start_round)

    def banner(self, backend: str | None = None) -> str:
        """The lines printed at the start of a run: what runs where, and the strategy's description."""
        cfg = self.cfg
        return (
            f"fedsim: {cfg.strategy.name} on {cfg.dataset.name} ({cfg.model.name}), {cfg.num_clients} clients, "
            f"{cfg.clients_per_round}/round, {cfg.num_rounds} rounds, backend={backend or cfg.backend.name} -> "
            f"{self.run_dir.path}\n{self.strategy.describe()}"
        )

    def finish(self, seconds: float) -> Path:
        """summary.json, metrics.csv and the plot, once the rounds are done."""
        cfg, run_dir = self.cfg, self.run_dir
        history = run_dir.read_metrics()
        evaluated = [r for r in history if "test_accuracy" in r]
        summary = {
            "strategy": cfg.strategy.name,
            "rounds": cfg.num_rounds,
            "final_test_accuracy": evaluated[-1]["test_accuracy"] if evaluated else None,
            "best_test_accuracy": max((r["test_accuracy"] for r in evaluated), default=None),
            "failed_rounds": [r["round"] for r in history if r.get("failed")],
            "bytes_up": sum(r["bytes_up"] for r in history),
            "bytes_down": sum(r["bytes_down"] for r in history),
            "wall_time_s_this_session": seconds,
        }
        run_dir.write_json("summary.json", summary)
        run_dir.plot()
        for logger in self.loggers:
            logger.finish()
        show(f"done: final test accuracy {summary['final_test_accuracy']}; results in {run_dir.path}")
        return run_dir.path


def round_observers(cfg: DictConfig, dataset: Any, splits: list, run_dir: RunDirectory) -> list[RoundObserver]:
    """The privacy plug-ins' observers of a run's rounds.

    An attack's per-round leakage, or its audit of the final model.
    """
    if str(cfg.attack.name) == "none":
        return []
    if cfg.attack.get("final_model"):
        return [FinalModelAudit(cfg, dataset, splits, run_dir)]
    return [AttackRoundMeans(str(run_dir.path))]


def server_job(cfg: DictConfig, splits: list | None = None) -> ServerJob:
    """Prepare the run directory, the global model (or the checkpoint to resume), strategy and evaluator.

    ``splits``: the partition where this process has already made it (a simulation's client runtime).
    """
    quiet_logs(cfg.verbose)
    dataset = dataset_from_config(cfg)
    if splits is None:
        splits = make_partition(dataset.y_train.numpy(), cfg.num_clients, cfg.partition, cfg.seed)
    run_dir = prepare_run_dir(cfg)
    run_dir.write_config(cfg)
    run_dir.write_json(
        "partition.json",
        partition_summary(cfg, dataset.y_train.numpy(), dataset.num_classes, splits),
        compact=cfg.num_clients > 1000,
    )

    device = resolve_device(cfg.device)
    seed_torch(cfg.seed, "init")
    model = model_from_config(cfg, dataset.input_shape, dataset.num_classes).to(device)
    strategy = strategy_from_config(cfg, [n for n, _ in model.named_parameters()])
    defence = defence_from_config(cfg.defence)
    if hasattr(defence, "wrap"):  # server-side defences (central DP) take over aggregation
        strategy = defence.wrap(strategy)
    ledger = PrivacyLedger(defence) if hasattr(defence, "round_releases") else None

    arrays, start_round = model_to_record(model), 0
    if cfg.resume:
        ckpt = latest_checkpoint(run_dir.checkpoints)
        if ckpt is not None:
            arrays, start_round = ckpt.arrays, ckpt.server_round
            strategy.load_state_dict(ckpt.strategy_state)
            if ledger is not None:
                ledger.load_state_dict(ckpt.privacy_state)
            show(f"resuming {run_dir.path} after round {start_round}")

    test = LocalData(dataset.x_test, dataset.y_test, dataset)
    evaluator = ServerEvaluator(model, test, cfg.eval_batch_size, device)
    loggers = loggers_from_config(cfg, run_dir, start_round)
    observers = round_observers(cfg, dataset, splits, run_dir)
    return ServerJob(cfg, run_dir, strategy, evaluator, arrays, start_round, ledger, loggers, observers)


def run(cfg: DictConfig) -> Path:
    """Run the federation ``cfg`` describes (simulated); returns the run directory."""
    prepare_run_dir(cfg)  # the clients' config carries the run directory (their state lives under it)
    cfg_dict = as_dict(cfg, resolve=True)
    app = client_app(cfg_dict)
    # The pool engine's workers start first: they boot while the server prepares its side.
    pool = (
        WorkerPool(app, cfg.num_clients, cfg.backend, bool(cfg.verbose))
        if cfg.backend.name == "simulation" and cfg.backend.engine == "pool"
        else None
    )
    try:
        runtime = runtime_of(json.dumps(cfg_dict, sort_keys=True))  # this process's clients (the in-process backend)
        job = server_job(cfg, splits=runtime.splits)  # one partition for both sides
        t0 = time.time()
        show(job.banner())
        sizes = runtime.train_sizes()  # client id -> samples, from the partition
        # Float results depend on the number of threads a reduction is split over: set it from config.
        # On Ray the server's own work (evaluation, aggregation) runs while the client actors wait.
        torch.set_num_threads(int(cfg.backend.get("num_threads", 0)) or os.cpu_count() or 1)
        if pool is not None:
            run_pool(job.serve, pool, sizes)
        elif cfg.backend.name == "inprocess":
            run_inprocess(job.serve, app, sizes)
        else:
            run_ray(job.serve, app, cfg.num_clients, cfg.backend, bool(cfg.verbose))
    finally:
        if pool is not None:
            pool.shutdown()
    return job.finish(time.time() - t0)
