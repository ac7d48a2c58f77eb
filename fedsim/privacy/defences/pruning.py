"""Gradient pruning (Zhu et al., NeurIPS 2019, the DLG paper's defence): each client zeroes the
``ratio`` smallest-magnitude entries of every array of its update before sending it."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from flwr.app import ArrayRecord

from fedsim.params import spec
from fedsim.privacy.defences.update import Tensors, float_update, with_update


def prune(update: Tensors, ratio: float) -> Tensors:
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
class GradientPruning:
    ratio: float = spec("fraction of the smallest-magnitude update entries zeroed", ge=0, lt=1, default=0.9)

    def transform_update(self, update: Tensors, generator: torch.Generator) -> Tensors:
        return prune(update, self.ratio)

    def transform(self, sent: ArrayRecord, returned: ArrayRecord, generator: torch.Generator) -> ArrayRecord:
        return with_update(sent, returned, self.transform_update(float_update(sent, returned), generator))
