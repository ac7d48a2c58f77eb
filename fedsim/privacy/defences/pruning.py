"""Gradient pruning (Zhu et al., NeurIPS 2019, the DLG paper's defence).

Each client zeroes the ``ratio`` smallest-magnitude entries of every array of its update before sending it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from typing_extensions import override

from fedsim.params import spec
from fedsim.privacy.defences.update import Tensors, UpdateDefence


def prune(update: Tensors, ratio: float) -> Tensors:
    """``update`` with the ``ratio`` smallest-magnitude entries of each array set to zero."""
    pruned = {}
    for key, value in update.items():
        drop = int(ratio * value.numel())
        if drop == 0:
            pruned[key] = value
            continue
        threshold = value.abs().flatten().kthvalue(drop).values
        pruned[key] = torch.where(value.abs() > threshold, value, torch.zeros_like(value))
    return pruned


@dataclass
class GradientPruning(UpdateDefence):
    """Zero the ``ratio`` smallest-magnitude entries of each array of the update."""

    ratio: float = spec("fraction of the smallest-magnitude update entries zeroed", ge=0, lt=1, default=0.9)

    @override
    def transform_update(self, update: Tensors, generator: torch.Generator) -> Tensors:
        return prune(update, self.ratio)
