"""Client-side updates, one module per algorithm.

``clients.<name>`` defines ``CLIENT``, a subclass of :class:`clients.base.Client`, which turns the
records a strategy sent into the records it replies with.
"""

from __future__ import annotations

import importlib

from clients.base import Client


def load_client_class(name: str) -> type[Client]:
    module = importlib.import_module(f"clients.{name}")
    return module.CLIENT
