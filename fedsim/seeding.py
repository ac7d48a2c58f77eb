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
    """A NumPy generator seeded from ``parts`` (e.g. seed, purpose, round, client)."""
    return np.random.default_rng(derive_seed(*parts))


def torch_generator(*parts: int | str) -> torch.Generator:
    """A torch generator seeded from ``parts`` (e.g. seed, purpose, round, client)."""
    return torch.Generator().manual_seed(derive_seed(*parts))


def seed_torch(*parts: int | str) -> None:
    """Seed torch's global RNG for one unit of work.

    Seed torch's global RNG (dropout, init) for one unit of work: the CPU generator, and CUDA's where CUDA is
    in use (``torch.manual_seed`` also visits every other backend, about 1 ms a call: as long as a small
    client's whole training step).
    """
    seed = derive_seed(*parts)
    torch.default_generator.manual_seed(seed)
    if torch.cuda.is_initialized():
        torch.cuda.manual_seed_all(seed)
