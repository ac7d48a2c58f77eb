"""FedImpro client: "FedImpro: Measuring and Improving Client Update in Federated Learning"
(Tang, Zhang et al., ICLR 2024, arXiv:2402.07011).

The model is split into a low part (feature extractor) and a high part (``split_model``). Each
local step computes h = low(x) on a local batch and draws as many synthetic features
h~ ~ N(mu_c, diag min(sigma_c, feature_std_max)^2) for class-balanced labels c from the global per-class distributions the
server sent (``feature-stats``); the high part trains on both:
    loss = CE(high(h), y) + lambda_t * CE(high(h~), c)
h~ carries no gradient to the low part, which learns from real data only. The server raises
lambda_t with the round (``fedimpro-lambda``).

While training, the client accumulates per-class counts, sums and sums of squares of its own
(detached) features over the epoch and returns count, E[h] and E[h^2] per class, with Gaussian
noise of std ``stats_noise_std`` on both moments (the privacy knob).
"""

from __future__ import annotations

import torch
from flwr.app import ArrayRecord, RecordDict
from torch import nn
from torch.nn import functional as F

from clients.base import Client
from fedsim.models import split_model
from fedsim.seeding import torch_generator


class FeatureStats:
    """Per-class count, sum and sum of squares of flattened features."""

    def __init__(self, num_classes: int, dim: int) -> None:
        self.count = torch.zeros(num_classes, dtype=torch.float64)
        self.sum = torch.zeros(num_classes, dim, dtype=torch.float64)
        self.sumsq = torch.zeros(num_classes, dim, dtype=torch.float64)

    def add(self, h: torch.Tensor, y: torch.Tensor) -> None:
        h = h.detach().flatten(1).double().cpu()
        y = y.cpu()
        self.count.index_add_(0, y, torch.ones(len(y), dtype=torch.float64))
        self.sum.index_add_(0, y, h)
        self.sumsq.index_add_(0, y, h * h)

    def moments(self) -> tuple[torch.Tensor, torch.Tensor]:
        n = self.count.clamp(min=1).unsqueeze(1)
        return self.sum / n, self.sumsq / n


def sample_features(stats: ArrayRecord, n: int, generator: torch.Generator, std_max: float | None = None) -> tuple[torch.Tensor, torch.Tensor] | None:
    """n class-balanced draws from N(mean_c, diag var_c) over the classes the statistics cover, with
    each standard deviation capped at ``std_max`` (None: no cap)."""
    count = torch.from_numpy(stats["count"].numpy())
    classes = torch.nonzero(count > 0).flatten()
    if len(classes) == 0 or n == 0:
        return None
    mean = torch.from_numpy(stats["mean"].numpy()).float()
    std = torch.from_numpy(stats["var"].numpy()).float().clamp(min=0).sqrt()
    if std_max is not None:
        std = std.clamp(max=std_max)
    labels = classes[torch.randint(len(classes), (n,), generator=generator)]
    noise = torch.randn((n, mean.shape[1]), generator=generator)
    return mean[labels] + std[labels] * noise, labels


class FedImproClient(Client):
    def train(self, content: RecordDict, server_round: int) -> RecordDict:
        data = self.env.data.dataset
        self.global_stats: ArrayRecord = content["feature-stats"]
        self.weight = float(content["config"]["fedimpro-lambda"])
        self.low, self.high = split_model(self.env.model, self.env.cfg.strategy.split_at)
        self.collected: FeatureStats | None = None
        self.draws = torch_generator(self.env.cfg.seed, "fedimpro-draw", server_round, self.env.client_id)
        reply = super().train(content, server_round)
        if self.collected is None:  # no local step ran (empty client): share nothing
            self.collected = FeatureStats(data.num_classes, self.global_stats["mean"].shape[1])
        reply["feature-stats"] = self.shared_stats(server_round)
        return reply

    def batch_loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = self.low(x)
        if self.collected is None:
            self.collected = FeatureStats(self.env.data.dataset.num_classes, h[0].numel())
        self.collected.add(h, y)
        std_max = self.env.cfg.strategy.feature_std_max
        fake = sample_features(self.global_stats, len(y), self.draws, std_max) if self.weight > 0 else None
        if fake is None:
            return self.loss(model, self.high(h), y)
        h_fake = fake[0].to(h.device).view(-1, *h.shape[1:])
        logits = self.high(torch.cat([h, h_fake]))
        real, synthetic = logits[: len(y)], logits[len(y) :]
        return self.loss(model, real, y) + self.weight * F.cross_entropy(synthetic, fake[1].to(h.device))

    def shared_stats(self, server_round: int) -> ArrayRecord:
        """count, E[h], E[h^2] per class, both moments with Gaussian noise of std ``stats_noise_std``."""
        mean, second = self.collected.moments()
        sigma = float(self.env.cfg.strategy.stats_noise_std)
        if sigma > 0:
            noise = torch_generator(self.env.cfg.seed, "fedimpro-stats-noise", server_round, self.env.client_id)
            mean = mean + sigma * torch.randn(mean.shape, generator=noise, dtype=torch.float64)
            second = second + sigma * torch.randn(second.shape, generator=noise, dtype=torch.float64)
        return ArrayRecord({"count": self.collected.count.clone(), "mean": mean.float(), "second": second.float()})


CLIENT = FedImproClient
