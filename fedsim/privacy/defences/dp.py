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

import math
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid

from fedsim.errors import ConfigError, RoundFailedError
from fedsim.params import spec
from fedsim.privacy.defences.update import Tensors, clip, float_update, with_update
from fedsim.protocols.messages import ARRAYS
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
class GaussianMechanism:
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
        std = self.noise_multiplier * self.clip / divisor
        return {k: v + std * torch.randn(v.shape, generator=generator) for k, v in update.items()}

    def epsilon(self, releases: list[tuple[float, int]]) -> float:
        return epsilon(releases, self.noise_multiplier, self.delta) if self.noise_multiplier > 0 else math.inf


@dataclass
class LocalDP(GaussianMechanism):
    """Clip the update to ``clip`` and add N(0, (noise_multiplier * clip)^2) per entry, on the client."""

    def transform_update(self, update: Tensors, generator: torch.Generator) -> Tensors:
        return self.noised(clip(update, self.clip), generator)

    def transform(self, sent: ArrayRecord, returned: ArrayRecord, generator: torch.Generator) -> ArrayRecord:
        return with_update(sent, returned, self.transform_update(float_update(sent, returned), generator))

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
    ) -> Iterator[torch.optim.Optimizer]:
        from opacus import GradSampleModule
        from opacus.optimizers import DPOptimizer

        in_place = [m for m in model.modules() if getattr(m, "inplace", False)]
        for module in in_place:  # per-sample gradient hooks cannot see through in-place activations
            module.inplace = False
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
                module.inplace = True

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
        updates = [clip(float_update(global_arrays, r), self.clip) for r in replies]
        mean = {k: sum(u[k] for u in updates) / len(updates) for k in updates[0]}
        return with_update(global_arrays, replies[0], self.noised(mean, generator, divisor=len(updates)))

    def round_releases(self, sampled: list[int], sizes: dict[int, int], cfg: Any) -> list[tuple[str, float, int]]:
        return [("server", min(1.0, len(sampled) / max(len(sizes), 1)), 1)]

    def wrap(self, strategy: Any) -> CentralDPStrategy:
        return CentralDPStrategy(strategy, self)


class CentralDPStrategy:
    """DP-FedAvg (McMahan et al., ICLR 2018) around a fedsim strategy, in the manner of Flower's DP
    wrapper strategies: it changes aggregation (each update clipped to ``clip``, an equal-weight
    mean, Gaussian noise of std ``noise_multiplier * clip / K``) and never lets replies be summed
    where they are produced (the clipping needs each update); every other method is the wrapped
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
        arrays = self.mechanism.aggregate(inner.global_arrays, [r.content[ARRAYS] for r in accepted], generator)
        metrics = inner.aggregate_metrics(accepted)
        metrics.update(update_dissimilarity(inner.global_arrays, accepted, inner.param_keys))
        return arrays, metrics

    def aggregate_partial(self, server_round: int, part: PartialSum) -> tuple[ArrayRecord, MetricRecord]:
        raise RuntimeError("central DP clips each update: replies must not be summed where they are produced")

    def summary(self) -> str:
        """The wrapped strategy's summary, under DP-FedAvg."""
        m = self.mechanism
        return (
            f"DP-FedAvg - McMahan et al., ICLR 2018 (clip={m.clip}, noise_multiplier={m.noise_multiplier}) - "
            f"around {self.inner.summary()}"
        )

    # Everything else is the wrapped strategy's.
    @property
    def cfg(self) -> Any:
        return self.inner.cfg

    @property
    def param_keys(self) -> list[str]:
        return self.inner.param_keys

    @property
    def node_of(self) -> dict[int, int]:
        return self.inner.node_of

    @property
    def num_examples(self) -> dict[int, int]:
        return self.inner.num_examples

    @property
    def dropped(self) -> list[dict[str, Any]]:
        return self.inner.dropped

    @property
    def global_arrays(self) -> ArrayRecord | None:
        return self.inner.global_arrays

    def set_clients(self, node_of: dict[int, int], num_examples: dict[int, int]) -> None:
        self.inner.set_clients(node_of, num_examples)

    def client_of(self, node: int) -> int:
        return self.inner.client_of(node)

    def setup(self, grid: Grid, run: RunDirectory) -> None:
        self.inner.setup(grid, run)

    def initial_arrays(self, arrays: ArrayRecord) -> ArrayRecord:
        return self.inner.initial_arrays(arrays)

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return self.inner.configure_train(server_round, arrays, config, grid)

    def evaluate_round(self, server_round: int, arrays: ArrayRecord, grid: Grid, evaluate: Any) -> dict[str, float]:
        return self.inner.evaluate_round(server_round, arrays, grid, evaluate)

    def state_dict(self) -> dict[str, Any]:
        return self.inner.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.inner.load_state_dict(state)


class PrivacyLedger:
    """Who released what so far: per key (a client id, or 'server'), the (sample rate, steps) list."""

    def __init__(self, mechanism: GaussianMechanism) -> None:
        self.mechanism = mechanism
        self.releases: dict[str, dict[float, int]] = {}

    def add(self, key: str, rate: float, steps: int) -> None:
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
        return {
            key: {"rates": np.array(list(r), dtype=np.float64), "steps": np.array(list(r.values()), dtype=np.int64)}
            for key, r in self.releases.items()
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.releases = {
            key: dict(zip((float(x) for x in v["rates"]), (int(s) for s in v["steps"]))) for key, v in state.items()
        }
