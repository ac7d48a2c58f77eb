"""SCooL client (Li et al., ICML 2023): E-step on the received models, then graph-regularised training.

The message carries the peers' models and a ``graph`` record: ``ids`` = [self, peers...] and the
prior logits for each. The client
1. scores every model on ``likelihood_samples`` of its own training samples (mean cross-entropy
   loss_j; the data likelihood under model j),
2. forms its row of the cooperation graph, W_j = softmax_j(prior_j - loss_j / likelihood_scale)
   (the prior alone for the Dirac prior),
3. starts from theta = sum_j W_j theta_j and trains locally with the regulariser
   reg_weight/2 * sum_{j != self} W_j ||theta - theta_j||^2 (its gradient,
   reg_weight * s * (theta - a) with s = sum_{j != self} W_j and a the W-weighted mean of the
   peers' models, is added after each backward pass),
4. reports the row (``graph``: ids, weights, losses) with its shared model.
"""

from __future__ import annotations

import torch
from flwr.app import ArrayRecord, ConfigRecord, RecordDict
from torch import nn
from torch.nn import functional as F

from clients.peer import PeerClient, State, weighted_mix
from fedsim.seeding import torch_generator


class SCooLClient(PeerClient):
    def train(self, content: RecordDict, server_round: int) -> RecordDict:
        self.server_round = server_round
        self.graph_row: ConfigRecord | None = None
        self.anchor: dict[str, torch.Tensor] = {}
        reply = super().train(content, server_round)
        if self.graph_row is not None:
            reply["graph"] = self.graph_row
        return reply

    @torch.no_grad()
    def likelihood_loss(self, state: State, x: torch.Tensor, y: torch.Tensor) -> float:
        model = self.env.model
        model.load_state_dict(state)
        model.eval()
        return float(F.cross_entropy(model(x), y))

    def likelihood_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        data, n = self.env.data, int(self.env.cfg.strategy.likelihood_samples)
        generator = torch_generator(self.env.cfg.seed, "scool-likelihood", self.server_round, self.env.client_id)
        idx = torch.randperm(len(data), generator=generator)[:n]
        return data.dataset.normalize(data.x[idx]).to(self.env.device), data.y[idx].to(self.env.device)

    def combine(self, state: State, peers: dict[int, ArrayRecord], content: RecordDict) -> State:
        if not peers or "graph" not in content.config_records:
            return state
        s, graph = self.env.cfg.strategy, content["graph"]
        ids = [int(i) for i in graph["ids"]]
        models = [state] + [peers[j].to_torch_state_dict() for j in ids[1:]]
        logits = torch.tensor([float(v) for v in graph["prior"]], dtype=torch.float64)
        losses = [0.0] * len(models)
        if bool(graph["use-likelihood"]):
            x, y = self.likelihood_batch()
            losses = [self.likelihood_loss(m, x, y) for m in models]
            logits = logits - torch.tensor(losses, dtype=torch.float64) / float(s.likelihood_scale)
        weights = torch.softmax(logits, dim=0).tolist()
        self.graph_row = ConfigRecord({"ids": ids, "weights": weights, "losses": losses})
        peer_weight = sum(weights[1:])
        if float(s.reg_weight) > 0 and peer_weight > 0:
            device = self.env.device
            mean = weighted_mix(models[1:], weights[1:])
            self.anchor = {n: mean[n].to(device) for n, _ in self.env.model.named_parameters()}
            self.pull = float(s.reg_weight) * peer_weight
        return weighted_mix(models, weights)

    def before_step(self, model: nn.Module) -> None:
        if self.anchor:
            with torch.no_grad():
                for name, p in model.named_parameters():
                    if p.grad is not None:
                        p.grad.add_(p - self.anchor[name], alpha=self.pull)


CLIENT = SCooLClient
