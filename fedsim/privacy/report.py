"""Attack outputs.

Per-attack JSON records, grid images (originals over reconstructions), tables, and the per-round means a
federated run adds to metrics.jsonl.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from fedsim.privacy.attacks.base import AttackResult


def save_grid(path: Path, originals: torch.Tensor, reconstructions: torch.Tensor, title: str = "") -> Path:
    """A two-row image: originals on top, their reconstructions below ([0, 1] images)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(reconstructions)
    fig, axes = plt.subplots(2, n, figsize=(1.4 * n, 3.0), squeeze=False)
    for row, images in enumerate((originals, reconstructions)):
        for i in range(n):
            ax = axes[row][i]
            img = images[i].detach().cpu().clamp(0, 1)
            pixels = (img[0] if img.shape[0] == 1 else img.permute(1, 2, 0)).numpy()
            ax.imshow(pixels, cmap="gray" if img.shape[0] == 1 else None, vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[row][0].set_ylabel(("original", "reconstructed")[row])
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def save_result(folder: Path, stem: str, result: AttackResult, info: dict[str, Any]) -> None:
    """``<stem>.json`` (metrics, per-sample scores, ``info``) and ``<stem>.png`` when images exist."""
    folder.mkdir(parents=True, exist_ok=True)
    record = {**info, "metrics": result.metrics, "per_sample": result.per_sample}
    tmp = folder / f"{stem}.json.tmp"
    tmp.write_text(json.dumps(record) + "\n")
    tmp.replace(folder / f"{stem}.json")
    if result.reconstructions is not None and result.originals is not None and len(result.reconstructions):
        save_grid(folder / f"{stem}.png", result.originals, result.reconstructions, info.get("title", ""))


def round_folder(run_dir: str | Path, server_round: int) -> Path:
    """The folder of a round's attack outputs in a run directory."""
    return Path(run_dir) / "attacks" / f"round_{server_round:04d}"


def round_means(run_dir: str | Path, server_round: int, prefix: str = "attack_") -> dict[str, float]:
    """``<prefix><metric>``: the mean over the clients attacked in a round, and ``<prefix>clients``."""
    folder = round_folder(run_dir, server_round)
    records = [json.loads(p.read_text()) for p in sorted(folder.glob("client_*.json"))] if folder.is_dir() else []
    if not records:
        return {}
    keys = sorted({k for r in records for k in r["metrics"]})
    means = {
        f"{prefix}{k}": sum(r["metrics"][k] for r in records if k in r["metrics"])
        / sum(k in r["metrics"] for r in records)
        for k in keys
    }
    means[f"{prefix}clients"] = len(records)
    return means


def table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """A fixed-width text table."""
    cells = [
        [f"{r.get(c, ''):.4g}" if isinstance(r.get(c), float) else str(r.get(c, "")) for c in columns] for r in rows
    ]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)
