"""Twin-sight's client update.

Twin-sight client: "Robust Training of Federated Models with Extremely Label Deficiency" (Zhang, Yang et al.,
ICLR 2024, arXiv:2402.14430).

Each client trains twin models on all its samples, labeled or not:
- the supervised model f (the run's model): CE on labeled samples, and FixMatch-style pseudo-labels
  on unlabeled ones (weight ``pseudo_label_weight``; the paper describes pseudo-labelling, the
  official code has it off and swaps the weak/strong logits: here weak views make the labels and
  strong views learn them, 0 turns it off);
- the unsupervised model g (the same network up to its penultimate layer + a projector, server
  record ``unsupervised``): SimCLR's InfoNCE between the weak and the strong view of each sample,
  as in the official code (temperature ``temperature``, weight ``contrastive_weight``). The projector
  is SimCLR's (feature width, ReLU, ``projection_dim``), smaller than the official BYOL-style MLP
  (512 -> 4096 with BatchNorm -> 2048) to keep CPU proxies affordable: a deliberate difference;
- the neighbourhood-preserving constraint couples them on weak views: with u and v the
  L2-normalised penultimate features of g and f (``embedding``: 512-d for the CNN, not the
  3136-d conv output), L_np = sum((u u^T - v v^T)^2) / B over the B x B
  Gram matrices, weight ``np_weight``; gradients flow into both models. The official code divides
  the sum by ``B ^ 2``, which in Python is B XOR 2 (66 for B=64, 130 for B=128), so its constraint
  is sum / ~B. The intended mean over B^2 entries would be ~B times weaker than what the published
  numbers were obtained with; fedsim keeps the official strength with the plain divisor B (within
  2/B of the XOR's, and without its dependence on B's second bit).
"""

from __future__ import annotations

import torch
from flwr.app import RecordDict
from torch import nn
from torch.nn import functional as F
from typing_extensions import override

from clients.base import make_optimizer
from clients.fixmatch import FixMatchClient
from fedsim.models import embedding
from fedsim.protocols.twinsight import UNSUPERVISED, unsupervised_model
from fedsim.records import arrays_of, load_record, model_to_record


def info_nce(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's NT-Xent: each view's positive is the other view of the same sample among 2B - 1."""
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    sim = z @ z.T / temperature
    sim.fill_diagonal_(float("-inf"))
    n = len(z1)
    targets = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(sim, targets)


def neighbourhood_loss(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Twin-sight's neighbourhood-preserving loss between two feature spaces.

    sum((u u^T - v v^T)^2) / B of L2-normalised features (the official strength, see the module docstring): 0
    iff both feature spaces have the same geometry on the batch.
    """
    u, v = F.normalize(u.flatten(1), dim=1), F.normalize(v.flatten(1), dim=1)
    return (u @ u.T - v @ v.T).pow(2).sum() / len(u)


class TwinSightClient(FixMatchClient):
    """Twin-sight client: a supervised and an unsupervised (SimCLR) model, coupled by the neighbourhood constraint."""

    @override
    def train(self, content: RecordDict, server_round: int) -> RecordDict:
        data = self.env.data.dataset
        self.unsup = unsupervised_model(self.env.cfg, data.input_shape, data.num_classes).to(self.env.device)
        load_record(self.unsup, arrays_of(content, UNSUPERVISED))
        self.unsup.train()
        reply = super().train(content, server_round)
        reply[UNSUPERVISED] = model_to_record(self.unsup)
        return reply

    @override
    def optimizer(self, model: nn.Module, lr: float) -> torch.optim.Optimizer:
        return make_optimizer(nn.ModuleList([model, self.unsup]), self.env.train_settings().optimizer, lr)

    @override
    def batch_loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        s = self.env.cfg.strategy
        weak, strong = self.views(x)
        y = y.to(self.env.device)
        labeled = y != self.UNLABELED
        loss = self.supervised_loss(model, weak[labeled], y[labeled])
        if float(s.pseudo_label_weight) > 0:
            loss = loss + float(s.pseudo_label_weight) * self.pseudo_label_loss(model, weak[~labeled], strong[~labeled])
        loss = loss + float(s.contrastive_weight) * info_nce(self.unsup(weak), self.unsup(strong), float(s.temperature))
        return loss + float(s.np_weight) * neighbourhood_loss(self.unsup.features(weak), embedding(model)(weak))


CLIENT = TwinSightClient
