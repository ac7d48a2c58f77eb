"""Membership inference on the global model (Yeom et al. 2018; Salem et al. 2019).

Members are the attacked client's training samples, non-members as many held-out test samples.
Three threshold attacks, each a score that should be higher for members: the negative loss, the
top-class confidence and the negative prediction entropy. Reported as AUC and TPR at 1% FPR.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn import functional as F
from typing_extensions import override

from fedsim.params import spec
from fedsim.privacy.attacks.base import Attack, AttackResult, ClientView, received_model
from fedsim.privacy.metrics import membership_scores
from fedsim.records import has_record
from fedsim.seeding import torch_generator


@torch.no_grad()
def membership_signals(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per sample of (x, y): the model's log-likelihood of the label, its top confidence and its negative entropy."""
    logits = torch.cat([model(chunk) for chunk in x.split(500)])
    log_p = F.log_softmax(logits, dim=1)
    return {
        "loss": -F.nll_loss(log_p, y, reduction="none"),
        "confidence": log_p.exp().max(1).values,
        "entropy": (log_p.exp() * log_p).sum(1),
    }


@dataclass
class MembershipInference(Attack):
    """Membership inference on a client's returned model.

    Members (its training samples) against non-members (test samples), scored by loss, confidence and entropy
    (AUROC, TPR at low FPR).

    """

    max_samples: int = spec("members and non-members scored", ge=1, default=500)
    seed: int = 0

    @override
    def observe(self, view: ClientView) -> AttackResult | None:
        if not has_record(view.sent):
            return None
        env = view.env
        data = env.data
        model = received_model(view)
        generator = torch_generator(self.seed, "attack-membership", view.server_round, view.client_id)
        n = min(self.max_samples, len(data))
        members = torch.randperm(len(data), generator=generator)[:n]
        outside = torch.randperm(len(data.dataset.y_test), generator=generator)[:n]
        norm = data.dataset.normalize
        inside_scores = membership_signals(model, norm(data.x[members]), data.y[members])
        outside_scores = membership_signals(model, norm(data.dataset.x_test[outside]), data.dataset.y_test[outside])
        metrics = {}
        for signal in inside_scores:
            for key, value in membership_scores(inside_scores[signal], outside_scores[signal]).items():
                metrics[f"{signal}_{key}"] = value
        return AttackResult(metrics)
