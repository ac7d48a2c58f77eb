"""Inversion of FedImpro's shared feature statistics (Tang et al., ICLR 2024).

FedImpro clients share, per class, the (noised) mean and standard deviation of their features at
the split layer. The server holds the low model, so it optimises a few images per class whose
split-layer features have that mean and variance (with a total-variation prior), then scores each
against the nearest client image of that class (Hungarian matching within the class).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from typing_extensions import override

from fedsim.models import split_model
from fedsim.params import spec
from fedsim.privacy.attacks.base import Attack, AttackResult, ClientView, ImageSpace, received_model, score_images
from fedsim.privacy.attacks.gradient_inversion import total_variation
from fedsim.protocols.fedimpro import FEATURE_STATS, MEAN, STD
from fedsim.records import arrays_of, has_record
from fedsim.seeding import torch_generator


@dataclass
class StatisticsInversion(Attack):
    """Attack on FedImpro's shared per-class feature statistics.

    Images whose features match a class's shared mean and variance.

    """

    iterations: int = spec("Adam iterations", ge=1, default=200)
    lr: float = spec("Adam step size", gt=0, default=0.1)
    tv: float = spec("weight of the total-variation prior", ge=0, default=1e-3)
    images_per_class: int = spec("images reconstructed per class", ge=1, default=4)
    max_classes: int = spec("the client's classes with most samples attacked", ge=1, default=3)
    seed: int = 0

    @override
    def observe(self, view: ClientView) -> AttackResult | None:
        if not has_record(view.reply, FEATURE_STATS) or not has_record(view.sent):
            return None
        env = view.env
        stats = arrays_of(view.reply, FEATURE_STATS)
        mean = torch.from_numpy(stats[MEAN].numpy()).float()
        var = torch.from_numpy(stats[STD].numpy()).float().pow(2)
        count = torch.bincount(env.data.y, minlength=len(mean))  # the client's classes, to score against
        low, _ = split_model(received_model(view), env.cfg.strategy.split_at)
        space = ImageSpace.of(env.data.dataset)
        generator = torch_generator(self.seed, "attack-stats", view.server_round, view.client_id)
        classes = [int(c) for c in torch.argsort(count, descending=True)[: self.max_classes] if count[c] > 0]
        per_class = []
        for c in classes:
            x = torch.randn((self.images_per_class, *space.shape), generator=generator).requires_grad_(True)
            optimizer = torch.optim.Adam([x], lr=self.lr)
            for _ in range(self.iterations):
                h = low(x).flatten(1)
                loss = (h.mean(0) - mean[c]).pow(2).sum() + (h.var(0, unbiased=False) - var[c]).pow(2).sum()
                loss = loss / mean[c].pow(2).sum().clamp_min(1e-8) + self.tv * total_variation(x)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                with torch.no_grad():
                    x.copy_(space.clamp(x))
            per_class.append(score_images(space.to_unit(x.detach()), env.data.x[env.data.y == c].float() / 255.0))
        if not per_class:
            return None
        per_sample = {k: sum((r.per_sample[k] for r in per_class), []) for k in per_class[0].per_sample}
        return AttackResult(
            {k: sum(v) / len(v) for k, v in per_sample.items()},
            torch.cat([r.originals for r in per_class if r.originals is not None]),
            torch.cat([r.reconstructions for r in per_class if r.reconstructions is not None]),
            per_sample,
        )
