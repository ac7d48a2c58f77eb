"""Datasets (loaded once per process, kept as tensors) and client partitioners."""

from fedsim.data.datasets import ImageDataset, load_dataset
from fedsim.data.partition import ClientSplit, make_partition

__all__ = ["ImageDataset", "load_dataset", "ClientSplit", "make_partition"]
