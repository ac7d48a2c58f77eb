"""Server strategies, one module per algorithm.

``strategies.<name>`` defines ``STRATEGY``, a subclass of :class:`fedsim.strategy.FedsimStrategy` (or a
function of the config returning one), and ``Params``, the dataclass of its hyperparameters; its
config lives in ``configs/strategy/<name>.yaml`` and its client update in ``clients.<client>``.
"""

from __future__ import annotations

import importlib
from typing import Any

from fedsim.strategy import FedsimStrategy, typed_params


def load_strategy_class(name: str) -> Any:
    """``strategies.<name>.STRATEGY``: the strategy class, or a function of (cfg, param_keys, params) building one."""
    return importlib.import_module(f"strategies.{name}").STRATEGY


def strategy_from_config(cfg: Any, param_keys: list[str]) -> FedsimStrategy:
    """The strategy ``cfg.strategy`` names.

    With its typed and checked ``Params``; ``param_keys``: the model's trainable arrays.
    """
    module = importlib.import_module(f"strategies.{cfg.strategy.name}")
    return module.STRATEGY(cfg, param_keys, typed_params(module.Params, cfg.strategy))
