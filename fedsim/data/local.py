"""One client's samples as views into the dataset's tensors."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from fedsim.data.augment import shift_flip
from fedsim.data.datasets import ImageDataset


@dataclass
class LocalData:
    """One client's samples: uint8 images, labels, and the dataset they come from (its statistics)."""

    x: torch.Tensor
    y: torch.Tensor
    dataset: ImageDataset

    def __len__(self) -> int:
        return len(self.y)

    def index_batches(self, batch_size: int, generator: torch.Generator | None = None) -> Iterator[torch.Tensor]:
        """Index minibatches over the samples; shuffled when a generator is given."""
        order = torch.randperm(len(self.y), generator=generator) if generator is not None else torch.arange(len(self.y))
        return iter(order.split(batch_size))

    def batches(
        self, batch_size: int, device: torch.device, generator: torch.Generator | None = None, augment: bool = False
    ):
        """Yield normalised (x, y) batches.

        Shuffled when a generator is given; with ``augment``, each image randomly cropped and flipped
        (:func:`fedsim.data.augment.shift_flip`, drawn from ``generator``).
        """
        for idx in self.index_batches(batch_size, generator):
            x = self.x[idx]
            if augment and generator is not None:
                x = shift_flip(x, generator, self.dataset.hflip)
            yield self.dataset.normalize(x).to(device, non_blocking=True), self.y[idx].to(device, non_blocking=True)
