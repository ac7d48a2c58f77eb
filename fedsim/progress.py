"""One line per round on stdout: accuracy, losses, clients, traffic and time."""

from __future__ import annotations

import sys
from typing import Any


def _mb(n: float) -> str:
    return f"{n / 2**20:.1f}MB"


LEAKAGE_FIRST = ("psnr", "ssim", "auc", "label_accuracy")  # the leakage figures the progress line shows first


def round_line(record: dict[str, Any], num_rounds: int) -> str:
    """The one-line progress report of a round."""
    parts = [f"[round {record['round']:>{len(str(num_rounds))}}/{num_rounds}]"]
    if record.get("failed"):
        parts.append(f"FAILED ({record['failed']})")
    if "train_loss" in record:
        parts.append(f"train_loss {record['train_loss']:.4f}")
    if "test_accuracy" in record:
        parts.append(f"test_acc {record['test_accuracy']:.4f} test_loss {record['test_loss']:.4f}")
    leakage = [k for k in record if k.startswith("attack_") and k != "attack_clients"]
    leakage.sort(key=lambda k: next((i for i, m in enumerate(LEAKAGE_FIRST) if m in k), len(LEAKAGE_FIRST)))
    if leakage:
        parts.append("leakage " + " ".join(f"{k.removeprefix('attack_')} {record[k]:.3g}" for k in leakage[:3]))
    if "dp_epsilon" in record:
        parts.append(f"eps {record['dp_epsilon']:.3g}")
    parts.append(f"clients {record['clients_ok']}/{record['clients_sampled']}")
    parts.append(f"up {_mb(record['bytes_up'])} down {_mb(record['bytes_down'])}")
    parts.append(f"{record['round_time_s']:.1f}s")
    return " | ".join(parts)


def show(line: str) -> None:
    """Print a line to stdout in one write (a sweep's concurrent jobs do not interleave)."""
    sys.stdout.write(line + "\n")  # one write: lines from several threads (a sweep's jobs) do not interleave
    sys.stdout.flush()
