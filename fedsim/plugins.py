"""The plug-ins of a run, wired into the core from above.

The client modules under ``clients/``, the defences and the attack observers of :mod:`fedsim.privacy`. The
engine and the deployment apps build client runtimes and ClientApps here; the core (:mod:`fedsim.client_app`)
takes them as :class:`~fedsim.client_app.ClientPlugins` and imports none of them.
"""

from __future__ import annotations

from typing import Any

from flwr.clientapp import ClientApp

from clients import load_client_class
from fedsim.client_app import ClientPlugins, ClientRuntime, make_client_app, shared_runtime
from fedsim.privacy.defences import defence_from_config
from fedsim.privacy.mods import client_mods

PLUGINS = ClientPlugins(load_client_class, defence_from_config, client_mods)


def client_app(cfg: dict[str, Any]) -> ClientApp:
    """The ClientApp of the resolved run config ``cfg``."""
    return make_client_app(cfg, PLUGINS)


def client_runtime(cfg: dict[str, Any]) -> ClientRuntime:
    """A new client runtime of ``cfg`` (tests, tools); runs share one per process through :func:`runtime_of`."""
    return ClientRuntime(cfg, PLUGINS)


def runtime_of(cfg_json: str) -> ClientRuntime:
    """The process's shared runtime of the run ``cfg_json`` describes."""
    return shared_runtime(cfg_json, PLUGINS)
