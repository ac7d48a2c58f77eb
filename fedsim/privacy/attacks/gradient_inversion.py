"""Gradient inversion: recover training images from a gradient or a multi-step weight delta.

- :class:`AnalyticFC`: a fully connected first layer with bias, batch 1: the input is a row of the
  weight gradient divided by the matching bias-gradient entry. Exact and cheap (the test oracle).
- :class:`APRIL` (Lu et al., CVPR 2022), closed form for ViTs, batch 1: position embeddings are
  added to the patch embeddings, so row i of the position-embedding gradient is the gradient g_i of
  token i, and the patch-embedding weight gradient is sum_i g_i p_i^T; with at least as many
  embedding dimensions as patches, the patches p_i follow by least squares. Positions that share
  MJP's unknown embedding have no gradient row of their own and stay unrecovered.
- :class:`DLG` (Zhu et al., NeurIPS 2019): L-BFGS on a dummy image and soft dummy label to match the
  observed gradient in squared L2; with ``idlg`` (Zhao et al. 2020) the labels come from the
  classifier gradient's signs instead (:mod:`labels`).
- :class:`InvertingGradients` (Geiping et al., NeurIPS 2020): 1 - cosine similarity of the whole
  update + total variation, Adam on signed gradients, pixels kept valid, lr x0.1 at 3/8, 5/8 and
  7/8 of the run, restarts keeping the lowest loss; replays multi-step FedAvg local training when
  the client's sample count allows. ``position_weight`` adds a cosine term on the position-
  embedding gradient of ViTs (the optimisation variant of APRIL, Lu et al. CVPR 2022).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn
from typing_extensions import override

from fedsim.errors import ConfigError
from fedsim.models.vit import ViT
from fedsim.numerics import tensor_sum
from fedsim.params import spec
from fedsim.privacy.attacks.base import ImageSpace
from fedsim.privacy.attacks.labels import recover_labels
from fedsim.privacy.attacks.observation import Observation, Tensors, last_linear, replay, target_of


def cosine_distance(a: Tensors, b: Tensors, keys: list[str] | None = None) -> torch.Tensor:
    """1 - cosine similarity of two updates, over all (or ``keys``) parameters as one vector."""
    keys = keys or list(b)
    dot = tensor_sum((a[k] * b[k]).sum() for k in keys)
    norm_a = torch.sqrt(tensor_sum(a[k].pow(2).sum() for k in keys))
    norm_b = torch.sqrt(tensor_sum(b[k].pow(2).sum() for k in keys))
    return 1 - dot / (norm_a * norm_b).clamp_min(1e-12)


def squared_distance(a: Tensors, b: Tensors) -> torch.Tensor:
    """Squared L2 distance of two updates, all arrays as one vector (DLG's objective)."""
    return tensor_sum((a[k] - b[k]).pow(2).sum() for k in b)


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference of neighbouring pixels (the image prior of Inverting Gradients)."""
    return (x[:, :, :, 1:] - x[:, :, :, :-1]).abs().mean() + (x[:, :, 1:, :] - x[:, :, :-1, :]).abs().mean()


def jigsawed_slots(obs: Observation) -> torch.Tensor:
    """Patch slots whose own position-embedding row got no gradient: under MJP, the jigsawed ones."""
    if not hasattr(obs.model, "assume_jigsawed"):
        raise ConfigError("attack.adaptive targets MJP: use model=vit_tiny defence=mjp")
    key = next(k for k in obs.update if k.endswith("pos_embed"))
    rows = obs.update[key][0, 1:-1]  # patch rows (not CLS, not the unknown row)
    return (rows.abs().amax(dim=1) == 0).nonzero().flatten()


@dataclass
class Reconstruction:
    """Recovered images (model input space), their labels and the attack's final objective."""

    images: torch.Tensor  # in the model's input space
    labels: torch.Tensor
    loss: float


@dataclass
class GradientInversion(ABC):
    """Shared set-up: how many images to recover, their labels, and what to match."""

    labels: Literal["auto", "single", "top-k", "count"] = spec("label recovery (iDLG-style)", default="auto")
    unroll_limit: int = spec("replay local training when the client held at most this many samples", ge=0, default=32)

    def plan(self, obs: Observation, n: int, space: ImageSpace, generator: torch.Generator):
        """How to attack an observation: replay or mean gradient, how many images, which labels.

        (unroll, n, labels, target): replay the local steps when the sample count allows, else treat a delta
        as a mean gradient of ``n`` dummy samples.
        """
        unroll = obs.kind == "delta" and obs.num_examples <= self.unroll_limit
        if unroll or obs.kind == "gradient":
            n = obs.num_examples
        labels = recover_labels(obs, n, space.shape, generator, self.labels)
        return unroll, n, labels, target_of(obs, unroll)

    @abstractmethod
    def reconstruct(self, obs: Observation, n: int, space: ImageSpace, generator: torch.Generator) -> Reconstruction:
        """Images (in the model's input space) and labels recovered from ``obs``, about ``n`` of them."""


@dataclass
class AnalyticFC(GradientInversion):
    """The closed-form inversion of a fully connected first layer with bias (one image per gradient row)."""

    @staticmethod
    def validate_run(cfg: Any) -> str | None:
        """The closed form needs a fully connected first layer with bias."""
        return None if cfg.model.name == "mlp" else f"attack=analytic needs model=mlp (got model={cfg.model.name})"

    @override
    def reconstruct(self, obs: Observation, n: int, space: ImageSpace, generator: torch.Generator) -> Reconstruction:
        first = next(m for m in obs.model.modules() if any(True for _ in m.parameters(recurse=False)))
        if not isinstance(first, nn.Linear) or first.bias is None:
            raise ConfigError(
                "analytic inversion needs a model whose first layer is fully connected with bias (model=mlp)"
            )
        name = next(k for k, m in obs.model.named_modules() if m is first)
        grads = obs.mean_gradient()
        weight, bias = grads[f"{name}.weight"], grads[f"{name}.bias"]
        row = int(torch.argmax(bias.abs()))
        x = (weight[row] / bias[row]).view(1, *space.shape)
        labels = recover_labels(obs, 1, space.shape, generator, "single")
        return Reconstruction(x.detach(), labels, 0.0)


@dataclass
class APRIL(GradientInversion):
    """APRIL (Lu et al., CVPR 2022): a ViT's input in closed form from its position-embedding gradient."""

    @staticmethod
    def validate_run(cfg: Any) -> str | None:
        """APRIL inverts a ViT's position-embedding gradient."""
        return (
            None if cfg.model.name == "vit_tiny" else f"attack=april needs model=vit_tiny (got model={cfg.model.name})"
        )

    @override
    def reconstruct(self, obs: Observation, n: int, space: ImageSpace, generator: torch.Generator) -> Reconstruction:
        positions = [k for k in obs.update if k.endswith("pos_embed")]
        patch_weights = [k for k in obs.update if "patch_embed" in k and k.endswith("weight")]
        if obs.kind != "gradient" or obs.num_examples != 1 or not positions or not patch_weights:
            raise ConfigError(
                "the APRIL closed form needs a single-image gradient of a ViT (model=vit_tiny, batch_size=1)"
            )
        grads = obs.mean_gradient()
        weight = grads[patch_weights[0]]  # (D, C, p, p)
        dim, channels, patch = weight.shape[0], weight.shape[1], weight.shape[2]
        grid = (space.shape[1] // patch, space.shape[2] // patch)
        tokens = grads[positions[0]][0, 1 : 1 + grid[0] * grid[1]]  # (N, D): skip CLS (and MJP's unknown row)
        patches = torch.linalg.lstsq(tokens.T.double(), weight.reshape(dim, -1).double()).solution.float()  # (N, C p p)
        image = patches.view(*grid, channels, patch, patch).permute(2, 0, 3, 1, 4).reshape(1, *space.shape)
        return Reconstruction(image, recover_labels(obs, 1, space.shape, generator, "single"), 0.0)


@dataclass
class DLG(GradientInversion):
    """DLG (Zhu et al., NeurIPS 2019) and iDLG: L-BFGS on dummy images so that their gradient matches."""

    iterations: int = spec("L-BFGS iterations", ge=1, default=300)
    idlg: bool = spec("labels from the gradient's signs (iDLG) instead of optimised soft labels", default=False)

    @override
    def reconstruct(self, obs: Observation, n: int, space: ImageSpace, generator: torch.Generator) -> Reconstruction:
        unroll, n, labels, target = self.plan(obs, n, space, generator)
        x = torch.randn((n, *space.shape), generator=generator).requires_grad_(True)
        variables = [x]
        soft = None
        if not self.idlg:
            head = obs.model.get_submodule(last_linear(obs.model))
            assert isinstance(head, nn.Linear)
            classes = head.out_features
            soft = torch.randn((n, classes), generator=generator).requires_grad_(True)
            variables.append(soft)
        optimizer = torch.optim.LBFGS(
            variables, lr=1.0, max_iter=self.iterations, history_size=100, line_search_fn="strong_wolfe"
        )

        def closure():
            optimizer.zero_grad()
            loss = squared_distance(replay(obs, x, labels if soft is None else soft, unroll), target)
            loss.backward()
            return loss

        loss = optimizer.step(closure)
        found = labels if soft is None else soft.detach().argmax(1)
        return Reconstruction(x.detach(), torch.sort(found).values, float(loss.detach()))


@dataclass
class InvertingGradients(GradientInversion):
    """Inverting Gradients (Geiping et al., NeurIPS 2020): cosine gradient matching with a TV prior, Adam."""

    iterations: int = spec("Adam iterations", ge=1, default=300)
    restarts: int = spec("random restarts", ge=1, default=1)
    lr: float = spec("Adam step size", gt=0, default=0.1)
    tv: float = spec("weight of the total-variation prior", ge=0, default=1e-4)
    signed: bool = spec("signed gradients (as in Geiping et al.)", default=True)
    position_weight: float = spec("ViTs: extra cosine term on the position-embedding gradient", ge=0, default=0.0)
    adaptive: bool = spec("against MJP: replay with the jigsawed slots read off the update", default=False)

    @staticmethod
    def validate_run(cfg: Any) -> str | None:
        """The adaptive attack targets MJP."""
        if cfg.attack.get("adaptive") and (cfg.model.name != "vit_tiny" or cfg.defence.name != "mjp"):
            return "attack.adaptive=true targets MJP: use model=vit_tiny defence=mjp"
        return None

    def objective(self, replayed: Tensors, target: Tensors, x: torch.Tensor) -> torch.Tensor:
        """Cosine distance of the replayed update to the observed one, plus ``tv`` times total variation."""
        loss = cosine_distance(replayed, target) + self.tv * total_variation(x)
        positional = [k for k in target if "pos_embed" in k]
        if self.position_weight > 0 and positional:
            loss = loss + self.position_weight * cosine_distance(replayed, target, positional)
        return loss

    @override
    def reconstruct(self, obs: Observation, n: int, space: ImageSpace, generator: torch.Generator) -> Reconstruction:
        if self.adaptive:
            assert isinstance(obs.model, ViT)  # validate_run: adaptive needs the ViT
            obs.model.assume_jigsawed(jigsawed_slots(obs))
        unroll, n, labels, target = self.plan(obs, n, space, generator)
        milestones = [math.floor(self.iterations * f) for f in (3 / 8, 5 / 8, 7 / 8)]
        best: Reconstruction | None = None
        for _ in range(self.restarts):
            x = torch.randn((n, *space.shape), generator=generator).requires_grad_(True)
            optimizer = torch.optim.Adam([x], lr=self.lr)
            schedule = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones, gamma=0.1)
            for _ in range(self.iterations):
                loss = self.objective(replay(obs, x, labels, unroll), target, x)
                (grad,) = torch.autograd.grad(loss, x)
                x.grad = grad.sign() if self.signed else grad
                optimizer.step()
                schedule.step()
                with torch.no_grad():
                    x.copy_(space.clamp(x))
            final = float(self.objective(replay(obs, x, labels, unroll), target, x).detach())
            if best is None or final < best.loss:
                best = Reconstruction(x.detach().clone(), labels, final)
        assert best is not None
        return best
