"""Compose the run config with Hydra and validate it; every problem becomes one ConfigError line."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from fedsim.errors import ConfigError
from fedsim.params import all_keys, suggest

CONFIG_DIR = Path(os.environ.get("FEDSIM_CONFIG_DIR", Path(__file__).resolve().parent.parent / "configs"))
GROUPS = ("strategy", "dataset", "model", "partition", "backend", "attack", "defence")


def as_dict(node: Any, resolve: bool = False) -> dict[str, Any]:
    """A config mapping (DictConfig) as plain nested dicts and lists."""
    data = OmegaConf.to_container(node, resolve=resolve)
    if not isinstance(data, dict):
        raise TypeError(f"expected a config mapping, got {type(data).__name__}")
    return {str(k): v for k, v in data.items()}


def load_dict_config(path: str | Path) -> DictConfig:
    """A YAML config file that holds a mapping (ConfigError naming the file otherwise)."""
    cfg = OmegaConf.load(path)
    if not isinstance(cfg, DictConfig):
        raise ConfigError(f"{path}: expected a mapping of config keys, found a list")
    return cfg


def group_options(group: str) -> list[str]:
    """The options of a config group (``configs/<group>/*.yaml``), sorted."""
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))


def explain_hydra_error(err: Exception, known_keys: Callable[[], list[str]] | None = None) -> str:
    """A Hydra/OmegaConf exception as one line naming the bad override and the fix.

    Turn a Hydra/OmegaConf exception into one line naming the bad override and the fix; ``known_keys`` lists
    the valid keys, for a suggestion when a key is unknown.
    """
    text = str(err)
    missing = re.search(r"Could not find '(\w+)/([^']+)'", text)
    if missing and (CONFIG_DIR / missing.group(1)).is_dir():
        group, option = missing.groups()
        return f"unknown {group} '{option}': choose one of {', '.join(group_options(group))}"
    key = re.search(r"Could not override '([^']+)'", text) or re.search(r"Key '([^']+)' is not in struct", text)
    if key:
        given = re.search(r"use \+(\S+)", text)
        shown = given.group(1) if given else key.group(1)
        hint = suggest(key.group(1), known_keys()) if known_keys else ""
        if not hint:
            hint = "; see `python -m fedsim run --cfg job` for the valid keys"
        return f"{shown}: no such key{hint}"
    parse = re.search(r"Error parsing override '([^']+)'", text)
    if parse:
        return f"cannot parse override '{parse.group(1)}': write overrides as key=value (e.g. num_rounds=10)"
    return text.strip().splitlines()[0]


def compose(overrides: list[str]) -> DictConfig:
    """The resolved config for ``overrides`` (Hydra override syntax), after the strategy's ``setting``."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"cannot parse override '{item}': write overrides as key=value (e.g. strategy=fedprox)")
    chosen = _hydra_compose([o for o in overrides if override_key(o) in ("strategy", "experiment")])
    experiments = [o.split("=", 1)[1] for o in overrides if override_key(o) == "experiment"]
    own = f"{STRATEGY_OPTIONS}.{chosen.strategy.name}."
    keys = {k for name in experiments for k in experiment_keys(name)}
    keys = {"strategy." + k.removeprefix(own) if k.startswith(own) else k for k in keys}
    setting = strategy_setting(list(chosen.strategy.get("setting") or []), list(overrides) + [f"{k}=" for k in keys])
    cfg = _hydra_compose(setting + list(overrides))
    cfg = apply_strategy_options(cfg, overrides)
    validate(cfg)
    return cfg


STRATEGY_OPTIONS = "strategy_options"


def apply_strategy_options(cfg: DictConfig, overrides: list[str]) -> DictConfig:
    """Merge a named experiment's per-strategy options into ``strategy``.

    Merge a named experiment's ``strategy_options.<name>`` into ``strategy`` when ``<name>`` is the chosen
    strategy, and drop the section. An experiment that compares several strategies puts the keys only one of
    them reads there (e.g. ``strategy_options: {fedfed: {distill_rounds: 15}}``); a ``strategy.<key>`` given
    on the command line (or as a sweep value) wins.
    """
    if STRATEGY_OPTIONS not in cfg:
        return cfg
    data = as_dict(cfg)
    options = data.pop(STRATEGY_OPTIONS) or {}
    unknown = sorted(set(options) - set(group_options("strategy")))
    if unknown:
        raise ConfigError(
            f"{STRATEGY_OPTIONS}.{unknown[0]}: no such strategy; choose among {', '.join(group_options('strategy'))}"
        )
    given = {override_key(o) for o in overrides}
    for key, value in (options.get(cfg.strategy.name) or {}).items():
        if f"strategy.{key}" not in given:
            data["strategy"][key] = value
    return OmegaConf.create(data)


def compose_attack(overrides: list[str]) -> DictConfig:
    """The config of ``python -m fedsim attack`` (configs/attack_eval.yaml) for ``overrides``."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"cannot parse override '{item}': write overrides as key=value (e.g. attack=dlg)")
    cfg = _hydra_compose(list(overrides), "attack_eval")
    for key in ("num_images", "batch_size", "local_epochs"):
        if not isinstance(cfg[key], int) or cfg[key] < 1:
            raise ConfigError(f"{key}={cfg[key]!r} is invalid: expected an integer >= 1")
    for group in ("dataset", "model", "attack", "defence"):
        if cfg[group].name not in group_options(group):
            raise ConfigError(
                f"{group}.name={cfg[group].name!r} is invalid: choose one of {', '.join(group_options(group))}"
            )
    return cfg


def _hydra_compose(overrides: list[str], name: str = "config") -> DictConfig:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
            return hydra_compose(name, overrides=overrides)
    except Exception as err:  # Hydra raises several unrelated exception types for bad input
        choices = [o for o in overrides if override_key(o) in (*GROUPS, "experiment")]
        raise ConfigError(explain_hydra_error(err, lambda: all_keys(_hydra_compose(choices, name)))) from None


def override_key(item: str) -> str:
    """The key an override sets (``+a.b=1`` -> ``a.b``)."""
    return item.split("=", 1)[0].lstrip("+~")


def experiment_keys(name: str) -> set[str]:
    """The config keys a named experiment (configs/experiment/NAME.yaml) sets, and the groups it picks.

    Those of the experiments it builds on (a plain name in its defaults list) included.
    """
    path = CONFIG_DIR / "experiment" / f"{name}.yaml"
    if not path.is_file():
        return set()
    data = as_dict(load_dict_config(path))
    defaults = data.pop("defaults", [])
    keys = {str(next(iter(d))).split("/")[-1] for d in defaults if isinstance(d, dict)}
    for base in defaults:
        if isinstance(base, str) and base != "_self_":
            keys |= experiment_keys(base)
    data.pop("hydra", None)

    def walk(tree: dict, prefix: str) -> None:
        for key, value in tree.items():
            if isinstance(value, dict):
                walk(value, f"{prefix}{key}.")
            else:
                keys.add(prefix + str(key))

    walk(data, "")
    return keys


def strategy_setting(setting: list[str], overrides: list[str]) -> list[str]:
    """The overrides of a strategy's ``setting`` that the user's own choices leave standing.

    The overrides of a strategy's ``setting`` (the experimental setting it is meant for, e.g. FedSA's teacher
    parties) that the user's own choices leave standing: a key the user sets (on the command line or in a
    named experiment), or a choice of the group a setting key belongs to, wins.
    """
    user = {override_key(o) for o in overrides}
    groups = user - {"strategy"}  # choosing the strategy is what brings its setting
    return [s for s in setting if override_key(s) not in user and override_key(s).split(".")[0] not in groups]


def _get(cfg: DictConfig, dotted: str) -> Any:
    return OmegaConf.select(cfg, dotted, default=None)


def validate(cfg: DictConfig) -> None:
    """Check the core keys and groups against their schemas.

    Check the core keys and groups against their schemas (``fedsim.schema``): types, ranges, finite numbers,
    no unknown keys. Plug-in groups (strategy, attack, defence) are checked by ``fedsim.validation``, which
    knows them.
    """
    from fedsim import schema
    from fedsim.params import check

    for group in GROUPS:
        name = _get(cfg, f"{group}.name")
        if name not in group_options(group):
            raise ConfigError(f"{group}.name={name!r} is invalid: choose one of {', '.join(group_options(group))}")
    check("", schema.Run, cfg, ignore=(*GROUPS, "optimizer", "deploy", "logger"))
    check("optimizer", schema.Optimizer, cfg.optimizer)
    check("deploy", schema.Deploy, cfg.deploy)
    check("model", schema.MODELS[cfg.model.name], cfg.model)
    check("dataset", schema.Dataset, cfg.dataset)
    check("partition", schema.PARTITIONS[cfg.partition.name], cfg.partition)
    check("backend", schema.BACKENDS[cfg.backend.name], cfg.backend)
    for name, node in (cfg.get("logger") or {}).items():
        if name not in schema.LOGGERS:
            raise ConfigError(f"logger.{name}: no such logger; choose among {', '.join(schema.LOGGERS)}")
        check(f"logger.{name}", schema.LOGGERS[name], node)
