"""Persistent client state (control variates, personal models, masks), owned by the client.

Each client keeps one versioned file per round it trained in, under ``<root>/<client id>/``.
A client loads the newest version older than the current round, so a run resumed from the
checkpoint of round R sees exactly the state it had after round R; versions that no checkpoint
can need any more are pruned. Idle clients cost disk only, no memory.
"""

from __future__ import annotations

import os
from functools import cached_property, lru_cache
from pathlib import Path

import torch

SHARED = "shared"  # <root>/shared/<digest>.pt: large payloads a client keeps, stored once per content


@lru_cache(maxsize=2)
def _load_shared(path: str) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)


class ClientStateStore:
    """A client's files across rounds: its state per round (kept up to the last checkpoint) and shared payloads."""

    def __init__(self, root: str | Path, client_id: int) -> None:
        self.root, self.client_id = root, client_id  # paths built on first use: most clients never store

    @cached_property
    def folder(self) -> Path:
        """The folder of the client's versioned state files."""
        return Path(self.root) / f"{self.client_id:06d}"

    @cached_property
    def shared(self) -> Path:
        """Payloads stored once per content, shared by the clients of this root."""
        return Path(self.root) / SHARED

    def keep_shared(self, digest: str, tensors: dict[str, torch.Tensor]) -> None:
        """Keep a large payload under its content digest.

        Keep a large payload (e.g. FedFed's global shared set) under its content digest. Clients of one
        simulation share the folder, so it is stored once; a device stores its own copy.
        """
        path = self.shared / f"{digest}.pt"
        if path.is_file():
            return
        self.shared.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{digest}.{os.getpid()}.tmp")
        torch.save({k: v.detach().cpu() for k, v in tensors.items()}, tmp)
        os.replace(tmp, path)

    def shared_payload(self, digest: str) -> dict[str, torch.Tensor] | None:
        """The payload kept under ``digest`` (cached per process), or None if this client never got it."""
        path = self.shared / f"{digest}.pt"
        return _load_shared(str(path)) if path.is_file() else None

    def _versions(self) -> list[int]:
        if not self.folder.is_dir():
            return []
        return sorted(int(p.stem) for p in self.folder.glob("*.pt"))

    def load(self, before_round: int) -> dict[str, torch.Tensor] | None:
        """The newest saved state from a round earlier than ``before_round``, or None."""
        older = [v for v in self._versions() if v < before_round]
        if not older:
            return None
        return torch.load(self.folder / f"{older[-1]:06d}.pt", weights_only=True)

    def save(self, server_round: int, state: dict[str, torch.Tensor], last_checkpoint: int) -> None:
        """Store the state after ``server_round``; keep what a resume from ``last_checkpoint`` needs."""
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.folder / f".{server_round:06d}.tmp"
        torch.save({k: v.detach().cpu() for k, v in state.items()}, tmp)
        os.replace(tmp, self.folder / f"{server_round:06d}.pt")
        versions = self._versions()
        needed = [v for v in versions if v <= last_checkpoint]
        keep_from = needed[-1] if needed else versions[0]
        for v in versions:
            if v < keep_from:
                (self.folder / f"{v:06d}.pt").unlink(missing_ok=True)


def discard_after(root: str | Path, server_round: int) -> None:
    """Delete every client's versions newer than ``server_round`` (before resuming from it)."""
    root = Path(root)
    if root.is_dir():
        for path in root.glob("*/*.pt"):
            if path.parent.name != SHARED and int(path.stem) > server_round:
                path.unlink()
