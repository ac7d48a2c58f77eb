"""Small numerical facts several sides use (clients, strategies, attacks)."""

from __future__ import annotations

import functools
import operator
from collections.abc import Iterable
from typing import Any

import torch


def accumulation_norm(tau: int, momentum: float) -> float:
    """l1 norm of the accumulation vector of tau SGD steps with heavy-ball momentum.

    x_0 - x_tau = lr * sum_k a_k g_k with a_k = (1 - rho^(tau-k)) / (1 - rho); the sum of the a_k
    is tau for plain SGD and [tau - rho (1 - rho^tau) / (1 - rho)] / (1 - rho) with momentum rho
    (FedNova, Wang et al. 2020). Dividing a model change by lr * this gives the mean gradient.
    """
    if momentum == 0.0:
        return float(tau)
    return (tau - momentum * (1.0 - momentum**tau) / (1.0 - momentum)) / (1.0 - momentum)


def tensor_sum(values: Iterable[torch.Tensor]) -> torch.Tensor:
    """The tensors added in order (as the builtin ``sum``, whose start value 0 types as int)."""
    return functools.reduce(operator.add, values)


def optimizer_momentum(cfg: Any) -> float:
    """Heavy-ball momentum of the configured local optimizer (0 for Adam)."""
    return float(cfg.momentum) if cfg.name == "sgd" else 0.0
