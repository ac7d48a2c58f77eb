"""Model zoo: a model is built from config by name; input shape and class count follow the dataset."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from fedsim.errors import ConfigError, build_option
from fedsim.models.cnn import FedAvgCNN
from fedsim.models.mlp import MLP
from fedsim.models.resnet import resnet18
from fedsim.models.vit import ViT, mjp_options

MODELS: dict[str, Callable[..., nn.Module]] = {
    "cnn": FedAvgCNN,
    "mlp": MLP,
    "resnet18": resnet18,
    "vit_tiny": ViT,
}


def features_of(model: nn.Module) -> nn.Sequential:
    """A zoo model's feature stack (every model of :data:`MODELS` has ``features`` and ``classifier``)."""
    features = model.features
    if not isinstance(features, nn.Sequential):
        raise TypeError(f"{type(model).__name__} is not a zoo model: it has no nn.Sequential 'features'")
    return features


def classifier_of(model: nn.Module) -> nn.Module:
    """A zoo model's classifier head (a linear layer, or the CNN's hidden layers and last linear)."""
    classifier = model.classifier
    if not isinstance(classifier, nn.Module):
        raise TypeError(f"{type(model).__name__} is not a zoo model: it has no 'classifier' module")
    return classifier


def layer_list(model: nn.Module) -> list[nn.Module]:
    """A zoo model as an ordered list of layers: its ``features`` children, then its ``classifier``."""
    return [*features_of(model).children(), classifier_of(model)]


def embedding(model: nn.Module) -> nn.Sequential:
    """The layers before a zoo model's last linear layer (its penultimate representation).

    Sharing its parameters: ``features`` plus, for a classifier with hidden layers (the CNN), all but its
    last.
    """
    classifier = classifier_of(model)
    head = list(classifier.children()) if isinstance(classifier, nn.Sequential) else [classifier]
    return nn.Sequential(features_of(model), *head[:-1])


# FedImpro's split point: mid-network (None: after the whole feature stack)
DEFAULT_SPLIT = {"FedAvgCNN": 3, "MLP": None, "ResNet": 7, "ViT": None}


def split_model(model: nn.Module, at: int | None = None) -> tuple[nn.Sequential, nn.Sequential]:
    """(low, high) with ``high(low(x)) == model(x)``, sharing the model's parameters.

    ``at`` counts the feature layers that go to the low part; by default mid-network, FedImpro's
    split point: the CNN's first conv block, ResNet-18's stem and first two stages, the MLP's whole
    feature stack.
    """
    features = list(features_of(model).children())
    if at is None:
        at = DEFAULT_SPLIT.get(type(model).__name__) or len(features)
    if not 1 <= at <= len(features):
        raise ConfigError(f"split point {at} is invalid for {type(model).__name__}: choose 1..{len(features)}")
    layers = layer_list(model)
    return nn.Sequential(*layers[:at]), nn.Sequential(*layers[at:])


def model_from_config(cfg: Any, input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """The model a run config names.

    ``model.name`` with the group's other keys as options, and those ``defence=mjp`` sets (the ViT's MJP
    position embedding, :func:`fedsim.models.vit.mjp_options`).
    """
    options = {k: v for k, v in cfg.model.items() if k != "name"}
    if cfg.get("defence") is not None and cfg.defence.name == "mjp":
        options.update(mjp_options(cfg.defence))
    return build_model(cfg.model.name, input_shape, num_classes, **options)


def auxiliary_loss(model: nn.Module) -> torch.Tensor | float:
    """A model's own training loss term of its last forward pass (MJP's localisation loss), or 0."""
    term = getattr(model, "auxiliary_loss", None)
    return term() if callable(term) else 0.0


def build_model(name: str, input_shape: tuple[int, int, int], num_classes: int, **kwargs: Any) -> nn.Module:
    """Instantiate model ``name`` for images of ``input_shape`` (C, H, W) and ``num_classes``."""
    if name not in MODELS:
        raise ConfigError(f"unknown model '{name}': choose one of {', '.join(sorted(MODELS))}")
    return build_option("model", name, MODELS[name], input_shape=tuple(input_shape), num_classes=num_classes, **kwargs)
