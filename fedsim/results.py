"""The run directory: resolved config, partition summary, metrics (JSONL + CSV), plots, summary.

runs/<timestamp>-<strategy>/
    config.yaml        the resolved config (what ``resume=`` reads back)
    partition.json     per-client sample counts and label histograms
    metrics.jsonl      one JSON object per round
    metrics.csv        the same table (logger=csv, the default), rewritten every round
    summary.json       final figures
    accuracy.png       test accuracy and loss per round
    checkpoints/       round_XXXXXX.pt every ``checkpoint_every`` rounds (the newest ``checkpoints_kept``)
    client_state/      clients' persistent state, versioned by round
"""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from fedsim.errors import ConfigError


def read_records(path: Path) -> list[dict[str, Any]]:
    """The JSON objects of a JSONL file, one per line (none where it does not exist)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write_records(path: Path, records: list[dict[str, Any]]) -> None:
    """Rewrite a JSONL file with ``records``, one per line."""
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def append_record(path: Path, record: dict[str, Any]) -> None:
    """Append ``record`` as one line to a JSONL file."""
    with path.open("a") as f:
        f.write(json.dumps(record) + "\n")


def make_folder(path: Path, exist_ok: bool = True) -> None:
    """``path.mkdir(parents=True)``; a folder that cannot be created is one ConfigError line."""
    try:
        path.mkdir(parents=True, exist_ok=exist_ok)
    except FileExistsError:
        raise
    except OSError as err:
        raise ConfigError(
            f"cannot create the folder {path} ({err.strerror}); choose a writable run_dir or runs_root"
        ) from None


def new_run_dir(root: str | Path, strategy: str) -> Path:
    """A new, unique run folder under ``root``: ``<date>-<time>-<strategy>``."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = Path(root) / f"{stamp}-{strategy}"
    suffix = 1
    while path.exists():
        suffix += 1
        path = Path(root) / f"{stamp}-{strategy}-{suffix}"
    make_folder(path, exist_ok=False)
    return path


def integer_round_axis(ax: Any) -> None:
    """Whole-number ticks on a matplotlib axis whose x is the round."""
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


class RunDirectory:
    """A run's folder: its resolved config, metrics, summary, plots, checkpoints and client state."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        make_folder(self.path)

    @property
    def metrics_file(self) -> Path:
        """``metrics.jsonl``: one JSON record per round."""
        return self.path / "metrics.jsonl"

    @property
    def checkpoints(self) -> Path:
        """The checkpoints folder."""
        return self.path / "checkpoints"

    @property
    def client_state(self) -> Path:
        """The clients' state stores (simulation)."""
        return self.path / "client_state"

    def write_config(self, cfg: DictConfig) -> None:
        """Write the resolved ``config.yaml``."""
        (self.path / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))

    def write_json(self, name: str, data: Any, compact: bool = False) -> None:
        """Write ``data`` as JSON to ``name`` in the run directory.

        ``data`` as indented JSON, or on one line with ``compact`` (the indented form of 100,000 clients'
        records takes seconds: Python's JSON encoder is fast only without indentation).
        """
        (self.path / name).write_text(
            (json.dumps(data, separators=(",", ":")) if compact else json.dumps(data, indent=1)) + "\n"
        )

    def append_metrics(self, record: dict[str, Any]) -> None:
        """Append one round's record to ``metrics.jsonl``."""
        append_record(self.metrics_file, record)

    def read_metrics(self) -> list[dict[str, Any]]:
        """Every round's record so far."""
        return read_records(self.metrics_file)

    def truncate_metrics(self, last_round: int) -> None:
        """Drop records of rounds after ``last_round`` (what a killed run wrote past its checkpoint)."""
        write_records(self.metrics_file, [r for r in self.read_metrics() if r["round"] <= last_round])

    def write_csv(self, name: str = "metrics.csv") -> None:
        """Write the metrics as a CSV table, one column per key of any round."""
        rows = self.read_metrics()
        columns: list[str] = []
        for row in rows:
            columns += [k for k in row if k not in columns and not isinstance(row[k], (list, dict))]
        with (self.path / name).open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)

    def plot(self) -> Path:
        """accuracy.png: test accuracy and loss (and train loss) per round."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        rows = self.read_metrics()
        fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(10, 4))
        evaluated = [r for r in rows if "test_accuracy" in r]
        ax_acc.plot([r["round"] for r in evaluated], [r["test_accuracy"] for r in evaluated], marker="o")
        ax_acc.set(xlabel="round", ylabel="test accuracy", title="accuracy")
        ax_loss.plot([r["round"] for r in evaluated], [r["test_loss"] for r in evaluated], marker="o", label="test")
        trained = [r for r in rows if "train_loss" in r]
        ax_loss.plot([r["round"] for r in trained], [r["train_loss"] for r in trained], marker=".", label="train")
        ax_loss.set(xlabel="round", ylabel="loss", title="loss")
        ax_loss.legend()
        for ax in (ax_acc, ax_loss):
            ax.grid(alpha=0.3)
            integer_round_axis(ax)
        fig.tight_layout()
        out = self.path / "accuracy.png"
        fig.savefig(out, dpi=100)
        plt.close(fig)
        return out
