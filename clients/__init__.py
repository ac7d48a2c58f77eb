"""Client-side updates, one module per algorithm.

``clients.<name>`` defines ``CLIENT``, a subclass of :class:`clients.base.Client`, which turns the
records a strategy sent into the records it replies with (or ``client_class(cfg)`` returning it,
where the class depends on the run).
"""

from __future__ import annotations

import importlib
from typing import Any

from clients.base import Client


def load_client_class(name: str, cfg: Any = None) -> type[Client]:
    """The client update class of a run's strategy.

    ``clients.<name>.CLIENT``; with the run's ``cfg``, ``clients.<name>.client_class(cfg)`` where the module
    defines it (a client class that depends on the run, as FedFed's on its base).
    """
    module = importlib.import_module(f"clients.{name}")
    for_run = getattr(module, "client_class", None)
    return for_run(cfg) if for_run is not None and cfg is not None else module.CLIENT
