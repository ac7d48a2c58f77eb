"""What every attack shares: the image space it optimises in, the client view it observes, results."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from flwr.app import RecordDict

from fedsim.privacy.metrics import image_scores, label_accuracy
from fedsim.records import arrays_of


@dataclass(frozen=True)
class ImageSpace:
    """Model inputs are images in [0, 1] standardised per channel; attacks optimise in that space."""

    shape: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def _stats(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        view = (1, -1, 1, 1)
        return torch.tensor(self.mean, device=x.device).view(view), torch.tensor(self.std, device=x.device).view(view)

    def to_unit(self, x: torch.Tensor) -> torch.Tensor:
        """Model inputs back to images in [0, 1]."""
        mean, std = self._stats(x)
        return (x * std + mean).clamp(0, 1)

    def from_unit(self, x01: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] as model inputs (standardised per channel)."""
        mean, std = self._stats(x01)
        return (x01 - mean) / std

    def clamp(self, x: torch.Tensor) -> torch.Tensor:
        """Project onto valid images (the 'boxed' constraint)."""
        mean, std = self._stats(x)
        return torch.maximum(torch.minimum(x, (1 - mean) / std), -mean / std)

    @classmethod
    def of(cls, dataset: Any) -> ImageSpace:
        """The image space of a dataset."""
        return cls(tuple(dataset.input_shape), tuple(dataset.mean), tuple(dataset.std))


@dataclass
class AttackResult:
    """Leakage metrics (means over the attacked samples), and images for the grid."""

    metrics: dict[str, float]
    originals: torch.Tensor | None = None  # [0, 1], matched to the reconstructions
    reconstructions: torch.Tensor | None = None
    per_sample: dict[str, list[float]] = field(default_factory=dict)


@dataclass
class ClientView:
    """One client's round as the server sees it, plus the ground truth used only for scoring."""

    client_id: int
    server_round: int
    sent: RecordDict  # what the client received
    reply: RecordDict  # what it sent back (after every defence)
    env: Any  # clients.base.ClientEnv: its data (ground truth), model instance, config


def received_model(view: ClientView) -> torch.nn.Module:
    """The attacker's copy of the model at the weights the client received (what the server sent)."""
    from fedsim.privacy.attacks.observation import attacker_copy
    from fedsim.records import load_record

    model = attacker_copy(view.env.model)
    load_record(model, arrays_of(view.sent))
    return model


class Attack(Protocol):
    """What the attack mod calls with each attacked client's round."""

    def observe(self, view: ClientView) -> AttackResult | None:
        """Attack one client's reply; None when the reply carries nothing this attack targets."""


def score_images(
    reconstructions01: torch.Tensor,
    originals01: torch.Tensor,
    labels: torch.Tensor | None = None,
    true_labels: torch.Tensor | None = None,
    lpips_home: str | None = None,
) -> AttackResult:
    """Match reconstructions to originals (Hungarian) and score them; label accuracy when given."""
    scores = image_scores(reconstructions01, originals01, lpips_home)
    matched = scores.pop("matched")
    per_sample = {k: [float(v) for v in vals] for k, vals in scores.items()}
    metrics = {k: float(vals.mean()) for k, vals in scores.items()}
    if labels is not None and true_labels is not None:
        metrics["label_accuracy"] = label_accuracy(labels, true_labels)
    return AttackResult(metrics, matched, reconstructions01.detach().cpu().clamp(0, 1), per_sample)
