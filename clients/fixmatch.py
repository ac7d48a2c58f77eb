"""FixMatch's client update, for federated semi-supervised learning.

FedAvg + FixMatch client: "FixMatch: Simplifying Semi-Supervised Learning with Consistency and Confidence"
(Sohn et al., NeurIPS 2020) as the local update of federated semi-supervised learning.

Each local step takes a batch of labeled AND a batch of unlabeled samples (batch_size each, the
smaller set cycled and reshuffled, as FixMatch's mu = 1 and the Twin-sight code do); a local epoch
is one pass over the larger set. Per step:
    CE(f(weak(x_l)), y_l) + lambda_u * mean_u[ 1{max p_u >= tau} CE(f(strong(x_u)), argmax p_u) ],
p_u = softmax(f(weak(x_u))) without gradient. A client without labels learns from pseudo-labels
only; it is weighted by all its samples. (Mixing both kinds in one stream instead would leave a
client with 10% labels about 3 labeled samples per batch of 32, and its supervised signal lost
among hundreds of pseudo-label steps.)
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from flwr.app import ConfigRecord
from torch import nn
from torch.nn import functional as F
from typing_extensions import override

from clients.base import Client
from fedsim.data import augment
from fedsim.protocols.messages import BATCH_SIZE
from fedsim.records import integer


def cycled_batches(n: int, size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """Index batches of ``size`` over ``n`` samples, reshuffled after every pass, forever."""
    while True:
        yield from torch.randperm(n, generator=generator).split(size)


class FixMatchClient(Client):
    """FixMatch client: supervised loss on labels plus confidence-masked pseudo-label consistency."""

    UNLABELED = -1
    counts_unlabeled = True

    def batches(self, config: ConfigRecord, generator: torch.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Raw uint8 batches of labeled samples followed by unlabeled ones (label -1)."""
        labeled, unlabeled = self.env.data, self.env.unlabeled
        size = integer(config, BATCH_SIZE)
        self.augment_rng = generator
        steps = max(-(-len(labeled) // size), -(-len(unlabeled) // size))
        streams = [cycled_batches(len(part), size, generator) if len(part) else None for part in (labeled, unlabeled)]
        for _ in range(steps):
            x, y = [], []
            if streams[0] is not None:
                idx = next(streams[0])
                x.append(labeled.x[idx])
                y.append(labeled.y[idx])
            if streams[1] is not None:
                idx = next(streams[1])
                x.append(unlabeled.x[idx])
                y.append(torch.full((len(idx),), self.UNLABELED, dtype=torch.int64))
            yield torch.cat(x), torch.cat(y)

    def view(self, x: torch.Tensor, kind: str) -> torch.Tensor:
        """A normalised ``weak`` or ``strong`` augmented view of a uint8 batch, on the device."""
        data = self.env.data.dataset
        return data.normalize(getattr(augment, kind)(x, self.augment_rng, data.hflip)).to(self.env.device)

    def views(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The weak and the strong augmented view of a uint8 batch."""
        return self.view(x, "weak"), self.view(x, "strong")

    def pseudo_label_loss(self, model: nn.Module, weak: torch.Tensor, strong: torch.Tensor) -> torch.Tensor:
        """FixMatch's confidence-masked consistency loss on unlabeled weak/strong pairs."""
        if len(weak) == 0:
            return weak.new_zeros(())
        with torch.no_grad():
            confidence, pseudo = F.softmax(model(weak), dim=1).max(dim=1)
        mask = (confidence >= float(self.env.cfg.strategy.threshold)).float()
        return (F.cross_entropy(model(strong), pseudo, reduction="none") * mask).mean()

    def supervised_loss(self, model: nn.Module, weak: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The loss on the labeled part of a batch (zero when it has none)."""
        return self.loss(model, model(weak), y) if len(y) else weak.new_zeros(())

    @override
    def batch_loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        weak, strong = self.views(x)
        y = y.to(self.env.device)
        labeled = y != self.UNLABELED
        return self.supervised_loss(model, weak[labeled], y[labeled]) + float(
            self.env.cfg.strategy.unlabeled_weight
        ) * (self.pseudo_label_loss(model, weak[~labeled], strong[~labeled]))


CLIENT = FixMatchClient
