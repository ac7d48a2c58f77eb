"""The observer that runs a gradient-inversion attack on a client's model update in a federated run.

It sees the reply exactly as the server receives it (after every defence), rebuilds the update
as returned weights minus the weights the client was sent, and replays the round's protocol
(lr, local epochs, batch size, momentum, sample count). Reconstructions are scored against the
client's own training images.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from typing_extensions import override

from fedsim.numerics import optimizer_momentum
from fedsim.privacy.attacks.base import Attack, AttackResult, ClientView, ImageSpace, received_model, score_images
from fedsim.privacy.attacks.gradient_inversion import GradientInversion
from fedsim.privacy.attacks.labels import largest_remainder
from fedsim.privacy.attacks.observation import Observation
from fedsim.privacy.defences.update import float_update
from fedsim.protocols.messages import BATCH_SIZE, LOCAL_EPOCHS, LR, NUM_EXAMPLES
from fedsim.records import arrays_of, config_of, has_record, integer, metrics_of, number
from fedsim.seeding import torch_generator


def label_sample(labels: torch.Tensor, n: int, num_classes: int) -> torch.Tensor:
    """``n`` labels distributed as ``labels`` are (what label-count recovery should find)."""
    counts = largest_remainder(torch.bincount(labels, minlength=num_classes).double(), n)
    return torch.repeat_interleave(torch.arange(num_classes), counts)


def observed_update(view: ClientView) -> Observation | None:
    """The client's update as the server sees it; None when the reply carries no model like the one sent."""
    if not has_record(view.sent) or not has_record(view.reply):
        return None
    sent, returned = arrays_of(view.sent), arrays_of(view.reply)
    if set(sent.keys()) != set(returned.keys()):
        return None
    model, config = received_model(view), config_of(view.sent)
    trainable = {k for k, p in model.named_parameters() if p.requires_grad}
    return Observation(
        model,
        {k: v for k, v in float_update(sent, returned).items() if k in trainable},
        "delta",
        num_examples=integer(metrics_of(view.reply), NUM_EXAMPLES),
        batch_size=integer(config, BATCH_SIZE),
        local_epochs=integer(config, LOCAL_EPOCHS),
        lr=number(config, LR),
        momentum=optimizer_momentum(view.env.cfg.optimizer),
    )


@dataclass
class UpdateLeakage(Attack):
    """A gradient inversion (``method``) of each attacked client's model update."""

    method: GradientInversion
    num_images: int = 4  # images to recover when the client trained on too many to replay
    seed: int = 0
    lpips_home: str | None = None

    @override
    def observe(self, view: ClientView) -> AttackResult | None:
        obs = observed_update(view)
        if obs is None:
            return None
        data = view.env.data
        space = ImageSpace.of(data.dataset)
        generator = torch_generator(self.seed, "attack", view.server_round, view.client_id)
        rec = self.method.reconstruct(obs, self.num_images, space, generator)
        truth = (
            data.y if len(rec.labels) == len(data) else label_sample(data.y, len(rec.labels), data.dataset.num_classes)
        )
        return score_images(space.to_unit(rec.images), data.x.float() / 255.0, rec.labels, truth, self.lpips_home)
