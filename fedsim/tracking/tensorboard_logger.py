"""``logger=tensorboard``: event files in the run directory (``tensorboard --logdir runs``)."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf
from typing_extensions import override

from fedsim.results import RunDirectory
from fedsim.tracking import RunLogger, require, scalar_metrics


class TensorBoardLogger(RunLogger):
    """One scalar per metric per round (step = round) and the resolved config as text.

    A resumed run purges the events of rounds after its checkpoint, which are then redone.
    """

    def __init__(self, options: DictConfig, cfg: DictConfig, run_dir: RunDirectory, start_round: int) -> None:
        require("tensorboard", "tensorboard")
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(
            log_dir=str(run_dir.path),
            flush_secs=int(options.get("flush_secs", 30)),
            purge_step=start_round + 1 if start_round else None,
        )
        if not start_round:
            config = "\n".join("    " + line for line in OmegaConf.to_yaml(cfg, resolve=True).splitlines())
            self.writer.add_text("config", config, global_step=0)

    @override
    def log_round(self, record: dict[str, Any]) -> None:
        for key, value in scalar_metrics(record).items():
            self.writer.add_scalar(key, value, global_step=int(record["round"]))

    @override
    def finish(self) -> None:
        self.writer.close()
