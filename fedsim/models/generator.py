"""FedFed's feature-distillation generator: a small convolutional VAE in pixel space.

G maps an image x in [0, 1] to its performance-robust part x_r = G(x) in [0, 1]; the
performance-sensitive part is x_s = x - G(x). Training (``clients/fedfed.py``) keeps x_r close to x
while a classifier must still recognise the class from noised x_s, which pushes the class
information that survives noise into x_s (Yang et al., NeurIPS 2023, Sec. 3).
"""

from __future__ import annotations

import torch
from torch import nn


class FeatureGenerator(nn.Module):
    """FedFed's feature generator G: a VAE whose reconstruction is the robust part of x.

    ``latent=None`` keeps the latent as wide as the encoder's output (the official VAE maps its 2048 encoder
    features to a 2048-d latent: no bottleneck, so G can reconstruct x closely).
    """

    def __init__(self, input_shape: tuple[int, int, int], width: int = 32, latent: int | None = None) -> None:
        super().__init__()
        channels, height, width_px = input_shape
        if height % 4 or width_px % 4:
            raise ValueError(f"the FedFed generator needs image sides divisible by 4, got {height}x{width_px}")
        self.grid = (width, height // 4, width_px // 4)
        flat = width * (height // 4) * (width_px // 4)
        latent = flat if latent is None else latent
        self.encoder = nn.Sequential(
            nn.Conv2d(channels, width // 2, 4, 2, 1, bias=False),
            nn.BatchNorm2d(width // 2),
            nn.ReLU(inplace=True),
            nn.Conv2d(width // 2, width, 4, 2, 1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.Flatten(),
        )
        self.mu = nn.Linear(flat, latent)
        self.logvar = nn.Linear(flat, latent)
        self.expand = nn.Linear(latent, flat)
        self.decoder = nn.Sequential(
            nn.ConvTranspose2d(width, width // 2, 4, 2, 1, bias=False),
            nn.BatchNorm2d(width // 2),
            nn.LeakyReLU(inplace=True),
            nn.ConvTranspose2d(width // 2, channels, 4, 2, 1),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(x_r, mu, logvar); the latent is sampled in training mode and is the mean in eval mode."""
        h = self.encoder(x)
        mu, logvar = self.mu(h), self.logvar(h)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp() if self.training else mu
        return self.decoder(self.expand(z).view(-1, *self.grid)), mu, logvar


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL divergence to the standard normal, with the official FedFed normalisation.

    KL(N(mu, exp(logvar)) || N(0, I)) summed over batch and latent, divided by batch x 3 x latent size: the
    official FedFed normalisation (its 3, the RGB channel count, is kept for grey images too, so that
    ``weight_kl`` means what it means there).
    """
    batch, latent = mu.shape
    return -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp()) / (batch * 3 * latent)
