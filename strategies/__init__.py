"""Server strategies, one module per algorithm.

``strategies.<name>`` defines ``STRATEGY``, a subclass of :class:`fedsim.strategy.FedsimStrategy` (or a
function of the config returning one), and ``Params``, the dataclass of its hyperparameters; its
config lives in ``configs/strategy/<name>.yaml`` and its client update in ``clients.<client>``.
"""

from __future__ import annotations

import importlib
from typing import Any

from omegaconf import OmegaConf

from fedsim.config import CONFIG_DIR, load_dict_config
from fedsim.strategy import FedsimStrategy, StrategyParams, typed_params


def load_strategy_class(name: str) -> Any:
    """``strategies.<name>.STRATEGY``: the strategy class, or a function of (cfg, param_keys, params) building one."""
    return importlib.import_module(f"strategies.{name}").STRATEGY


def strategy_from_config(cfg: Any, param_keys: list[str]) -> FedsimStrategy:
    """The strategy ``cfg.strategy`` names.

    With its typed and checked ``Params``; ``param_keys``: the model's trainable arrays.
    """
    module = importlib.import_module(f"strategies.{cfg.strategy.name}")
    return module.STRATEGY(cfg, param_keys, typed_params(module.Params, cfg.strategy))


def default_params(name: str, **overrides: Any) -> StrategyParams:
    """A strategy's typed hyperparameters with its defaults, for use from Python.

    The defaults live once, in ``configs/strategy/<name>.yaml`` (the paper's or the official code's,
    with their sources); ``overrides`` change any of them, and every key is checked as a run's are
    (a ConfigError line names a bad or unknown key).

    Parameters
    ----------
    name : str
        The strategy (``fedavg``, ``fedprox``, ..., the options of ``configs/strategy``).
    **overrides
        Keys of its ``Params`` with the values to use instead of the defaults.

    Returns
    -------
    StrategyParams
        ``strategies.<name>.Params``, e.g. ``default_params("fedprox", mu=0.1).mu == 0.1``.
    """
    node = OmegaConf.merge(load_dict_config(CONFIG_DIR / "strategy" / f"{name}.yaml"), overrides)
    return typed_params(importlib.import_module(f"strategies.{name}").Params, node)
