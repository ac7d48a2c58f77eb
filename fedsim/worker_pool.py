"""The ``pool`` simulation engine: long-lived Ray workers, each running many clients per task.

Flower's simulation engine makes one actor call per message, and every message carries its own
copy of the global model; with thousands of small clients per round that overhead is most of
the run. Here the server's Grid is a :class:`WorkerPoolGrid`:

- one Ray actor per ``backend.num_cpus`` cores (``backend.num_gpus`` of a GPU each), started once,
  each holding the ClientApp and so one model, its buffers and the shared dataset (clients are
  index views into it) for the whole run;
- a round's messages are split into one batch per worker and each batch goes as one task: the
  global model, which all messages share, is serialized once per worker and round;
- for strategies whose aggregate is FedAvg's weighted mean, each worker sums its replies
  (:mod:`fedsim.reduction`) and returns one sum; other strategies, attacks and evaluations get
  every reply, as from any Grid.

The strategies and client code are unchanged: they see Flower Messages through a Grid, as in a
deployment.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterable
from typing import Any

from flwr.app import ConfigRecord, Error, Message, MessageType, RecordDict
from flwr.clientapp import ClientApp
from typing_extensions import override

from fedsim.backends import SimulatedGrid
from fedsim.client_host import ClientHost, client_of_node
from fedsim.errors import FedsimError
from fedsim.protocols.messages import CONFIG
from fedsim.reduction import PartialSum

log = logging.getLogger("fedsim")


class ClientWorker:
    """A Ray actor hosting clients.

    Its ClientApp (built on first use) and the Contexts of the clients it ran.
    """

    def __init__(self, client_app: ClientApp, num_clients: int, threads: int) -> None:
        import torch

        torch.set_num_threads(threads)
        from flwr.supercore.task_identity import TaskIdentity

        TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 0, 0
        self.host = ClientHost(client_app, num_clients)

    def prepare(self) -> None:
        """Build what the clients share before the first round.

        Build what the clients share (dataset, partition, model) before the first round: the handshake query
        of client 0 builds them.
        """
        query = Message(RecordDict({CONFIG: ConfigRecord({})}), dst_node_id=1, message_type=MessageType.QUERY)
        reply = self.host.deliver(query)
        if reply.has_error():
            raise FedsimError(f"a simulation worker could not start its clients: {reply.error.reason}")

    def deliver_all(self, messages: list[Message]) -> list[Message]:
        """The replies of this worker's clients to ``messages``."""
        return self.host.deliver_all(messages)

    def reduce(self, messages: list[Message], param_keys: list[str], held: dict[int, int]) -> PartialSum:
        """The sum of this worker's clients' train replies (:mod:`fedsim.reduction`)."""
        return self.host.reduce(messages, param_keys, held)


def batches(messages: list[Message], workers: int) -> list[list[Message]]:
    """``messages`` in at most ``workers`` contiguous batches of near-equal size."""
    size = math.ceil(len(messages) / max(workers, 1)) or 1
    return [messages[i : i + size] for i in range(0, len(messages), size)]


class WorkerPool:
    """Ray and the client workers of a run.

    Started as soon as the run's config is known: the workers boot and build their runtimes
    (:meth:`ClientWorker.prepare`) while the server prepares its own side.
    """

    def __init__(self, client_app: ClientApp, num_clients: int, backend: Any, verbose: bool) -> None:
        os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
        os.environ.setdefault("RAY_DEDUP_LOGS", "0")
        import ray

        init_args: dict[str, Any] = {
            "include_dashboard": False,
            "log_to_driver": verbose,
            "logging_level": logging.INFO if verbose else logging.ERROR,
        }
        init_args.update(dict(backend.ray_init_args or {}))
        if int(backend.get("num_threads", 0)) and "address" not in init_args:
            init_args.setdefault("num_cpus", int(backend.num_threads))
        ray.init(**init_args)
        self.ray = ray
        try:
            cpus = float(ray.available_resources().get("CPU", 1.0))
            per_worker = float(backend.num_cpus)
            count = int(cpus // per_worker)
            if backend.num_gpus:
                count = min(count, int(float(ray.available_resources().get("GPU", 0.0)) // float(backend.num_gpus)))
            if count < 1:
                raise FedsimError(
                    f"the Ray cluster has {cpus:g} CPUs (GPUs: {ray.available_resources().get('GPU', 0):g}) for "
                    f"workers of backend.num_cpus={per_worker:g}, backend.num_gpus={backend.num_gpus:g}: lower them"
                )
            actor = ray.remote(ClientWorker).options(
                num_cpus=per_worker, num_gpus=float(backend.num_gpus), max_restarts=3
            )
            self.workers: list[Any] = [  # Ray actor handles (typed by Ray as the class itself)
                actor.remote(client_app, num_clients, max(1, int(per_worker))) for _ in range(count)
            ]
            self.ready = [w.prepare.remote() for w in self.workers]
        except BaseException:
            ray.shutdown()
            raise

    def shutdown(self) -> None:
        """Stop the workers and Ray."""
        self.ray.shutdown()


class WorkerPoolGrid(SimulatedGrid):
    """A Grid whose nodes are hosted by a :class:`WorkerPool` (see the module docstring)."""

    def __init__(self, pool: WorkerPool, sizes: dict[int, int]) -> None:
        super().__init__(sizes)
        pool.ray.get(pool.ready)
        self.workers = pool.workers
        self._ray = pool.ray

    def _gather(self, tasks: list[Any], timeout: float | None) -> list[Any]:
        """Results of ``tasks`` in order; an exception stands for a task that failed or timed out."""
        ray = self._ray
        done, _ = ray.wait(tasks, num_returns=len(tasks), timeout=timeout)
        finished = set(done)
        results: list[Any] = []
        for task in tasks:
            if task not in finished:
                ray.cancel(task, force=True)
                results.append(TimeoutError(f"no reply within round_timeout={timeout}s"))
                continue
            try:
                results.append(ray.get(task))
            except Exception as err:  # a worker that died (it restarts for the next round)
                results.append(err)
        return results

    @override
    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        groups = batches(list(messages), len(self.workers))
        results = self._gather([w.deliver_all.remote(g) for w, g in zip(self.workers, groups)], timeout)
        replies: list[Message] = []
        for group, result in zip(groups, results):
            if isinstance(result, Exception):
                if not isinstance(result, TimeoutError):  # lost replies time out as in a deployment
                    replies += [Message(Error(code=0, reason=f"worker failed: {result}"), reply_to=m) for m in group]
                continue
            replies += result
        return replies

    @override
    def send_and_reduce(
        self, messages: list[Message], param_keys: list[str], timeout: float | None = None
    ) -> PartialSum:
        groups = batches(messages, len(self.workers))
        held = [
            {client_of_node(m.metadata.dst_node_id): self.sizes[client_of_node(m.metadata.dst_node_id)] for m in g}
            for g in groups
        ]
        results = self._gather(
            [w.reduce.remote(g, param_keys, h) for w, g, h in zip(self.workers, groups, held)], timeout
        )
        total = PartialSum()
        for group, result in zip(groups, results):
            if isinstance(result, Exception):
                total.dropped += [
                    {"client": client_of_node(m.metadata.dst_node_id), "reason": str(result)} for m in group
                ]
                continue
            total.merge(result)
        return total


def run_pool(main: Any, pool: WorkerPool, sizes: dict[int, int]) -> None:
    """Run the server's main function on a :class:`WorkerPoolGrid` over ``pool``."""
    from flwr.common.constant import SUPERLINK_NODE_ID
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 0, SUPERLINK_NODE_ID
    main(WorkerPoolGrid(pool, sizes))
