"""The final-model audit.

How much a run's trained model leaks through one client's single-image gradient, the setting of the
gradient-inversion and MJP papers' evaluations.

With ``attack.final_model=true`` a gradient-inversion attack does not observe the round updates;
after the last round it attacks the final global model instead: ``num_images`` training images of
the attacked clients (``attack.clients``; all clients when null; labeled images), one gradient of one image each,
computed as the client would (through the run's defence: DP-SGD's clipped and noised gradient,
local DP or pruning on the update, MJP's jigsaw at ``defence.eval_ratio``), exactly what
``python -m fedsim attack weights=<run dir>`` does. Per-image scores and the grid go to
``<run>/attacks/final/``; the means join the last round's metrics as ``attack_final_<metric>``,
beside ``attack_final_reference_psnr``/``_ssim``: the scores of a random other image of the data.
The audit runs on the CPU whatever device trained the model, as ``fedsim attack`` does.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord

from fedsim.data.partition import ClientSplit
from fedsim.errors import ConfigError
from fedsim.models import model_from_config
from fedsim.privacy.attacks import inversion_from_config
from fedsim.privacy.defences import defence_from_config
from fedsim.privacy.evaluate import VictimProtocol, attack_victims, write_attack_files
from fedsim.records import load_record
from fedsim.results import RunDirectory
from fedsim.seeding import rng

SINGLE_IMAGE_GRADIENT = VictimProtocol(batch_size=1, local_epochs=1)


class FinalModelAudit:
    """Attack the final global model (see the module docstring); a :class:`~fedsim.server_loop.RoundLoop` observer."""

    def __init__(self, cfg: Any, dataset: Any, splits: list[ClientSplit], run_dir: RunDirectory) -> None:
        self.cfg, self.dataset, self.run_dir = cfg, dataset, run_dir
        clients = range(len(splits)) if cfg.attack.clients is None else [int(c) for c in cfg.attack.clients]
        candidates = np.concatenate([splits[c].labeled for c in clients])  # a gradient needs the label
        if len(candidates) < int(cfg.attack.num_images):
            raise ConfigError(
                f"attack.num_images={cfg.attack.num_images}: the attacked clients hold only {len(candidates)} images; "
                "attack fewer images or more clients"
            )
        self.victims = torch.from_numpy(
            rng(cfg.seed, "attack-victims").choice(candidates, int(cfg.attack.num_images), replace=False)
        )

    def observe_round(self, server_round: int, arrays: ArrayRecord, record: dict[str, Any]) -> None:
        """After the last round, the audit's mean scores as ``attack_final_<metric>``."""
        cfg = self.cfg
        if server_round != cfg.num_rounds:
            return
        model = model_from_config(cfg, self.dataset.input_shape, self.dataset.num_classes)
        load_record(model, arrays)  # on the CPU, whatever device trained it: the attacks are CPU code
        method = inversion_from_config(cfg.attack)
        attack = attack_victims(
            model,
            self.dataset,
            defence_from_config(cfg.defence),
            method,
            self.victims,
            SINGLE_IMAGE_GRADIENT,
            int(cfg.seed),
            cfg.attack.get("lpips_home"),
        )
        title = (
            f"{cfg.attack.name} on the final {cfg.model.name} (round {server_round}), "
            f"defence={cfg.defence.name}, one image per gradient"
        )
        write_attack_files(self.run_dir.path / "attacks" / "final", attack, title)
        record.update({f"attack_final_{k}": v for k, v in attack.means.items()})
