"""Inversion of FedFed's shared features (Yang et al., NeurIPS 2023).

FedFed clients share x_s + noise, with x_s = x - G(x) the performance-sensitive part of each
sample. Two measures of what that reveals: the shared sample itself against the original
(direct), and a learned inversion: the server holds the generator G it aggregated, so it builds
(noised x_s, x) pairs from public images (the dataset's test split, disjoint from clients' data)
and trains a small decoder from shared features back to images, then applies it to what the
client shared.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from fedsim.privacy.attacks.base import AttackResult, ClientView
from fedsim.privacy.metrics import psnr, ssim
from fedsim.seeding import torch_generator


def decoder(channels: int, width: int = 32) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(),
        nn.Conv2d(width, width, 3, padding=1), nn.ReLU(),
        nn.Conv2d(width, channels, 3, padding=1), nn.Sigmoid(),
    )


@dataclass
class SharedFeatureInversion:
    decoder_steps: int = 300
    batch_size: int = 64
    max_samples: int = 256  # client samples scored
    seed: int = 0

    def observe(self, view: ClientView) -> AttackResult | None:
        if "shared" not in view.reply.array_records or "arrays" not in view.sent.array_records:
            return None
        from clients.fedfed import distillation_pair

        env = view.env
        data = env.data.dataset
        generator = torch_generator(self.seed, "attack-fedfed", view.client_id)
        pair = distillation_pair(env, view.sent["arrays"]).cpu().eval()
        sigma = float(env.cfg.strategy.share_noise_std)
        shared = torch.from_numpy(view.reply["shared"]["x"].numpy()).float()[: self.max_samples]
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
        with torch.no_grad():
            decoded = net(shared)
        direct = shared.clamp(0, 1)
        metrics = {
            "direct_psnr": float(psnr(direct, originals).mean()),
            "direct_ssim": float(ssim(direct, originals).mean()),
            "psnr": float(psnr(decoded, originals).mean()),
            "ssim": float(ssim(decoded, originals).mean()),
        }
        return AttackResult(metrics, originals[:8], decoded[:8])
