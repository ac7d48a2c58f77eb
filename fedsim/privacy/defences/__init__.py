"""Defence registry: ``defence=<name>``; one defence per run.

- ``local_dp``: each client clips its model update and adds Gaussian noise before sending it.
- ``dp_sgd``: per-example clipping and noise in every local step (Opacus), record-level DP.
- ``central_dp``: the server clips each update and noises the aggregate (client-level DP of the
  released model; it does not hide individual updates from the server).
- ``pruning``: clients send only the largest-magnitude entries of their update.
- ``mjp``: Masked Jigsaw Puzzle position embeddings for ViTs (a model option, see models/vit.py).
"""

from __future__ import annotations

from typing import Any

from fedsim.errors import ConfigError, build_option
from fedsim.privacy.defences.dp import DPSGD, CentralDP, LocalDP
from fedsim.privacy.defences.mjp import MJP
from fedsim.privacy.defences.pruning import GradientPruning

DEFENCES = {"local_dp": LocalDP, "dp_sgd": DPSGD, "central_dp": CentralDP, "pruning": GradientPruning, "mjp": MJP}


def defence_from_config(defence_cfg: Any) -> Any:
    """The defence ``defence_cfg`` names (None for ``none``), with the group's keys as options."""
    name = str(defence_cfg.name)
    if name == "none":
        return None
    if name not in DEFENCES:
        raise ConfigError(f"unknown defence '{name}': choose one of none, {', '.join(sorted(DEFENCES))}")
    return build_option("defence", name, DEFENCES[name], **{k: v for k, v in dict(defence_cfg).items() if k != "name"})
