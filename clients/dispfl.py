"""DisPFL client (Dai et al., ICML 2022, arXiv:2206.00187): personalized sparse training.

The client owns a personal sparse mask m over its weight tensors (conv/linear kernels; biases and
normalisation parameters stay dense), initialised at random per client with ERK layer densities
for the overall density ``strategy.density``. Each round:
1. aggregate: for every entry, the mean over the own and the neighbours' shared models of the
   values of those whose shared mask keeps it, w = sum_j m_j w_j / sum_j m_j (0 where none does),
   then restricted to the own current mask;
2. train the configured local epochs, re-applying the mask after every step;
3. share the trained weights under the mask they were trained with (values + bitmap,
   ``fedsim/sparse.py``);
4. update the mask: drop the ceil(r_t * nnz) smallest-magnitude kept weights of each layer and
   regrow as many entries among the others (at random, as the official scripts do, or by largest
   gradient magnitude on one local batch, ``strategy.regrow``), with the cosine-annealed rate
   r_t = anneal_factor / 2 * (1 + cos(pi t / T)), T = ``anneal_rounds`` (default: the run's
   rounds). Every layer keeps its number of active entries.
The state kept between rounds: the trained weights under the mask they were shared with, stored as
they are shared (values + bitmap), and the new mask as a bitmap: a fifth of the dense tensors on disk.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from flwr.app import ArrayRecord, MetricRecord, RecordDict
from torch import nn
from torch.nn import functional as F
from typing_extensions import override

from clients.base import TrainStats
from clients.peer import PeerClient, State, part, prefixed
from fedsim.numerics import tensor_sum
from fedsim.records import from_numpy
from fedsim.seeding import torch_generator
from fedsim.sparse import decode_sparse, pack_mask, sparse_arrays, unpack_mask

WEIGHTS, MASK = "weights.", "mask."  # state: the shared sparse weights, the next round's mask (bitmap)
DENSE_SHARED_MASK = "shared-mask."  # the shared mask in states kept dense, by runs that resume


def maskable(state: State) -> list[str]:
    """The tensors DisPFL sparsifies: floating tensors of 2 or more dimensions (kernels)."""
    return [k for k, v in state.items() if v.is_floating_point() and v.dim() >= 2]


def erk_densities(shapes: dict[str, tuple[int, ...]], density: float, power: float = 1.0) -> dict[str, float]:
    """Erdos-Renyi-kernel densities of the maskable layers (Evci et al., 2020).

    Erdos-Renyi-kernel densities (Evci et al., 2020): layer l keeps a fraction proportional to (sum of its
    dims / product of its dims)^power, scaled so the layers together keep ``density`` of their entries; layers
    that would exceed 1 are made dense and the rest rescaled.
    """
    numel = {n: int(np.prod(s)) for n, s in shapes.items()}
    dense: set[str] = set()
    while True:
        budget = density * sum(numel.values()) - sum(numel[n] for n in dense)
        raw = {n: (sum(s) / numel[n]) ** power for n, s in shapes.items() if n not in dense}
        eps = budget / sum(raw[n] * numel[n] for n in raw)
        over = [n for n in raw if eps * raw[n] > 1.0]
        if not over:
            return {n: 1.0 if n in dense else eps * raw[n] for n in shapes}
        dense.add(max(over, key=raw.__getitem__))


def random_mask(shape: tuple[int, ...], density: float, generator: torch.Generator) -> torch.Tensor:
    """A 0/1 float mask keeping exactly round(density * numel) entries, chosen uniformly."""
    numel = int(np.prod(shape))
    keep = torch.randperm(numel, generator=generator)[: int(round(density * numel))]
    mask = torch.zeros(numel)
    mask[keep] = 1.0
    return mask.view(shape)


def prune_and_regrow(
    weights: torch.Tensor,
    mask: torch.Tensor,
    rate: float,
    generator: torch.Generator,
    gradient: torch.Tensor | None = None,
) -> torch.Tensor:
    """DisPFL's mask update: prune the smallest kept weights, regrow as many.

    Drop the ceil(rate * nnz) kept entries of smallest |weight|, regrow as many among the entries not kept
    after the drop (random, or largest |gradient|); nnz is unchanged.
    """
    flat = mask.flatten().clone()
    k = math.ceil(rate * int(flat.sum()))
    if k == 0:
        return mask.clone()
    magnitude = torch.where(flat > 0, weights.flatten().abs(), torch.full_like(flat, float("inf")))
    flat[torch.argsort(magnitude, stable=True)[:k]] = 0.0
    candidates = torch.nonzero(flat == 0).flatten()
    if gradient is None:
        grow = candidates[torch.randperm(len(candidates), generator=generator)[:k]]
    else:
        grow = candidates[torch.argsort(gradient.flatten()[candidates].abs(), descending=True, stable=True)[:k]]
    flat[grow] = 1.0
    return flat.view_as(mask)


class DisPFLClient(PeerClient):
    """DisPFL client: a personal sparse model, aggregated mask-aware from its peers, pruned and regrown."""

    @override
    def initial_state(self, initial: State) -> State:
        names = maskable(initial)
        densities = erk_densities({n: tuple(initial[n].shape) for n in names}, float(self.env.cfg.strategy.density))
        generator = torch_generator(self.env.cfg.seed, "dispfl-mask", self.env.client_id)
        masks = {n: random_mask(tuple(initial[n].shape), densities[n], generator) for n in names}
        weights = {k: v * masks[k] if k in masks else v for k, v in initial.items()}
        return self.pack(weights, masks, masks)

    def pack(self, weights: State, shared_masks: State, masks: State) -> State:
        """The state to keep: ``weights`` under the masks they are shared with, and the next round's masks."""
        arrays = sparse_arrays(weights, shared_masks)
        return {
            **prefixed(WEIGHTS, {k: torch.from_numpy(v) for k, v in arrays.items()}),
            **prefixed(MASK, {n: torch.from_numpy(pack_mask(m)) for n, m in masks.items()}),
        }

    def unpack(self, state: State) -> tuple[State, State, State]:
        """(dense weights, the masks they were shared with, the next round's masks) of a kept state."""
        if any(k.startswith(DENSE_SHARED_MASK) for k in state):  # kept dense (fedsim before 2026-12-04)
            return part(state, WEIGHTS), part(state, DENSE_SHARED_MASK), part(state, MASK)
        shapes = {k: tuple(v.shape) for k, v in self.env.model.state_dict().items()}
        weights, shared_masks = decode_sparse(part(state, WEIGHTS), shapes)
        masks = {
            n: torch.from_numpy(unpack_mask(v.numpy(), shapes[n], MASK + n).astype(np.float32))
            for n, v in part(state, MASK).items()
        }
        return weights, shared_masks, masks

    @override
    def model_weights(self, state: State) -> State:
        return self.unpack(state)[0]

    @override
    def combine(self, state: State, peers: dict[int, ArrayRecord], content: RecordDict) -> State:
        own, own_shared, self.mask = self.unpack(state)
        shapes = {k: tuple(v.shape) for k, v in own.items()}
        sources = [(own, own_shared)] + [decode_sparse(record, shapes) for record in peers.values()]
        start = {}
        for name, w in own.items():
            if not w.is_floating_point():
                start[name] = w.clone()
            elif name in self.mask:
                total = tensor_sum(weights[name].double() for weights, _ in sources)
                count = tensor_sum(masks[name].double() for _, masks in sources)
                mean = torch.where(count > 0, total / count.clamp(min=1), torch.zeros_like(total))
                start[name] = (mean * self.mask[name]).to(w.dtype)
            else:
                start[name] = (tensor_sum(weights[name].double() for weights, _ in sources) / len(sources)).to(w.dtype)
        return start

    @override
    def after_step(self, model: nn.Module) -> None:
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name in self.mask:
                    p.mul_(self.mask[name].to(p.device))

    @override
    def next_state(self, model: nn.Module, state: State, server_round: int) -> State:
        s = self.env.cfg.strategy
        weights = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        horizon = int(s.anneal_rounds or self.env.cfg.num_rounds)
        rate = float(s.anneal_factor) / 2 * (1 + math.cos(math.pi * min(server_round, horizon) / horizon))
        gradients = self.batch_gradients(model) if s.regrow == "gradient" else {}
        generator = torch_generator(self.env.cfg.seed, "dispfl-regrow", server_round, self.env.client_id)
        new_mask = {n: prune_and_regrow(weights[n], m, rate, generator, gradients.get(n)) for n, m in self.mask.items()}
        return self.pack(weights, self.mask, new_mask)

    def batch_gradients(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """Gradients of the loss on one local batch (dense: also where the mask is 0)."""
        generator = torch_generator(self.env.cfg.seed, "dispfl-grad", self.env.client_id)
        x, y = next(self.env.data.batches(int(self.env.cfg.batch_size), self.env.device, generator))
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        return {n: p.grad.detach().cpu() for n, p in model.named_parameters() if n in self.mask and p.grad is not None}

    @override
    def share(self, model: nn.Module, state: State) -> ArrayRecord:
        return from_numpy({k: v.numpy() for k, v in part(state, WEIGHTS).items()})

    @override
    def metrics(self, stats: TrainStats) -> MetricRecord:
        metrics = super().metrics(stats)
        kept = sum(float(m.sum()) for m in self.mask.values())
        metrics["density"] = kept / sum(m.numel() for m in self.mask.values())
        return metrics


CLIENT = DisPFLClient
