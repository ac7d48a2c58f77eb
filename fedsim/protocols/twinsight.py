"""Twin-sight's protocol.

Twin-sight's protocol (``strategies/twinsight.py``, ``clients/twinsight.py``): the unsupervised model both
sides build (the server its initial weights, clients their local copy).
"""

from __future__ import annotations

from typing import Any

from fedsim.models import model_from_config
from fedsim.models.projection import ProjectionModel


def unsupervised_model(cfg: Any, input_shape: tuple[int, int, int], num_classes: int) -> ProjectionModel:
    """Twin-sight's unsupervised model: the zoo model with a projection head of ``projection_dim``."""
    return ProjectionModel(
        model_from_config(cfg, input_shape, num_classes), input_shape, int(cfg.strategy.projection_dim)
    )


UNSUPERVISED = "unsupervised"  # the unsupervised model's weights, beside the supervised model's ARRAYS
