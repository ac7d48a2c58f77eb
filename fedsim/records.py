"""Helpers around Flower records: model <-> ArrayRecord, payload sizes, validity checks."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict
from torch import nn


def model_to_record(model: nn.Module) -> ArrayRecord:
    """The model's full state (parameters and buffers) as an ArrayRecord."""
    return ArrayRecord({k: v.detach().cpu() for k, v in model.state_dict().items()})


def load_record(model: nn.Module, record: ArrayRecord) -> None:
    """Copy an ArrayRecord into the model in place (dtypes follow the model)."""
    model.load_state_dict(record.to_torch_state_dict(), strict=True)


def to_numpy(record: ArrayRecord) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in record.items()}


def from_numpy(arrays: dict[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({k: torch.from_numpy(np.asarray(v, order="C")) for k, v in arrays.items()})


def record_bytes(record: ArrayRecord) -> int:
    """Bytes of an ArrayRecord's serialized arrays (what crosses the wire)."""
    return sum(len(a.data) for a in record.values())


def payload_bytes(content: RecordDict) -> int:
    """Bytes of the payload a message carries: array data plus 8 bytes per config/metric value."""
    total = 0
    for record in content.values():
        if isinstance(record, ArrayRecord):
            total += record_bytes(record)
        elif isinstance(record, (ConfigRecord, MetricRecord)):
            total += 8 * sum(len(v) if isinstance(v, (list, bytes, str)) else 1 for v in record.values())
    return total


def shape_mismatch(reference: ArrayRecord, candidate: ArrayRecord) -> str | None:
    """Why ``candidate`` cannot stand in for ``reference`` (keys or shapes), or None."""
    if set(reference.keys()) != set(candidate.keys()):
        missing = sorted(set(reference.keys()) - set(candidate.keys()))
        extra = sorted(set(candidate.keys()) - set(reference.keys()))
        return f"array keys differ (missing {missing[:3]}, unexpected {extra[:3]})"
    for key, ref in reference.items():
        if tuple(candidate[key].shape) != tuple(ref.shape):
            return f"array '{key}' has shape {tuple(candidate[key].shape)}, expected {tuple(ref.shape)}"
        if candidate[key].dtype != ref.dtype:
            return f"array '{key}' has dtype {candidate[key].dtype}, expected {ref.dtype}"
    return None


def non_finite_metric(metrics: Any) -> str | None:
    """Name of the first metric that is a non-finite number (or holds one), or None."""
    for key, value in metrics.items():
        values = value if isinstance(value, list) else [value]
        if any(isinstance(v, float) and not math.isfinite(v) for v in values):
            return key
    return None


def non_finite(record: ArrayRecord) -> str | None:
    """Name of the first array holding NaN or Inf, or None."""
    for key, arr in record.items():
        values = arr.numpy()
        if values.dtype.kind == "f" and not np.isfinite(values).all():
            return key
    return None


def weighted_average(records: list[ArrayRecord], weights: list[float]) -> ArrayRecord:
    """Element-wise weighted mean of ArrayRecords with the same keys (float64 accumulation).

    Each array keeps its dtype; integer buffers (e.g. BatchNorm's step counter) are rounded.
    """
    total = float(sum(weights))
    out: dict[str, np.ndarray] = {}
    for key in records[0].keys():
        acc = None
        for record, w in zip(records, weights):
            term = record[key].numpy().astype(np.float64) * (w / total)
            acc = term if acc is None else acc + term
        dtype = records[0][key].numpy().dtype
        out[key] = (np.rint(acc) if dtype.kind in "iu" else acc).astype(dtype)
    return from_numpy(out)
