"""The whole run config checked before any work starts.

The core schemas (``fedsim.config``) and the plug-ins' own (the chosen strategy's ``Params``, the attack's and
the defence's classes).

This module sits above the plug-ins (like the engine), so the core never imports them; the CLI,
deployment and sweeps compose through :func:`compose_run`.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path

from omegaconf import DictConfig

from fedsim.config import compose, compose_attack
from fedsim.errors import ConfigError
from fedsim.params import check
from fedsim.privacy.attacks import SCHEDULE_KEYS, attack_schemas
from fedsim.privacy.defences import DEFENCES

ATTACK_INTERNAL = ("seed", "idlg")  # set by the registry, not by the config


def strategy_params(name: str) -> type:
    """The ``Params`` schema of ``strategies.<name>``."""
    module = importlib.import_module(f"strategies.{name}")
    params = getattr(module, "Params", None)
    if params is None:
        raise ConfigError(f"strategies/{name}.py defines no Params schema for configs/strategy/{name}.yaml")
    return params


def check_with_run(schema: type, cfg: DictConfig) -> None:
    """A schema's ``validate_run(cfg)``, if it has one: what it needs of the rest of the run (e.g. a model)."""
    hook = getattr(schema, "validate_run", None)
    message = hook(cfg) if callable(hook) else None
    if message:
        raise ConfigError(message)


def check_plugins(cfg: DictConfig) -> None:
    """Check ``strategy``, ``attack`` and ``defence`` against their schemas."""
    params = strategy_params(str(cfg.strategy.name))
    check("strategy", params, cfg.strategy)
    check_with_run(params, cfg)
    check_privacy(cfg)


def check_privacy(cfg: DictConfig) -> None:
    """Check ``attack`` and ``defence`` against their schemas."""
    if cfg.attack.name != "none":
        schedule, method = attack_schemas(str(cfg.attack.name))
        check("attack", schedule, {k: v for k, v in cfg.attack.items() if k in SCHEDULE_KEYS})
        check_with_run(schedule, cfg)
        own = {k: v for k, v in cfg.attack.items() if k not in SCHEDULE_KEYS}
        check("attack", method, own, ignore=ATTACK_INTERNAL)
        check_with_run(method, cfg)
    if cfg.defence.name != "none":
        check("defence", DEFENCES[str(cfg.defence.name)], cfg.defence, ignore=("name",))
        check_with_run(DEFENCES[str(cfg.defence.name)], cfg)


def writable_ancestor_problem(path: Path) -> str | None:
    """Why ``path`` cannot be created or written (None if it can)."""
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        return f"{probe} is a file, not a folder"
    if not os.access(probe, os.W_OK | os.X_OK):
        return f"{probe} is not writable"
    return None


def check_environment(cfg: DictConfig) -> None:
    """What the config asks of this machine: the device exists, the run directory can be written."""
    device = str(cfg.device)
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise ConfigError(
                f"device={device}: no CUDA GPU is visible here (torch.cuda.is_available() is False); "
                "use device=auto or device=cpu"
            )
        index, count = int(device.partition(":")[2] or 0), torch.cuda.device_count()
        if index >= count:
            raise ConfigError(f"device={device}: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}")
    key, target = ("run_dir", Path(cfg.run_dir)) if cfg.run_dir else ("runs_root", Path(cfg.runs_root))
    problem = writable_ancestor_problem(target.resolve())
    if problem:
        raise ConfigError(f"{key}={target}: cannot write the run there ({problem}); choose another {key}")


def compose_run(overrides: list[str]) -> DictConfig:
    """The resolved run config for ``overrides``, every key checked (one ConfigError line if not)."""
    cfg = compose(overrides)
    check_plugins(cfg)
    check_environment(cfg)
    return cfg


def compose_attack_run(overrides: list[str]) -> DictConfig:
    """The config of ``python -m fedsim attack`` for ``overrides``, every key checked."""
    from fedsim import schema

    cfg = compose_attack(overrides)
    check("model", schema.MODELS[cfg.model.name], cfg.model)
    check("dataset", schema.Dataset, cfg.dataset)
    check_privacy(cfg)
    return cfg
