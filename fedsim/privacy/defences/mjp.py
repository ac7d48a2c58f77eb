"""Masked Jigsaw Puzzle (Ren et al., CVPR 2023) as a defence setting: it is a ViT position
embedding (models/vit.py), so the defence only names the model options it sets."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class MJP:
    ratio: float = 0.1  # fraction of patches jigsawed in training
    prob: float = 0.5  # probability a training step is jigsawed
    aux_weight: float = 0.01  # weight of the dense absolute localisation loss
    eval_ratio: float = 0.9  # jigsaw ratio of the victim's image in privacy evaluations

    def model_options(self) -> dict[str, float | str]:
        return {"position_embedding": "mjp", "mjp_ratio": self.ratio, "mjp_prob": self.prob, "mjp_aux_weight": self.aux_weight}
