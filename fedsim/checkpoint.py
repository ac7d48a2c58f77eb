"""Server checkpoints: global model, strategy state and the round they follow."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord

from fedsim.records import from_numpy, to_numpy


@dataclass
class Checkpoint:
    server_round: int
    arrays: ArrayRecord
    strategy_state: dict[str, Any]
    privacy_state: dict[str, Any] = field(default_factory=dict)  # the DP ledger, if any


def _tensors(tree: Any) -> Any:
    if isinstance(tree, dict):
        return {k: _tensors(v) for k, v in tree.items()}
    if isinstance(tree, np.ndarray):
        return torch.from_numpy(np.asarray(tree, order="C"))
    return tree


def _arrays(tree: Any) -> Any:
    if isinstance(tree, dict):
        return {k: _arrays(v) for k, v in tree.items()}
    if isinstance(tree, torch.Tensor):
        return tree.numpy()
    return tree


def save_checkpoint(folder: Path, ckpt: Checkpoint) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"round_{ckpt.server_round:06d}.pt"
    tmp = path.with_suffix(".tmp")
    torch.save(
        {
            "round": ckpt.server_round,
            "arrays": _tensors(to_numpy(ckpt.arrays)),
            "strategy": _tensors(ckpt.strategy_state),
            "privacy": _tensors(ckpt.privacy_state),
        },
        tmp,
    )
    os.replace(tmp, path)
    return path


def latest_checkpoint(folder: Path) -> Checkpoint | None:
    paths = sorted(folder.glob("round_*.pt")) if folder.is_dir() else []
    if not paths:
        return None
    data = torch.load(paths[-1], weights_only=True)
    return Checkpoint(
        int(data["round"]), from_numpy(_arrays(data["arrays"])), _arrays(data["strategy"]), _arrays(data.get("privacy", {}))
    )
