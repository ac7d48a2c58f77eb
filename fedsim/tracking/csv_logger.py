"""``logger=csv``: metrics.csv beside metrics.jsonl, rewritten after every round."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig

from fedsim.results import RunDirectory


class CsvLogger:
    """The run's metrics table as CSV (scalar columns; a column per metric any round reported)."""

    def __init__(self, options: DictConfig, cfg: DictConfig, run_dir: RunDirectory, start_round: int) -> None:
        self.run_dir = run_dir
        self.file = str(options.get("file") or "metrics.csv")

    def log_round(self, record: dict[str, Any]) -> None:
        self.run_dir.write_csv(self.file)

    def finish(self) -> None:
        self.run_dir.write_csv(self.file)
