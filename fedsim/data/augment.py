"""Batched, per-sample random augmentations on uint8 image tensors (N, C, H, W), seeded.

``weak``: random crop after reflect padding of 1/8 of the side, then random horizontal flip
(``shift_flip`` does the same on float images).
``strong``: weak, then per-sample brightness and contrast jitter (factors in [0.6, 1.4]) and a
random cutout square of up to half the side (FixMatch/RandAugment-style strength, but vectorised:
one call handles a whole batch instead of one PIL image at a time).
"""

from __future__ import annotations

import torch
from torch.nn import functional as F


def _uniform(n: int, low: float, high: float, generator: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=generator)


def shift_flip(x: torch.Tensor, generator: torch.Generator, flip: bool = True) -> torch.Tensor:
    """Random shifts (reflect padding, crop) and horizontal flips of float images.

    Random crop after reflect padding of 1/8 of the side, then random horizontal flip, on float images (any
    range, e.g. FedFed's shared differences x - G(x)).
    """
    n, _, h, w = x.shape
    pad = max(1, h // 8)
    padded = F.pad(x.float(), (pad, pad, pad, pad), mode="reflect")
    oy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    ox = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    rows = (oy[:, None] + torch.arange(h)[None, :])[:, None, :, None]  # (n, 1, h, 1)
    cols = (ox[:, None] + torch.arange(w)[None, :])[:, None, None, :]  # (n, 1, 1, w)
    batch = torch.arange(n)[:, None, None, None]
    chan = torch.arange(x.shape[1])[None, :, None, None]
    out = padded[batch, chan, rows, cols]
    if flip:
        mirror = torch.rand(n, generator=generator) < 0.5
        out = torch.where(mirror[:, None, None, None], out.flip(-1), out)
    return out


def weak(x: torch.Tensor, generator: torch.Generator, flip: bool = True) -> torch.Tensor:
    """:func:`shift_flip` of a uint8 batch, back to uint8."""
    return shift_flip(x, generator, flip).round().clamp(0, 255).to(torch.uint8)


def strong(x: torch.Tensor, generator: torch.Generator, flip: bool = True) -> torch.Tensor:
    """FixMatch's strong view of a uint8 batch: the weak view, then brightness, contrast and a cut-out."""
    out = weak(x, generator, flip).float()
    n, _, h, w = out.shape
    out = out * _uniform(n, 0.6, 1.4, generator)[:, None, None, None]  # brightness
    mean = out.mean(dim=(1, 2, 3), keepdim=True)
    out = mean + (out - mean) * _uniform(n, 0.6, 1.4, generator)[:, None, None, None]  # contrast
    side = (_uniform(n, 0.0, 0.5, generator) * h).long()
    cy = torch.randint(0, h, (n,), generator=generator)
    cx = torch.randint(0, w, (n,), generator=generator)
    ys, xs = torch.arange(h)[None, :, None], torch.arange(w)[None, None, :]
    hole = ((ys - cy[:, None, None]).abs() <= side[:, None, None] // 2) & (
        (xs - cx[:, None, None]).abs() <= side[:, None, None] // 2
    )
    hole &= (side > 0)[:, None, None]
    out = torch.where(hole[:, None], torch.full_like(out, 127.0), out)
    return out.round().clamp(0, 255).to(torch.uint8)
