"""Model zoo: a model is built from config by name; input shape and class count follow the dataset."""

from __future__ import annotations

from typing import Any, Callable

from torch import nn

from fedsim.errors import ConfigError
from fedsim.models.cnn import FedAvgCNN
from fedsim.models.mlp import MLP
from fedsim.models.resnet import resnet18

MODELS: dict[str, Callable[..., nn.Module]] = {
    "cnn": FedAvgCNN,
    "mlp": MLP,
    "resnet18": resnet18,
}


def build_model(name: str, input_shape: tuple[int, int, int], num_classes: int, **kwargs: Any) -> nn.Module:
    """Instantiate model ``name`` for images of ``input_shape`` (C, H, W) and ``num_classes``."""
    if name not in MODELS:
        raise ConfigError(f"unknown model '{name}': choose one of {', '.join(sorted(MODELS))}")
    try:
        return MODELS[name](input_shape=tuple(input_shape), num_classes=num_classes, **kwargs)
    except TypeError as err:
        raise ConfigError(f"model '{name}' got a bad option: {err}") from err
