"""Defences that change a client's model update before it is sent: the shared plumbing."""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np
import torch
from flwr.app import Array, ArrayRecord

from fedsim.numerics import tensor_sum

Tensors = dict[str, torch.Tensor]


def float_update(sent: ArrayRecord, returned: ArrayRecord) -> Tensors:
    """Returned minus sent weights, for every floating-point array of the model."""
    update = {}
    for key in returned.keys():
        new = returned[key].numpy()
        if np.issubdtype(new.dtype, np.floating):
            update[key] = torch.from_numpy(new.astype(np.float32)) - torch.from_numpy(
                sent[key].numpy().astype(np.float32)
            )
    return update


def with_update(sent: ArrayRecord, returned: ArrayRecord, update: Tensors) -> ArrayRecord:
    """The record a client sends when its update is ``update`` (other arrays as returned)."""
    out = {}
    for key in returned.keys():
        if key in update:
            base = sent[key].numpy()
            out[key] = Array((torch.from_numpy(base.astype(np.float32)) + update[key]).numpy().astype(base.dtype))
        else:
            out[key] = returned[key]
    return ArrayRecord(out)


class UpdateDefence(ABC):
    """A defence that changes a client's model update before it is sent.

    A defence that changes a client's model update before it is sent (local DP, pruning); the ClientApp mod
    :func:`fedsim.privacy.mods.defence_mod` applies it to every train reply.
    """

    @abstractmethod
    def transform_update(self, update: Tensors, generator: torch.Generator) -> Tensors:
        """The update to send instead of ``update`` (trained minus received weights).

        Parameters
        ----------
        update
            Per floating-point array of the model, the client's trained minus received weights.
        generator
            The source of any randomness the defence draws (seeded per client and round).

        Returns
        -------
        dict[str, torch.Tensor]
            The defended update, with the same keys and shapes.
        """

    def transform(self, sent: ArrayRecord, returned: ArrayRecord, generator: torch.Generator) -> ArrayRecord:
        """The model record to send instead of ``returned``, the one trained from ``sent``."""
        return with_update(sent, returned, self.transform_update(float_update(sent, returned), generator))


def global_norm(update: Tensors) -> float:
    """L2 norm of an update, all its arrays as one vector."""
    return float(torch.sqrt(tensor_sum(v.double().pow(2).sum() for v in update.values())))


def clip(update: Tensors, max_norm: float) -> Tensors:
    """Scale the update to L2 norm at most ``max_norm`` (all arrays as one vector)."""
    scale = min(1.0, max_norm / max(global_norm(update), 1e-12))
    return {k: v * scale for k, v in update.items()}
