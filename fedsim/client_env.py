"""The contract between the client runtime and the client updates.

What the client runtime gives every client update: its data, the shared model instance, its state store, the
run's defence and settings (the contract between :mod:`fedsim.client_app` and the client modules under
``clients/``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Protocol

import torch
from flwr.app import RecordDict
from torch import nn

from fedsim.client_state import ClientStateStore
from fedsim.data.local import LocalData


def augmented(cfg: Any) -> bool:
    """Whether the run augments local training batches.

    Whether the run augments local training batches (``augment=shift_flip``; runs saved before the key existed
    did not).
    """
    return str(cfg.get("augment", "none")) == "shift_flip"


@dataclass(frozen=True)
class TrainSettings:
    """The run keys every local step reads, read out of the config once per run.

    The run keys every local step reads, read out of the config once per run (a DictConfig lookup costs about
    as much as a small client's forward pass).
    """

    seed: int
    clip_norm: float | None
    augment: bool
    optimizer: Any  # the run's optimizer config node (``cfg.optimizer``)

    @classmethod
    def of(cls, cfg: Any) -> TrainSettings:
        """The settings read out of a run config."""
        clip = cfg.optimizer.get("clip_norm")
        return cls(int(cfg.seed), None if clip is None else float(clip), augmented(cfg), cfg.optimizer)


@dataclass
class ClientEnv:
    """Everything a client update can use; built once per client per process."""

    client_id: int
    cfg: Any  # the resolved run config (DictConfig)
    data: LocalData  # labeled samples
    unlabeled: LocalData  # samples whose labels the client may not use (semi-supervised splits)
    test_split: Callable[[], LocalData]  # builds the client's own test set (see ``test``)
    model: nn.Module  # one instance per process, overwritten by the received weights each round
    device: torch.device
    state: ClientStateStore
    defence: Any = None  # the run's defence (fedsim.privacy.defences), if any
    settings: TrainSettings | None = None  # the run's, where the runtime has read them (else from cfg)

    @cached_property
    def test(self) -> LocalData:
        """The client's own test set (its label distribution), for personalized evaluation; built on first use."""
        return self.test_split()

    def train_settings(self) -> TrainSettings:
        """The run's train settings (read from ``cfg`` where the runtime did not provide them)."""
        return self.settings or TrainSettings.of(self.cfg)


class ClientUpdate(Protocol):
    """What the client runtime calls on a client (``clients.base.Client`` implements it)."""

    env: ClientEnv

    def num_train_examples(self) -> int:
        """Samples the client trains on (its weight in the aggregate)."""

    def train(self, content: RecordDict, server_round: int) -> RecordDict:
        """The reply to a train message."""

    def evaluate(self, content: RecordDict, server_round: int) -> RecordDict:
        """The reply to an evaluate message."""


class ClientClass(Protocol):
    """A client update class (``clients.<name>.CLIENT``).

    Built from its environment, and sized without being built.
    """

    def __call__(self, env: ClientEnv) -> ClientUpdate:
        """The client update for ``env``."""
        ...

    def train_examples(self, labeled: int, unlabeled: int) -> int:
        """Samples a client with these counts trains on (its weight in the aggregate)."""
        ...
