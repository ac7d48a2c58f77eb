"""Label recovery from the classifier layer's gradient (iDLG and its batch extensions).

With cross-entropy, the bias gradient of the last layer is mean_i(p_i) - counts / B: for one
sample the true class is the only negative entry (iDLG, Zhao et al. 2020). For a batch:
``top-k`` takes the k most negative entries of the weight-gradient rows' minima (Yin et al.
2021; distinct labels), ``count`` estimates how many samples each class has as
B * (p_bar - g_bias) with p_bar the model's mean prediction on dummy inputs (Wainakh et al. 2022),
which allows repeated labels.
"""

from __future__ import annotations

import torch

from fedsim.errors import ConfigError
from fedsim.privacy.attacks.observation import Observation, last_linear

STRATEGIES = ("auto", "single", "top-k", "count")


def classifier_gradient(obs: Observation) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(weight, bias) mean gradients of the classifier layer; bias None when it has none."""
    grads, name = obs.mean_gradient(), last_linear(obs.model)
    return grads[f"{name}.weight"], grads.get(f"{name}.bias")


def largest_remainder(counts: torch.Tensor, total: int) -> torch.Tensor:
    """Round non-negative real ``counts`` to integers summing to ``total``."""
    counts = counts.clamp_min(0)
    scaled = counts * (total / counts.sum()) if counts.sum() > 0 else torch.full_like(counts, total / len(counts))
    whole = scaled.floor()
    short = total - int(whole.sum())
    whole[torch.argsort(scaled - whole, descending=True)[:short]] += 1
    return whole.long()


@torch.no_grad()
def mean_prediction(obs: Observation, shape: tuple[int, ...], generator: torch.Generator, n: int = 64) -> torch.Tensor:
    """The model's mean softmax on random dummy inputs (the attacker's estimate of p_bar)."""
    x = torch.randn((n, *shape), generator=generator)
    return torch.softmax(obs.model(x), dim=-1).mean(0)


def recover_labels(
    obs: Observation, n: int, shape: tuple[int, ...], generator: torch.Generator, strategy: str = "auto"
) -> torch.Tensor:
    """``n`` labels of the samples behind ``obs`` (sorted)."""
    if strategy not in STRATEGIES:
        raise ConfigError(f"unknown label strategy '{strategy}': choose one of {', '.join(STRATEGIES)}")
    if strategy == "auto":
        strategy = "single" if n == 1 else "count"
    weight, bias = classifier_gradient(obs)
    if strategy == "single" or n == 1:
        score = bias if bias is not None else weight.sum(1)
        return torch.argmin(score).view(1).repeat(n)
    if strategy == "top-k":
        return torch.sort(torch.argsort(weight.min(1).values)[:n]).values
    if bias is None:
        raise ConfigError("label counting needs a classifier layer with a bias: use labels=top-k")
    counts = largest_remainder(n * (mean_prediction(obs, shape, generator) - bias), n)
    return torch.repeat_interleave(torch.arange(len(counts)), counts)
