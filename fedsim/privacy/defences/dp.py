"""Differential privacy: local DP on updates, per-example DP-SGD (Opacus), central DP, accounting.

Every mechanism is Gaussian with noise std ``noise_multiplier * clip`` on an L2-clipped quantity.
Epsilon is accounted with Opacus' RDP analysis and reported per round in metrics.jsonl
(``dp_epsilon`` at ``delta``; the worst client for local mechanisms):

- local_dp: client-level; each participation of a client is one release (no sampling
  amplification: the server sees every update).
- dp_sgd: record-level; each local step samples batch_size / n of the client's records (the RDP
  bound assumes Poisson sampling; fedsim's shuffled batches are the usual approximation).
- central_dp: client-level for the released model; each round samples K of N clients (the same
  Poisson approximation); clients are averaged with equal weights so one client's influence is
  bounded by clip / K.

Noise is drawn from seeded generators (run seed, round, client), so runs repeat; Flower's own DP
wrappers and LocalDpMod draw unseeded noise and skip a round when any client errs, which is why
fedsim applies the same clip-and-noise steps itself, with Flower's clipping helper.
"""

from __future__ import annotations

import logging
import math
import warnings
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from typing_extensions import override

from fedsim.errors import ConfigError, RoundFailedError
from fedsim.numerics import tensor_sum
from fedsim.params import spec
from fedsim.privacy.defences.update import Tensors, UpdateDefence, clip, float_update, with_update
from fedsim.records import arrays_of
from fedsim.reduction import PartialSum
from fedsim.results import RunDirectory
from fedsim.seeding import torch_generator
from fedsim.strategy import FedsimStrategy, update_dissimilarity

ORDERS = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64))


def epsilon(releases: list[tuple[float, int]], noise_multiplier: float, delta: float) -> float:
    """Epsilon at ``delta`` of composed Gaussian releases [(sample rate, steps), ...]."""
    if not releases:
        return 0.0
    from opacus.accountants.analysis.rdp import (  # opacus costs 2 s to import: only where DP is on
        compute_rdp,
        get_privacy_spent,
    )

    rdp = sum(compute_rdp(q=q, noise_multiplier=noise_multiplier, steps=steps, orders=ORDERS) for q, steps in releases)
    return float(get_privacy_spent(orders=ORDERS, rdp=np.atleast_1d(rdp), delta=delta)[0])


@dataclass
class GaussianMechanism(ABC):
    """Clipping to ``clip`` and Gaussian noise of std ``noise_multiplier * clip``, with its RDP accountant."""

    clip: float = spec("clipping norm", gt=0, default=1.0)
    noise_multiplier: float = spec("noise std / clipping norm", ge=0, default=1.0)
    delta: float = spec("delta of the reported (epsilon, delta)", gt=0, lt=1, default=1e-5)

    def __post_init__(self) -> None:
        if self.clip <= 0 or self.noise_multiplier < 0 or not 0 < self.delta < 1:
            raise ConfigError(
                f"defence clip={self.clip}, noise_multiplier={self.noise_multiplier}, delta={self.delta} are invalid: "
                "expected clip > 0, noise_multiplier >= 0, 0 < delta < 1"
            )

    def noised(self, update: Tensors, generator: torch.Generator, divisor: int = 1) -> Tensors:
        """``update`` plus Gaussian noise of std ``noise_multiplier * clip / divisor`` per entry."""
        std = self.noise_multiplier * self.clip / divisor
        return {k: v + std * torch.randn(v.shape, generator=generator) for k, v in update.items()}

    def epsilon(self, releases: list[tuple[float, int]]) -> float:
        """Epsilon at ``delta`` after ``releases`` (sampling rate, steps), by the RDP accountant."""
        return epsilon(releases, self.noise_multiplier, self.delta) if self.noise_multiplier > 0 else math.inf

    @abstractmethod
    def round_releases(self, sampled: list[int], sizes: dict[int, int], cfg: Any) -> list[tuple[str, float, int]]:
        """What a round releases: (what is accounted, sampling rate, noised steps) per release."""


@dataclass
class LocalDP(GaussianMechanism, UpdateDefence):
    """Clip the update to ``clip`` and add N(0, (noise_multiplier * clip)^2) per entry, on the client."""

    @override
    def transform_update(self, update: Tensors, generator: torch.Generator) -> Tensors:
        return self.noised(clip(update, self.clip), generator)

    @override
    def round_releases(self, sampled: list[int], sizes: dict[int, int], cfg: Any) -> list[tuple[str, float, int]]:
        return [(str(c), 1.0, 1) for c in sampled]


@dataclass
class DPSGD(GaussianMechanism):
    """Per-example clipping and Gaussian noise on every local step (Abadi et al. 2016, via Opacus)."""

    @staticmethod
    def validate_run(cfg: Any) -> str | None:
        """Opacus computes per-example gradients, which BatchNorm mixes across the batch."""
        if cfg.model.name == "resnet18":
            return (
                "defence=dp_sgd cannot wrap model=resnet18 (BatchNorm mixes examples): use model=cnn, mlp or vit_tiny"
            )
        return None

    @contextmanager
    def training(
        self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, batch_size: int
    ) -> Iterator[Any]:  # Opacus's DPOptimizer (untyped): pre_step, step, zero_grad
        """The local optimizer made DP-SGD (Opacus: per-example clipping, noise every step) for the block."""
        from opacus import GradSampleModule
        from opacus.optimizers import DPOptimizer

        in_place = [m for m in model.modules() if getattr(m, "inplace", False)]
        for module in in_place:  # per-sample gradient hooks cannot see through in-place activations
            cast(Any, module).inplace = False
        try:
            sampled = GradSampleModule(model)
        except Exception as err:  # Opacus names the unsupported layer
            raise ConfigError(f"defence=dp_sgd cannot wrap this model: {err}; use model=cnn or model=mlp") from err
        try:
            with warnings.catch_warnings():
                # Opacus' per-sample hooks on the first layer, whose input (the images) needs no gradient
                warnings.filterwarnings("ignore", message="Full backward hook is firing")
                yield DPOptimizer(
                    optimizer,
                    noise_multiplier=self.noise_multiplier,
                    max_grad_norm=self.clip,
                    expected_batch_size=batch_size,
                )
        finally:
            sampled.remove_hooks()
            sampled.del_grad_sample()
            for module in in_place:
                cast(Any, module).inplace = True

    @override
    def round_releases(self, sampled: list[int], sizes: dict[int, int], cfg: Any) -> list[tuple[str, float, int]]:
        b, epochs = int(cfg.batch_size), int(cfg.local_epochs)
        return [
            (str(c), min(1.0, b / max(sizes.get(c, 1), 1)), epochs * math.ceil(sizes.get(c, 1) / b)) for c in sampled
        ]


@dataclass
class CentralDP(GaussianMechanism):
    """Server-side: clip each client's update, average with equal weights, noise the average."""

    def aggregate(
        self, global_arrays: ArrayRecord, replies: list[ArrayRecord], generator: torch.Generator
    ) -> ArrayRecord:
        """Clip each returned update, average them with equal weights and noise the average."""
        updates = [clip(float_update(global_arrays, r), self.clip) for r in replies]
        mean = {k: tensor_sum(u[k] for u in updates) / len(updates) for k in updates[0]}
        return with_update(global_arrays, replies[0], self.noised(mean, generator, divisor=len(updates)))

    @override
    def round_releases(self, sampled: list[int], sizes: dict[int, int], cfg: Any) -> list[tuple[str, float, int]]:
        return [("server", min(1.0, len(sampled) / max(len(sizes), 1)), 1)]

    def wrap(self, strategy: Any) -> CentralDPStrategy:
        """``strategy`` with its aggregation made central DP."""
        return CentralDPStrategy(strategy, self)


class CentralDPStrategy:
    """DP-FedAvg (McMahan et al., ICLR 2018) around a fedsim strategy.

    In the manner of Flower's DP wrapper strategies: it changes aggregation (each update clipped to ``clip``,
    an equal-weight mean, Gaussian noise of std ``noise_multiplier * clip / K``) and never lets replies be
    summed where they are produced (the clipping needs each update); every other method is the wrapped
    strategy's, forwarded below one by one.

    Only a strategy that keeps FedAvg's aggregation can be wrapped (FedAvg, FedProx, FixMatch, ...).

    """

    def __init__(self, inner: FedsimStrategy, mechanism: CentralDP) -> None:
        cls = type(inner)
        if cls.aggregate is not FedsimStrategy.aggregate or cls.aggregate_train is not FedsimStrategy.aggregate_train:
            raise ConfigError(
                f"defence=central_dp replaces aggregation by DP-FedAvg, which {cls.__name__} does not use: "
                "use it with strategy=fedavg or fedprox (or defence=local_dp)"
            )
        self.inner, self.mechanism = inner, mechanism

    # What central DP changes.
    def reduces_train_replies(self) -> bool:
        """Never: each update is clipped before the mean."""
        return False

    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> tuple[ArrayRecord, MetricRecord]:
        """The wrapped strategy's reply checks, then the clipped, equally weighted and noised mean."""
        inner = self.inner
        accepted = inner.accept_replies(server_round, replies)
        if len(accepted) < inner.cfg.min_clients:
            raise RoundFailedError(
                f"round {server_round}: only {len(accepted)} usable replies, min_clients={inner.cfg.min_clients}"
            )
        assert inner.global_arrays is not None
        generator = torch_generator(inner.cfg.seed, "central-dp", server_round)
        arrays = self.mechanism.aggregate(inner.global_arrays, [arrays_of(r.content) for r in accepted], generator)
        metrics = inner.aggregate_metrics(accepted)
        metrics.update(update_dissimilarity(inner.global_arrays, accepted, inner.param_keys))
        return arrays, metrics

    def aggregate_partial(self, server_round: int, part: PartialSum) -> tuple[ArrayRecord, MetricRecord]:
        """Never called: central DP clips each update, so replies are not summed where they are produced."""
        raise RuntimeError("central DP clips each update: replies must not be summed where they are produced")

    def summary(self) -> None:
        """Log :meth:`describe`."""
        logging.getLogger("fedsim").info(self.describe())

    def describe(self) -> str:
        """The wrapped strategy's description, under DP-FedAvg."""
        m = self.mechanism
        return (
            f"DP-FedAvg - McMahan et al., ICLR 2018 (clip={m.clip}, noise_multiplier={m.noise_multiplier}) - "
            f"around {self.inner.describe()}"
        )

    # Everything else is the wrapped strategy's.
    @property
    def cfg(self) -> Any:
        """The wrapped strategy's run config."""
        return self.inner.cfg

    @property
    def param_keys(self) -> list[str]:
        """The wrapped strategy's trainable parameter names."""
        return self.inner.param_keys

    @property
    def node_of(self) -> dict[int, int]:
        """The wrapped strategy's client id -> node id."""
        return self.inner.node_of

    @property
    def num_examples(self) -> dict[int, int]:
        """The wrapped strategy's client id -> sample count."""
        return self.inner.num_examples

    @property
    def dropped(self) -> list[dict[str, Any]]:
        """The replies the wrapped strategy dropped in the last round, with their reasons."""
        return self.inner.dropped

    @property
    def global_arrays(self) -> ArrayRecord | None:
        """The wrapped strategy's current global model."""
        return self.inner.global_arrays

    def set_clients(self, node_of: dict[int, int], num_examples: dict[int, int]) -> None:
        """Forwarded to the wrapped strategy."""
        self.inner.set_clients(node_of, num_examples)

    def client_of(self, node: int) -> int:
        """Forwarded to the wrapped strategy."""
        return self.inner.client_of(node)

    def setup(self, grid: Grid, run: RunDirectory) -> None:
        """Forwarded to the wrapped strategy."""
        self.inner.setup(grid, run)

    def initial_arrays(self, arrays: ArrayRecord) -> ArrayRecord:
        """Forwarded to the wrapped strategy."""
        return self.inner.initial_arrays(arrays)

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Forwarded to the wrapped strategy."""
        return self.inner.configure_train(server_round, arrays, config, grid)

    def evaluate_round(self, server_round: int, arrays: ArrayRecord, grid: Grid, evaluate: Any) -> dict[str, float]:
        """Forwarded to the wrapped strategy."""
        return self.inner.evaluate_round(server_round, arrays, grid, evaluate)

    def state_dict(self) -> dict[str, Any]:
        """Forwarded to the wrapped strategy."""
        return self.inner.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Forwarded to the wrapped strategy."""
        self.inner.load_state_dict(state)


class PrivacyLedger:
    """Who released what so far: per key (a client id, or 'server'), the (sample rate, steps) list."""

    def __init__(self, mechanism: GaussianMechanism) -> None:
        self.mechanism = mechanism
        self.releases: dict[str, dict[float, int]] = {}

    def add(self, key: str, rate: float, steps: int) -> None:
        """Count ``steps`` more releases of ``key`` at sampling rate ``rate``."""
        per_rate = self.releases.setdefault(key, {})
        per_rate[rate] = per_rate.get(rate, 0) + steps

    def account_round(self, sampled: list[int], num_examples: dict[int, int], cfg: Any) -> dict[str, float]:
        """Add a round's releases (the clients ``sampled``); the epsilon spent so far and its delta."""
        for key, rate, steps in self.mechanism.round_releases(sampled, num_examples, cfg):
            self.add(key, rate, steps)
        return {"dp_epsilon": self.epsilon(), "dp_delta": float(self.mechanism.delta)}

    def epsilon(self) -> float:
        """The largest epsilon over keys (the worst-off client)."""
        return max((self.mechanism.epsilon(list(r.items())) for r in self.releases.values()), default=0.0)

    def state_dict(self) -> dict[str, Any]:
        """The releases so far, for the checkpoint."""
        return {
            key: {"rates": np.array(list(r), dtype=np.float64), "steps": np.array(list(r.values()), dtype=np.int64)}
            for key, r in self.releases.items()
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the releases of a checkpoint."""
        self.releases = {
            key: dict(zip((float(x) for x in v["rates"]), (int(s) for s in v["steps"]))) for key, v in state.items()
        }
