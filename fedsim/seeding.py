"""Seeds flow from config: every random draw is derived from (seed, purpose, round, client)."""

from __future__ import annotations

import hashlib

import numpy as np
import torch


def derive_seed(*parts: int | str) -> int:
    """A stable 63-bit seed from any tuple of ints/strings (same on every process and platform)."""
    digest = hashlib.blake2b("/".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


def rng(*parts: int | str) -> np.random.Generator:
    return np.random.default_rng(derive_seed(*parts))


def torch_generator(*parts: int | str) -> torch.Generator:
    return torch.Generator().manual_seed(derive_seed(*parts))


def seed_torch(*parts: int | str) -> None:
    """Seed torch's global RNG (dropout, init) for one unit of work."""
    torch.manual_seed(derive_seed(*parts))
