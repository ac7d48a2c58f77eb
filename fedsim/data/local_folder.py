"""A device's own images, for a deployed client that holds real local data instead of a partition.

Layout: ``<folder>/train/<label>/*.png`` (and optionally ``<folder>/test/<label>/*``), where
``<label>`` is the class index in the run's dataset (0 .. num_classes - 1). Images are converted
to the dataset's channels and size, and held as uint8 tensors like every other dataset.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from fedsim.data.datasets import ImageDataset
from fedsim.errors import DataError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"}


def load_image_folder(folder: Path, shape: tuple[int, int, int], num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(uint8 images (N, C, H, W), int64 labels) of ``folder/<label>/*``; empty when ``folder`` is absent."""
    channels, height, width = shape
    images, labels = [], []
    if not folder.is_dir():
        return torch.zeros((0, *shape), dtype=torch.uint8), torch.zeros(0, dtype=torch.long)
    for class_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
        if not class_dir.name.isdigit() or int(class_dir.name) >= num_classes:
            raise DataError(
                f"{class_dir}: class folders must be named by class index 0..{num_classes - 1} of the run's dataset"
            )
        for path in sorted(p for p in class_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
            with Image.open(path) as opened:
                img = opened.convert("L" if channels == 1 else "RGB").resize((width, height))
                array = np.asarray(img, dtype=np.uint8)
            images.append(array[None] if channels == 1 else array.transpose(2, 0, 1))
            labels.append(int(class_dir.name))
    if not images:
        return torch.zeros((0, *shape), dtype=torch.uint8), torch.zeros(0, dtype=torch.long)
    return torch.from_numpy(np.stack(images)), torch.tensor(labels, dtype=torch.long)


def load_device_data(
    root: Path, shape: tuple[int, int, int], num_classes: int
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{'train': ..., 'test': ...} of a device folder (``train/`` may be the folder itself)."""
    if not root.is_dir():
        raise DataError(f"data-dir {root} does not exist: pass a folder laid out as train/<class index>/*.png")
    train_dir = root / "train" if (root / "train").is_dir() else root
    train = load_image_folder(train_dir, shape, num_classes)
    if len(train[1]) == 0:
        raise DataError(f"data-dir {root}: no images under {train_dir}/<class index>/ (png, jpg, ...)")
    return {"train": train, "test": load_image_folder(root / "test", shape, num_classes)}


def dataset_info(dataset: ImageDataset) -> dict:
    """What a device needs to know of the run's dataset to bring its own images into the same format."""
    return {
        "name": dataset.name,
        "shape": list(dataset.input_shape),
        "num_classes": dataset.num_classes,
        "mean": list(dataset.mean),
        "std": list(dataset.std),
        "hflip": dataset.hflip,
    }


def dataset_format(info) -> ImageDataset:
    """An ImageDataset with the run dataset's format and statistics but no samples."""
    empty = torch.zeros((0, *[int(v) for v in info["shape"]]), dtype=torch.uint8)
    labels = torch.zeros(0, dtype=torch.long)
    return ImageDataset(
        str(info["name"]),
        empty,
        labels,
        empty,
        labels,
        int(info["num_classes"]),
        tuple(float(v) for v in info["mean"]),
        tuple(float(v) for v in info["std"]),
        bool(info["hflip"]),
    )
