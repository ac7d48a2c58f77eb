"""Inversion of FedFed's shared features (Yang et al., NeurIPS 2023).

FedFed clients share two noised copies of x_s = x - G(x), the performance-sensitive part of each
sample: x_s + N(0, s1^2) and x_s + N(0, s2^2). The server sees both, so it first combines them by
inverse-variance weighting (a less noisy estimate of x_s than either copy), then measures what
that reveals three ways:

- ``direct``: the estimate of x_s itself against the original image;
- ``decoder``: a learned inversion: the server holds the generator G it aggregated, so it builds
  (noised x_s, x) pairs from public images (the dataset's test split, disjoint from clients' data)
  and trains a small decoder from shared features back to images;
- ``fixed_point``: since G is known, x solves x - G(x) = x_s; the attack minimises
  ||x - G(x) - x_s||^2 over images x in [0, 1] (Adam from x_s + G(x_s)).

``psnr``/``ssim`` report the strongest of the three (highest PSNR). ``reference_psnr``/``_ssim``
score the mean public image, the best constant guess of an attacker who learns nothing from the
shared features: the level below which a reconstruction reveals nothing about a client's images.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F
from typing_extensions import override

from clients.fedfed import distillation_pair
from fedsim.numerics import tensor_sum
from fedsim.params import spec
from fedsim.privacy.attacks.base import Attack, AttackResult, ClientView
from fedsim.privacy.metrics import psnr, ssim
from fedsim.protocols.fedfed import SHARED_FEATURES, shared_copy_keys
from fedsim.records import arrays_of, has_record
from fedsim.seeding import torch_generator


def decoder(channels: int, width: int = 32) -> nn.Module:
    """A small convolutional decoder from shared features back to images (the public-data attack)."""
    return nn.Sequential(
        nn.Conv2d(channels, width, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(width, width, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(width, channels, 3, padding=1),
        nn.Sigmoid(),
    )


def combine_copies(copies: list[torch.Tensor], sigmas: list[float]) -> tuple[torch.Tensor, float]:
    """Inverse-variance weighted mean of noised copies of one signal, and its noise std.

    Inverse-variance weighted mean of noised copies of one signal (independent noise of std ``sigmas``), and
    the noise std of that mean; a noiseless copy is the signal itself.
    """
    for copy, sigma in zip(copies, sigmas):
        if sigma == 0:
            return copy, 0.0
    weights = [1 / sigma**2 for sigma in sigmas]
    total = sum(weights)
    return tensor_sum(w * copy for w, copy in zip(weights, copies)) / total, (1 / total) ** 0.5


def fixed_point_inversion(generator: nn.Module, x_s: torch.Tensor, steps: int, lr: float) -> torch.Tensor:
    """The x in [0, 1] minimising ||x - G(x) - x_s||^2, by Adam with the box enforced after each step."""
    with torch.no_grad():
        x = (x_s + generator(x_s.clamp(0, 1))[0]).clamp(0, 1)
    x.requires_grad_(True)
    optimizer = torch.optim.Adam([x], lr=lr)
    for _ in range(steps):
        loss = (x - generator(x)[0] - x_s).pow(2).sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            x.clamp_(0, 1)
    return x.detach()


@dataclass
class SharedFeatureInversion(Attack):
    """Attack on FedFed's shared features.

    A decoder trained on public data, and the fixed-point inversion min_x ||x - G(x) - x_s||^2 through the
    generator G the server knows.

    """

    decoder_steps: int = spec("training steps of the decoder on public data", ge=0, default=300)
    fixed_point_steps: int = spec("Adam steps of the fixed-point inversion", ge=0, default=300)
    fixed_point_lr: float = spec("Adam step size of the fixed-point inversion", gt=0, default=0.01)
    batch_size: int = spec("decoder batch size", ge=1, default=64)
    max_samples: int = spec("client samples scored", ge=1, default=256)
    seed: int = 0

    @override
    def observe(self, view: ClientView) -> AttackResult | None:
        if not has_record(view.reply, SHARED_FEATURES) or not has_record(view.sent):
            return None
        env, s = view.env, view.env.cfg.strategy
        data = env.data.dataset
        generator = torch_generator(self.seed, "attack-fedfed", view.client_id)
        pair = distillation_pair(env, arrays_of(view.sent)).cpu().eval()
        sigmas = [float(v) for v in s.share_noise_std]
        copies = [
            torch.from_numpy(arrays_of(view.reply, SHARED_FEATURES)[k].numpy()).float()[: self.max_samples]
            for k in shared_copy_keys(len(sigmas))
        ]
        shared, sigma = combine_copies(copies, sigmas)
        originals = env.data.x[: len(shared)].float() / 255.0
        net = decoder(data.input_shape[0])
        optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
        public = data.x_test
        for _ in range(self.decoder_steps):
            x01 = public[torch.randint(len(public), (self.batch_size,), generator=generator)].float() / 255.0
            with torch.no_grad():
                features = x01 - pair.generator(x01)[0] + sigma * torch.randn(x01.shape, generator=generator)
            loss = F.mse_loss(net(features), x01)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        pair.generator.requires_grad_(False)
        candidates = {
            "direct": shared.clamp(0, 1),
            "decoder": net(shared).detach(),
            "fixed_point": fixed_point_inversion(pair.generator, shared, self.fixed_point_steps, self.fixed_point_lr),
        }
        metrics: dict[str, float] = {}
        for name, images in candidates.items():
            metrics[f"{name}_psnr"] = float(psnr(images, originals).mean())
            metrics[f"{name}_ssim"] = float(ssim(images, originals).mean())
        strongest = max(candidates, key=lambda name: metrics[f"{name}_psnr"])
        metrics["psnr"], metrics["ssim"] = metrics[f"{strongest}_psnr"], metrics[f"{strongest}_ssim"]
        reference = (public.float() / 255.0).mean(0, keepdim=True).expand_as(originals)
        metrics["reference_psnr"] = float(psnr(reference, originals).mean())
        metrics["reference_ssim"] = float(ssim(reference.contiguous(), originals).mean())
        return AttackResult(metrics, originals[:8], candidates[strongest][:8])
