"""FedImpro's client update.

FedImpro client: "FedImpro: Measuring and Improving Client Update in Federated Learning" (Tang, Zhang et al.,
ICLR 2024, arXiv:2402.07011; official code github.com/wizard1203/FedImpro).

The model is split into a low part (feature extractor) and a high part (``split_model``). The
client starts the round from the global per-class feature distributions N(mean_c, diag std_c^2)
the server sent (``feature-stats``) and, as the official code does, keeps its own running
estimate of them while it trains. Each local step:

1. draws class-balanced synthetic features for every class from the current estimate
   (B // C + 1 per class; std capped at ``feature_std_max``), detached from the low part;
2. computes h = low(x) and trains on
       loss = CE(high(h), y) + lambda_t * CE(high(h~), c)
   (the official "gradual2half" schedule: lambda_t = t / ``lambda_ramp_rounds``, sent by the server);
3. moves the estimate of every class in the batch toward the batch's own features:
       mean_c <- (1 - w) mean_c + w mean(h_c),  std_c <- (1 - w) std_c + w std(h_c),
       w = min(1, n_c / ``stats_reference_count``)
   (official: 5000), so the classes a client holds are described by its current features and the
   classes it lacks by the global statistics.

The client returns its updated estimate (mean and std per class), with Gaussian noise of std
``stats_noise_std`` on both (the paper's privacy knob; off in the official code by default).
"""

from __future__ import annotations

import torch
from flwr.app import ArrayRecord, RecordDict
from torch import nn
from torch.nn import functional as F
from typing_extensions import override

from clients.base import Client
from fedsim.models import split_model
from fedsim.protocols.fedimpro import FEATURE_STATS, LAMBDA, MEAN, STD
from fedsim.records import arrays_of, config_of, number
from fedsim.seeding import torch_generator


class RunningClassStats:
    """Per-class feature mean and std, moved toward each batch's features (FedImpro's client estimate)."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor, reference_count: float, std_max: float | None) -> None:
        self.mean, self.std = mean.clone(), std.clone()
        self.reference_count, self.std_max = float(reference_count), std_max
        if std_max is not None:
            self.std.clamp_(max=std_max)

    @torch.no_grad()
    def update(self, h: torch.Tensor, y: torch.Tensor) -> None:
        """Move the estimates of the classes in ``y`` toward the mean and std of their features ``h``."""
        h = h.detach().flatten(1).to(self.mean)
        for c in torch.unique(y).tolist():
            members = h[y == c]
            w = min(1.0, len(members) / self.reference_count)
            self.mean[c] = (1 - w) * self.mean[c] + w * members.mean(0)
            if len(members) > 1:  # a single sample has no spread (official: skip a NaN std)
                self.std[c] = (1 - w) * self.std[c] + w * members.std(0)
        if self.std_max is not None:
            self.std.clamp_(max=self.std_max)

    def sample(self, batch_size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """B // C + 1 draws of every class (class-balanced, as in the official code)."""
        classes = len(self.mean)
        labels = torch.arange(classes).repeat(batch_size // classes + 1)
        noise = torch.randn((len(labels), self.mean.shape[1]), generator=generator).to(self.mean)
        return self.mean[labels] + self.std[labels] * noise, labels


class FedImproClient(Client):
    """FedImpro client: trains also on features drawn from the shared class distributions.

    FedImpro client: trains on its data and on features drawn from the shared class distributions, and returns
    its noised estimate of those distributions.

    """

    @override
    def train(self, content: RecordDict, server_round: int) -> RecordDict:
        s = self.env.cfg.strategy
        stats: ArrayRecord = arrays_of(content, FEATURE_STATS)
        self.weight = number(config_of(content), LAMBDA)
        self.low, self.high = split_model(self.env.model, s.split_at)
        std_max = None if s.feature_std_max is None else float(s.feature_std_max)
        self.estimate = RunningClassStats(
            torch.from_numpy(stats[MEAN].numpy()).float().to(self.env.device),
            torch.from_numpy(stats[STD].numpy()).float().to(self.env.device),
            float(s.stats_reference_count),
            std_max,
        )
        self.draws = torch_generator(self.env.cfg.seed, "fedimpro-draw", server_round, self.env.client_id)
        reply = super().train(content, server_round)
        reply[FEATURE_STATS] = self.shared_stats(server_round)
        return reply

    @override
    def batch_loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        fake_h, fake_y = self.estimate.sample(len(y), self.draws)
        h = self.low(x)
        logits = self.high(torch.cat([h, fake_h.view(-1, *h.shape[1:])]))
        real, synthetic = logits[: len(y)], logits[len(y) :]
        loss = self.loss(model, real, y) + self.weight * F.cross_entropy(synthetic, fake_y.to(h.device))
        self.estimate.update(h, y)
        return loss

    def shared_stats(self, server_round: int) -> ArrayRecord:
        """The client's per-class mean and std, both with Gaussian noise of std ``stats_noise_std``."""
        mean, std = self.estimate.mean.cpu(), self.estimate.std.cpu()
        sigma = float(self.env.cfg.strategy.stats_noise_std)
        if sigma > 0:
            noise = torch_generator(self.env.cfg.seed, "fedimpro-stats-noise", server_round, self.env.client_id)
            mean = mean + sigma * torch.randn(mean.shape, generator=noise)
            std = std + sigma * torch.randn(std.shape, generator=noise)
        return ArrayRecord({MEAN: mean.contiguous(), STD: std.contiguous()})


CLIENT = FedImproClient
