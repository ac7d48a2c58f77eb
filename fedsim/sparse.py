"""Sparse model encoding for the wire: the values a mask keeps plus the mask as a bitmap.

A masked tensor ``name`` travels as ``name#values`` (float32, the kept entries in row-major order)
and ``name#mask`` (uint8, ``np.packbits`` of the flattened mask: numel / 8 bytes); unmasked
tensors (biases, normalisation parameters, buffers) travel dense under their own name. This is
what DisPFL's peers send each other, and the bytes the link accounting counts; DisPFL's clients
also keep their state on disk in this form.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord

from fedsim.records import from_numpy

VALUES, MASK = "#values", "#mask"


def pack_mask(mask: torch.Tensor) -> np.ndarray:
    """A 0/1 mask as a bitmap: ``np.packbits`` of the flattened mask (numel / 8 bytes)."""
    return np.packbits(mask.detach().cpu().bool().flatten().numpy())


def unpack_mask(packed: np.ndarray, shape: tuple[int, ...], name: str) -> np.ndarray:
    """The boolean mask of ``shape`` a bitmap encodes; raises ValueError naming ``name`` if it does not fit."""
    numel = int(np.prod(shape))
    if packed.dtype != np.uint8 or packed.size != (numel + 7) // 8:
        raise ValueError(f"'{name}' must be {(numel + 7) // 8} packed bytes")
    return np.unpackbits(packed, count=numel).astype(bool).reshape(shape)


def sparse_arrays(weights: dict[str, torch.Tensor], masks: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """Weights (a state dict) with the tensors in ``masks`` as values + bitmap, as NumPy arrays."""
    out: dict[str, np.ndarray] = {}
    for name, w in weights.items():
        w = w.detach().cpu()
        if name in masks:
            keep = masks[name].detach().cpu().bool().flatten().numpy()
            out[name + VALUES] = w.flatten().numpy()[keep]
            out[name + MASK] = np.packbits(keep)
        else:
            out[name] = w.numpy()
    return out


def encode_sparse(weights: dict[str, torch.Tensor], masks: dict[str, torch.Tensor]) -> ArrayRecord:
    """Weights (a state dict) with the tensors in ``masks`` sent as values + bitmap."""
    return from_numpy(sparse_arrays(weights, masks))


def decode_sparse(
    record: ArrayRecord | Mapping[str, Any], shapes: dict[str, tuple[int, ...]], dtypes: dict[str, str] | None = None
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Dense weights and float masks from a sparse encoding.

    (dense weights with zeros outside the masks, masks as float tensors) from an encoded record, or from the
    same arrays kept as tensors; ``shapes`` are the model's tensor shapes and ``dtypes``, when given, their
    dtypes. Raises ValueError naming what does not fit.
    """
    weights, masks = {}, {}
    expected = set()
    for name, shape in shapes.items():
        want = (dtypes or {}).get(name)
        sent = record[name + VALUES] if name + VALUES in record else record[name] if name in record else None
        if want is not None and sent is not None and str(sent.dtype) != str(want):
            raise ValueError(f"'{name}' has dtype {sent.dtype}, expected {want}")
        if name + MASK in record:
            expected |= {name + VALUES, name + MASK}
            keep = unpack_mask(record[name + MASK].numpy(), shape, name + MASK)
            values = record[name + VALUES].numpy()
            if values.size != int(keep.sum()):
                raise ValueError(f"'{name}{VALUES}' has {values.size} values for {int(keep.sum())} kept entries")
            dense = np.zeros(shape, dtype=values.dtype)
            dense[keep] = values
            weights[name] = torch.from_numpy(dense)
            masks[name] = torch.from_numpy(keep.astype(np.float32))
        elif name in record:
            expected.add(name)
            if tuple(record[name].shape) != tuple(shape):
                raise ValueError(f"'{name}' has shape {tuple(record[name].shape)}, expected {tuple(shape)}")
            weights[name] = torch.from_numpy(record[name].numpy().copy())
        else:
            raise ValueError(f"'{name}' is missing")
    unexpected = sorted(set(record.keys()) - expected)
    if unexpected:
        raise ValueError(f"unexpected arrays {unexpected[:3]}")
    return weights, masks
