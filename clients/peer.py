"""Client side of the decentralized strategies (``fedsim/decentralized.py``).

A peer client owns its personalized model: it lives in the client's state store between rounds
(the common initial model, sent once, the first time). Each round it
1. loads its own model (:meth:`PeerClient.own_state`),
2. combines it with the peers' models the message carries, ``peer-<id>`` (:meth:`combine`),
3. trains locally, saves its new state (:meth:`next_state`), and
4. replies with what its peers may receive next round (``shared``, :meth:`share`).
Evaluation uses the own model on the client's own test split. With no peers this is local-only
training, the baseline every personalized method must beat.
"""

from __future__ import annotations

import logging

import torch
from flwr.app import ArrayRecord, ConfigRecord, RecordDict
from torch import nn
from typing_extensions import override

from clients.base import Client
from fedsim.decentralized import peer_records
from fedsim.numerics import tensor_sum
from fedsim.protocols.messages import LAST_CHECKPOINT, METRICS, PEER_RECORD
from fedsim.records import arrays_of, config_of, has_record, integer, model_to_record

log = logging.getLogger("fedsim")

State = dict[str, torch.Tensor]


def weighted_mix(states: list[State], weights: list[float]) -> State:
    """sum_k w_k s_k / sum_k w_k for floating tensors; other tensors (counters) from the first state."""
    total = float(sum(weights))
    mixed = {}
    for key, first in states[0].items():
        if first.is_floating_point():
            mixed[key] = tensor_sum(s[key].double() * (w / total) for s, w in zip(states, weights)).to(first.dtype)
        else:
            mixed[key] = first.clone()
    return mixed


def part(state: State, prefix: str) -> State:
    """The tensors of ``state`` stored under ``prefix``, without it."""
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def prefixed(prefix: str, tensors: State) -> State:
    """``tensors`` with ``prefix`` before every key (several state dicts kept in one state)."""
    return {prefix + k: v for k, v in tensors.items()}


def is_finite(state: State) -> bool:
    """Whether every floating-point tensor of ``state`` is finite."""
    return all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


class PeerClient(Client):
    """Local training of a personal model; subclasses combine it with peers' models."""

    def own_state(self, content: RecordDict, server_round: int) -> State:
        """The client's state after its last active round before ``server_round``."""
        saved = self.env.state.load(before_round=server_round)
        if saved is not None:
            return saved
        if not has_record(content):
            raise ValueError(
                f"client {self.env.client_id} has no saved model and the message carries no initial 'arrays'"
            )
        return self.initial_state(arrays_of(content).to_torch_state_dict())

    def initial_state(self, initial: State) -> State:
        """State before the first round: the common initial model."""
        return initial

    def model_weights(self, state: State) -> State:
        """The model's state dict inside the client's state."""
        return state

    def combine(self, state: State, peers: dict[int, ArrayRecord], content: RecordDict) -> State:
        """Model weights to start local training from, given the peers' shared records.

        Model weights to start local training from, given the peers' shared records (own model only: local
        training).
        """
        return self.model_weights(state)

    def next_state(self, model: nn.Module, state: State, server_round: int) -> State:
        """State to keep after local training (the trained model)."""
        return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}

    def share(self, model: nn.Module, state: State) -> ArrayRecord:
        """What peers receive from this client (the dense trained model)."""
        return model_to_record(model)

    @override
    def train(self, content: RecordDict, server_round: int) -> RecordDict:
        config: ConfigRecord = config_of(content)
        state = self.own_state(content, server_round)
        model = self.env.model
        model.load_state_dict(self.combine(state, peer_records(content), content))
        stats = self.fit(model, config, server_round)
        new_state = self.next_state(model, state, server_round)
        if is_finite(new_state):
            self.env.state.save(server_round, new_state, last_checkpoint=integer(config, LAST_CHECKPOINT))
        else:
            log.warning(
                "client %d: non-finite model after round %d, keeping the previous one", self.env.client_id, server_round
            )
        return RecordDict({PEER_RECORD: self.share(model, new_state), METRICS: self.metrics(stats)})

    @override
    def evaluate(self, content: RecordDict, server_round: int) -> RecordDict:
        self.env.model.load_state_dict(self.model_weights(self.own_state(content, server_round + 1)))
        return self.test_metrics(self.env.model)


CLIENT = PeerClient
