"""Masked Jigsaw Puzzle (Ren et al., CVPR 2023) as a defence setting.

It is a ViT position embedding (models/vit.py), so the defence is its settings: the model reads them
(:func:`fedsim.models.vit.mjp_options`), privacy evaluations read ``eval_ratio``.
"""

from __future__ import annotations

from dataclasses import dataclass

from fedsim.params import spec


@dataclass
class MJP:
    """Masked Jigsaw Puzzle (Ren et al., CVPR 2023): MJP's position embedding settings.

    Masked Jigsaw Puzzle (Ren et al., CVPR 2023): a ViT position embedding that jigsaws a fraction of the
    patches in training and learns to localise them, so that gradients reveal little of the input.

    """

    ratio: float = spec("fraction of patches jigsawed in training", ge=0, le=1, default=0.1)
    prob: float = spec("probability a training step is jigsawed", ge=0, le=1, default=0.5)
    aux_weight: float = spec("weight of the dense absolute localisation loss", ge=0, default=0.01)
    eval_ratio: float = spec("jigsaw ratio of the victim's image in privacy evaluations", ge=0, le=1, default=0.9)
