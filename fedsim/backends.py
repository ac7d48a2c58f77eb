"""Where the ServerApp's loop and the ClientApps run.

- ``simulation`` with ``backend.engine=pool`` (the default): long-lived Ray workers, each running a
  batch of clients per round (:mod:`fedsim.worker_pool`, on the :class:`SimulatedGrid` below).
- ``simulation`` with ``backend.engine=flower``: Flower's simulation engine with its Ray backend. Flower 1.41 marks
the public
  ``flwr.simulation.run_simulation`` wrapper deprecated in favour of ``flwr run``; Flower's own
  simulation runtime (``flwr-simulation``) launches the engine through
  ``flwr.simulation.run_simulation._run_simulation``, and so does fedsim, which keeps runs
  in-process (no SuperLink daemon) and free of deprecation warnings. Its message store is
  :class:`~fedsim.link_state.NodeIndexedLinkState`, so the engine's cost per message does not grow
  with the number of registered clients.
- ``inprocess``: an in-process :class:`~flwr.serverapp.Grid` that calls the ClientApp directly,
  one message after another: no Ray, fast start-up, for tests, debugging and single-core runs.

All hand the server's main function a Grid, as a deployed SuperLink does.
"""

from __future__ import annotations

import logging
import os
from abc import abstractmethod
from collections.abc import Callable, Iterable
from itertools import count
from typing import Any

from flwr.app import Context, Message
from flwr.clientapp import ClientApp
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.serverapp import Grid, ServerApp
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity
from typing_extensions import override

from fedsim.client_host import ClientHost
from fedsim.reduction import PartialSum

ServerMain = Callable[[Grid], None]


class SimulatedGrid(Grid):
    """A Grid over simulated nodes that knows each client's sample count.

    A Grid over simulated nodes 1..N (node id = client id + 1) that knows each client's sample count from the
    partition (``sizes``), so discovery needs no message per registered client, and that can return summed
    train replies (:meth:`send_and_reduce`).
    """

    def __init__(self, sizes: dict[int, int]) -> None:
        self.sizes = sizes
        self._ids = count()
        self._pending: dict[str, Message] = {}

    @override
    def set_run(self, run: Run) -> None:  # a simulated grid serves exactly one run
        self._run = run

    @property
    @override
    def run(self) -> Run:
        return self._run

    @override
    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None) -> Message:
        return Message(content, dst_node_id=dst_node_id, message_type=message_type, group_id=group_id, ttl=ttl)

    @override
    def get_node_ids(self) -> Iterable[int]:
        return range(1, len(self.sizes) + 1)

    def directory(self) -> tuple[dict[int, int], dict[int, int]]:
        """(client id -> node id, client id -> sample count), as the handshake would learn them."""
        return {cid: cid + 1 for cid in self.sizes}, dict(self.sizes)

    @override
    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for msg in messages:
            key = str(next(self._ids))
            self._pending[key] = msg
            ids.append(key)
        return ids

    @override
    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self.send_and_receive([self._pending.pop(key) for key in message_ids if key in self._pending])

    @abstractmethod
    def send_and_reduce(
        self, messages: list[Message], param_keys: list[str], timeout: float | None = None
    ) -> PartialSum:
        """Deliver train ``messages`` and return their replies summed.

        Deliver train ``messages`` that all carry the same global 'arrays' and return their replies summed
        (:class:`~fedsim.reduction.PartialSum`).
        """


class InProcessGrid(SimulatedGrid):
    """A Grid whose nodes are ClientApp calls in this process, one message after another."""

    def __init__(self, client_app: ClientApp, sizes: dict[int, int]) -> None:
        super().__init__(sizes)
        self.host = ClientHost(client_app, len(sizes))

    @override
    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        return self.host.deliver_all(list(messages))

    @override
    def send_and_reduce(
        self, messages: list[Message], param_keys: list[str], timeout: float | None = None
    ) -> PartialSum:
        return self.host.reduce(messages, param_keys, self.sizes)


def run_inprocess(main: ServerMain, client_app: ClientApp, sizes: dict[int, int]) -> None:
    """Run ``main`` with every client in this process (no Ray): the in-process backend."""
    # Messages take their run and source ids from the process's task identity, which Flower's
    # runtimes set for the ServerApp; here this process is that runtime.
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 0, SUPERLINK_NODE_ID
    main(InProcessGrid(client_app, sizes))


def run_ray(main: ServerMain, client_app: ClientApp, num_clients: int, backend: Any, verbose: bool) -> None:
    """Run on Flower's simulation engine (Ray), ``backend.num_cpus``/``num_gpus`` per client."""
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    from flwr.simulation.run_simulation import _run_simulation
    from flwr.supercore.telemetry import EventType

    from fedsim.link_state import node_indexed_link_state  # Flower's engine only: its link state costs 0.7 s to import

    server_app = ServerApp()

    @server_app.main()
    def _main(grid: Grid, context: Context) -> None:
        main(grid)

    init_args: dict[str, Any] = {
        "include_dashboard": False,
        "logging_level": logging.INFO if verbose else logging.ERROR,
        "log_to_driver": verbose,
    }
    init_args.update(dict(backend.ray_init_args or {}))
    if int(backend.get("num_threads", 0)) and "address" not in init_args:  # a run limited to N cores (e.g. in a sweep)
        init_args.setdefault("num_cpus", int(backend.num_threads))
    with node_indexed_link_state():
        _run_simulation(
            num_supernodes=num_clients,
            exit_event=EventType.PYTHON_API_RUN_SIMULATION_LEAVE,
            client_app=client_app,
            server_app=server_app,
            backend_name="ray",
            backend_config={
                "client_resources": {"num_cpus": float(backend.num_cpus), "num_gpus": float(backend.num_gpus)},
                "init_args": init_args,
            },
            verbose_logging=verbose,
        )
