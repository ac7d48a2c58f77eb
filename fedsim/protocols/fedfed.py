"""FedFed's protocol.

FedFed's protocol (``strategies/fedfed.py``, ``clients/fedfed.py``): the phases a train message names, the
record keys of the shared copies, and the (G, f) pair both sides build for distillation.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from fedsim.models import model_from_config
from fedsim.models.generator import FeatureGenerator

DISTILL, SHARE, RECEIVE, TRAIN = "distill", "share", "receive", "train"
PHASE = "fedfed-phase"  # in CONFIG: one of the four phases above
POOL_DIGEST = "fedfed-pool"  # in CONFIG (receive, train): the digest of the pool a client must hold
LABELS = "y"  # in SHARED_FEATURES: the labels of the shared copies


def shared_copy_keys(copies: int) -> tuple[str, ...]:
    """The record keys of the shared copies: x1, x2, ... (one per entry of ``share_noise_std``)."""
    return tuple(f"x{k}" for k in range(1, copies + 1))


class DistillationPair(nn.Module):
    """G and the embedded classifier f, trained and averaged together in the distillation phase."""

    def __init__(self, cfg: Any, input_shape: tuple[int, int, int], num_classes: int) -> None:
        super().__init__()
        s = cfg.strategy
        latent = None if s.generator_latent is None else int(s.generator_latent)
        self.generator = FeatureGenerator(input_shape, int(s.generator_width), latent)
        self.classifier = model_from_config(cfg, input_shape, num_classes)


SHARED_FEATURES = "shared"  # a client's noised copies of x_s (share), the server's pooled set (receive): ArrayRecord
