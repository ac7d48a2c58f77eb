"""``logger=csv``: metrics.csv beside metrics.jsonl, rewritten after every round."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig
from typing_extensions import override

from fedsim.results import RunDirectory
from fedsim.tracking import RunLogger


class CsvLogger(RunLogger):
    """The run's metrics table as CSV (scalar columns; a column per metric any round reported)."""

    def __init__(self, options: DictConfig, cfg: DictConfig, run_dir: RunDirectory, start_round: int) -> None:
        self.run_dir = run_dir
        self.file = str(options.get("file") or "metrics.csv")

    @override
    def log_round(self, record: dict[str, Any]) -> None:
        self.run_dir.write_csv(self.file)

    @override
    def finish(self) -> None:
        self.run_dir.write_csv(self.file)
