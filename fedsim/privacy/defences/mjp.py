"""Masked Jigsaw Puzzle (Ren et al., CVPR 2023) as a defence setting: it is a ViT position
embedding (models/vit.py), so the defence only names the model options it sets."""

from __future__ import annotations

from dataclasses import dataclass

from fedsim.params import spec


@dataclass
class MJP:
    ratio: float = spec("fraction of patches jigsawed in training", ge=0, le=1, default=0.1)
    prob: float = spec("probability a training step is jigsawed", ge=0, le=1, default=0.5)
    aux_weight: float = spec("weight of the dense absolute localisation loss", ge=0, default=0.01)
    eval_ratio: float = spec("jigsaw ratio of the victim's image in privacy evaluations", ge=0, le=1, default=0.9)

    def model_options(self) -> dict[str, float | str]:
        return {"position_embedding": "mjp", "mjp_ratio": self.ratio, "mjp_prob": self.prob, "mjp_aux_weight": self.aux_weight}
