"""Server strategies, one module per algorithm.

``strategies.<name>`` defines ``STRATEGY``, a subclass of :class:`fedsim.strategy.FedsimStrategy`;
its config lives in ``configs/strategy/<name>.yaml`` and its client update in ``clients.<client>``.
"""

from __future__ import annotations

import importlib

from fedsim.strategy import FedsimStrategy


def load_strategy_class(name: str) -> type[FedsimStrategy]:
    module = importlib.import_module(f"strategies.{name}")
    return module.STRATEGY
