"""Server checkpoints: global model, strategy state and the round they follow."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord

from fedsim import __version__
from fedsim.errors import ConfigError, FedsimError
from fedsim.records import from_numpy, to_numpy


@dataclass
class Checkpoint:
    """A round's checkpoint: the global model, the strategy's and the privacy ledger's state."""

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


def save_checkpoint(folder: Path, ckpt: Checkpoint, keep: int = 0) -> Path:
    """Write the checkpoint of ``ckpt.server_round`` atomically, keeping the newest ``keep`` (0: all).

    Write the checkpoint of ``ckpt.server_round`` atomically (a temporary file, then a rename): if writing
    fails (a full disk), the previous checkpoint stays intact and the error is one line. Once it is written,
    older checkpoints beyond the newest ``keep`` are deleted (a paper-scale DisPFL checkpoint is 2.4 GB).
    """
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"round_{ckpt.server_round:06d}.pt"
    tmp = path.with_suffix(".tmp")
    data = {
        "round": ckpt.server_round,
        "arrays": _tensors(to_numpy(ckpt.arrays)),
        "strategy": _tensors(ckpt.strategy_state),
        "privacy": _tensors(ckpt.privacy_state),
        "fedsim_version": __version__,
    }
    try:
        torch.save(data, tmp)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as err:  # torch reports a failed write as RuntimeError
        tmp.unlink(missing_ok=True)
        kept = sorted(folder.glob("round_*.pt"))
        previous = (
            f"the checkpoint of round {int(kept[-1].stem.split('_')[1])} is intact" if kept else "no earlier checkpoint"
        )
        reason = getattr(err, "strerror", None) or str(err).splitlines()[0]
        raise FedsimError(
            f"cannot write the checkpoint of round {ckpt.server_round} to {folder} ({reason}); {previous}: "
            f"free space and continue with resume={folder.parent}"
        ) from None
    if keep:
        for old in sorted(folder.glob("round_*.pt"))[:-keep]:
            old.unlink(missing_ok=True)
    return path


def version_tuple(version: str) -> tuple[int, ...]:
    """``"1.2.3"`` as ``(1, 2, 3)``, for comparing the fedsim version that wrote a checkpoint."""
    return tuple(int(part) for part in version.split(".") if part.isdigit())


def latest_checkpoint(folder: Path) -> Checkpoint | None:
    """The newest checkpoint in ``folder``, or None where there is none."""
    paths = sorted(folder.glob("round_*.pt")) if folder.is_dir() else []
    if not paths:
        return None
    data = torch.load(paths[-1], weights_only=True)
    written = str(data.get("fedsim_version", "0"))
    if version_tuple(written) > version_tuple(__version__):
        raise ConfigError(
            f"resume={folder.parent}: its checkpoint was written by fedsim {written}, newer than this "
            f"fedsim {__version__}; resume it with that version or newer"
        )
    return Checkpoint(
        int(data["round"]),
        from_numpy(_arrays(data["arrays"])),
        _arrays(data["strategy"]),
        _arrays(data.get("privacy", {})),
    )
