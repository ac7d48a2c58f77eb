"""What an honest-but-curious server observes of one client update, and how an attacker replays it.

A client sends either a gradient (FedSGD, one step) or a weight delta after several local SGD
steps (FedAvg). The attacker knows the protocol (learning rate, local epochs, batch size, momentum,
sample count) and the weights the client started from, so it can run the same local update on
dummy data, differentiably, and compare. When a client trains on too many samples to replay, the
delta is treated as a scaled mean gradient (its cosine is what gradient matching uses).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import nn
from torch.func import functional_call
from torch.nn import functional as F

from fedsim.numerics import accumulation_norm

Tensors = dict[str, torch.Tensor]


@dataclass
class Observation:
    """One client update as the server sees it.

    ``update`` maps each trainable parameter name to the gradient (``kind='gradient'``) or to the
    weight delta after local training (``kind='delta'``); ``model`` is the attacker's copy of the
    architecture at the weights the client started from.
    """

    model: nn.Module
    update: Tensors
    kind: str
    num_examples: int
    batch_size: int = 1
    local_epochs: int = 1
    lr: float = 0.1
    momentum: float = 0.0

    @property
    def local_steps(self) -> int:
        """The optimizer steps of the observed local training."""
        return self.local_epochs * math.ceil(self.num_examples / max(self.batch_size, 1))

    def mean_gradient(self) -> Tensors:
        """The update as the mean gradient it corresponds to (exact for FedSGD)."""
        if self.kind == "gradient":
            return self.update
        scale = -1.0 / (self.lr * accumulation_norm(self.local_steps, self.momentum))
        return {k: scale * v for k, v in self.update.items()}

    def parameters(self) -> Tensors:
        """The observed model's trainable parameters (detached)."""
        return {k: p.detach() for k, p in self.model.named_parameters() if p.requires_grad}


def attacker_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` in eval mode with out-of-place activations (double backward needs them)."""
    copied = copy.deepcopy(model).eval()
    for module in copied.modules():
        if hasattr(module, "inplace"):
            cast(Any, module).inplace = False
    return copied


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy with hard labels (int) or soft label logits (float, as DLG optimises)."""
    if target.dtype.is_floating_point:
        return torch.mean(torch.sum(-F.softmax(target, dim=-1) * F.log_softmax(logits, dim=-1), dim=-1))
    return F.cross_entropy(logits, target)


def gradient(model: nn.Module, params: Tensors, x: torch.Tensor, y: torch.Tensor, create_graph: bool) -> Tensors:
    """Gradient of the mean cross-entropy of (x, y) at ``params``."""
    loss = soft_cross_entropy(functional_call(model, params, (x,)), y)
    grads = torch.autograd.grad(loss, list(params.values()), create_graph=create_graph, allow_unused=True)
    # Parameters outside this forward pass (e.g. MJP's localisation head) get a zero gradient.
    return {k: torch.zeros_like(p) if g is None else g for (k, p), g in zip(params.items(), grads)}


def local_update(
    model: nn.Module, params: Tensors, x: torch.Tensor, y: torch.Tensor, obs: Observation, create_graph: bool
) -> Tensors:
    """The weight delta of ``obs``'s local training (SGD with momentum, batches in order) on (x, y)."""
    current = dict(params)
    velocity = {k: torch.zeros_like(v) for k, v in params.items()}
    for _ in range(obs.local_epochs):
        for idx in torch.arange(len(x), device=x.device).split(obs.batch_size):
            grads = gradient(model, current, x[idx], y[idx], create_graph)
            velocity = {k: obs.momentum * velocity[k] + grads[k] for k in current}
            current = {k: current[k] - obs.lr * velocity[k] for k in current}
    return {k: current[k] - params[k] for k in params}


def replay(obs: Observation, x: torch.Tensor, y: torch.Tensor, unroll: bool, create_graph: bool = True) -> Tensors:
    """What the server would have seen had the client held (x, y).

    A gradient, or the local delta when ``unroll`` (the replayed update then has the observed update's kind).
    """
    params = {k: v.detach().requires_grad_(True) for k, v in obs.parameters().items()}
    if obs.kind == "delta" and unroll:
        return local_update(obs.model, params, x, y, obs, create_graph)
    return gradient(obs.model, params, x, y, create_graph)


def observe_update(obs_model: nn.Module, x: torch.Tensor, y: torch.Tensor, kind: str, **protocol) -> Observation:
    """A victim's true update on (x, y).

    The same local training an attacker replays (stand-alone evaluation; in a federated run the observer reads
    the real reply instead).
    """
    obs = Observation(obs_model, {}, kind, num_examples=len(y), **protocol)
    obs.update = {k: v.detach() for k, v in replay(obs, x, y, unroll=True, create_graph=False).items()}
    return obs


def target_of(obs: Observation, unroll: bool) -> Tensors:
    """What a replay is compared with: the update itself, or its mean-gradient form."""
    return obs.update if (obs.kind == "gradient" or unroll) else obs.mean_gradient()


def last_linear(model: nn.Module) -> str:
    """Name of the classifier layer (the last ``nn.Linear``)."""
    names = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    if not names:
        raise ValueError(f"{type(model).__name__} has no linear classifier layer")
    return names[-1]
