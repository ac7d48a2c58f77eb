"""Datasets (loaded once per process, kept as tensors) and client partitioners."""

from fedsim.data.datasets import ImageDataset, dataset_from_config, load_dataset
from fedsim.data.partition import ClientSplit, make_partition, personal_test_split

__all__ = [
    "ImageDataset",
    "dataset_from_config",
    "load_dataset",
    "ClientSplit",
    "make_partition",
    "personal_test_split",
]
