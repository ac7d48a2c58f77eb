"""SCooL client (Li et al., ICML 2023): E-step on the received models, then mixing and local training.

The message carries the peers' shared records and a ``graph`` record: ``ids`` = [self, peers...]
and the prior logits for each. The client
1. scores every model on its own training data (mean cross-entropy loss_j, the data likelihood
   under model j): one batch of ``batch_size`` samples (``strategy.likelihood_samples`` null, as
   the official code) or that many samples;
2. forms its row of the cooperation graph over [self, peers...]:
   SBM prior, ``official``: W_j = sigmoid((prior_j - loss_j) / likelihood_scale) / sum_k (same)
   (SBM.optimize_W); otherwise W_j = softmax_j(prior_j - loss_j / likelihood_scale) (the official
   attention code's softmax(-loss / scale) times the attention weights, renormalised; the prior
   alone for Dirac);
3. mixes: ``official``: start = own start + sum_j W_j delta_j, delta_j = model_j - start_j of each
   one's last training (the official update mixing), then plain local SGD;
   ``fedsim``: start = sum_j W_j theta_j, then local SGD with the regulariser
   reg_weight/2 * sum_{j != self} W_j ||theta - theta_j||^2 (its gradient,
   reg_weight * s * (theta - a) with s = sum_{j != self} W_j and a the W-weighted mean of the
   peers' models, is added after each backward pass);
4. reports the row (``graph``: ids, weights, losses) with its shared record
   (``fedsim/protocols/scool.py``).
"""

from __future__ import annotations

import torch
from flwr.app import ArrayRecord, ConfigRecord, RecordDict
from torch import nn
from torch.nn import functional as F
from typing_extensions import override

from clients.peer import PeerClient, State, part, prefixed, weighted_mix
from fedsim.protocols import scool as protocol
from fedsim.protocols.scool import GRAPH, IDS, LOSSES, PRIOR, USE_LIKELIHOOD, WEIGHTS
from fedsim.records import config_of, has_record, integers, numbers
from fedsim.seeding import torch_generator


def official_row(prior: list[float], losses: list[float], scale: float) -> list[float]:
    """Row-normalised sigmoid((prior - loss) / scale): the official SBM.optimize_W / output_W."""
    edges = torch.sigmoid(
        (torch.tensor(prior, dtype=torch.float64) - torch.tensor(losses, dtype=torch.float64)) / scale
    )
    return (edges / edges.sum()).tolist()


def mix_updates(start: State, updates: list[State], weights: list[float]) -> State:
    """The mix ``start + sum_j w_j update_j`` of floating tensors (others kept from ``start``)."""
    mixed = {}
    for key, value in start.items():
        if value.is_floating_point():
            mixed[key] = (value.double() + sum(u[key].double() * w for u, w in zip(updates, weights))).to(value.dtype)
        else:
            mixed[key] = value.clone()
    return mixed


START = "start."  # the official variant's client state keeps the model it trained from (its update's origin)


class SCooLClient(PeerClient):
    """SCooL client: forms its row of the cooperation graph from its peers' losses and the prior, then mixes."""

    def official(self) -> bool:
        """Whether the run uses the official variant (update mixing)."""
        return self.env.cfg.strategy.variant == "official"

    @override
    def initial_state(self, initial: State) -> State:
        if not self.official():
            return initial
        return {**prefixed(protocol.MODEL, initial), **prefixed(START, initial)}

    @override
    def model_weights(self, state: State) -> State:
        return part(state, protocol.MODEL) if self.official() else state

    @override
    def train(self, content: RecordDict, server_round: int) -> RecordDict:
        self.server_round = server_round
        self.graph_row: ConfigRecord | None = None
        self.anchor: dict[str, torch.Tensor] = {}
        reply = super().train(content, server_round)
        if self.graph_row is not None:
            reply[GRAPH] = self.graph_row
        return reply

    @torch.no_grad()
    def likelihood_loss(self, state: State, x: torch.Tensor, y: torch.Tensor) -> float:
        """The loss of the model ``state`` on the batch (x, y): how well a peer's model explains this data."""
        model = self.env.model
        model.load_state_dict(state)
        model.eval()
        return float(F.cross_entropy(model(x), y))

    def likelihood_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The seeded batch of this client's training data on which peers' models are scored."""
        data, samples = self.env.data, self.env.cfg.strategy.likelihood_samples
        n = int(self.env.cfg.batch_size if samples is None else samples)
        generator = torch_generator(self.env.cfg.seed, "scool-likelihood", self.server_round, self.env.client_id)
        idx = torch.randperm(len(data), generator=generator)[:n]
        return data.dataset.normalize(data.x[idx]).to(self.env.device), data.y[idx].to(self.env.device)

    @override
    def combine(self, state: State, peers: dict[int, ArrayRecord], content: RecordDict) -> State:
        own = self.model_weights(state)
        self.start = part(state, START) if self.official() else own
        if not peers or not has_record(content, GRAPH, ConfigRecord):
            self.start = own  # own weight 1: start + delta is the trained model
            return own
        s, graph = self.env.cfg.strategy, config_of(content, GRAPH)
        ids = integers(graph, IDS)
        shared = [peers[j] for j in ids[1:]]
        models = [own] + [
            (protocol.unpack(r, protocol.MODEL) if self.official() else r).to_torch_state_dict() for r in shared
        ]
        prior = numbers(graph, PRIOR)
        losses = [0.0] * len(models)
        if bool(graph[USE_LIKELIHOOD]):
            x, y = self.likelihood_batch()
            losses = [self.likelihood_loss(m, x, y) for m in models]
        if self.official() and s.prior == "sbm":
            weights = official_row(prior, losses, float(s.likelihood_scale))
        else:
            logits = torch.tensor(prior, dtype=torch.float64) - torch.tensor(losses, dtype=torch.float64) / float(
                s.likelihood_scale
            )
            weights = torch.softmax(logits, dim=0).tolist()
        self.graph_row = ConfigRecord({IDS: ids, WEIGHTS: weights, LOSSES: losses})
        if self.official():
            own_update = {k: own[k] - self.start[k] for k in own if own[k].is_floating_point()}
            updates = [own_update] + [protocol.unpack(r, protocol.UPDATE).to_torch_state_dict() for r in shared]
            self.start = mix_updates(self.start, updates, weights)
            return self.start
        peer_weight = sum(weights[1:])
        if float(s.reg_weight) > 0 and peer_weight > 0:
            device = self.env.device
            mean = weighted_mix(models[1:], weights[1:])
            self.anchor = {n: mean[n].to(device) for n, _ in self.env.model.named_parameters()}
            self.pull = float(s.reg_weight) * peer_weight
        return weighted_mix(models, weights)

    @override
    def before_step(self, model: nn.Module) -> None:
        if self.anchor:
            with torch.no_grad():
                for name, p in model.named_parameters():
                    if p.grad is not None:
                        p.grad.add_(p - self.anchor[name], alpha=self.pull)

    @override
    def next_state(self, model: nn.Module, state: State, server_round: int) -> State:
        trained = super().next_state(model, state, server_round)
        return {**prefixed(protocol.MODEL, trained), **prefixed(START, self.start)} if self.official() else trained

    @override
    def share(self, model: nn.Module, state: State) -> ArrayRecord:
        if not self.official():
            return super().share(model, state)
        trained, start = part(state, protocol.MODEL), part(state, START)
        return protocol.pack(
            trained, {k: v - start[k] if v.is_floating_point() else torch.zeros_like(v) for k, v in trained.items()}
        )


CLIENT = SCooLClient
