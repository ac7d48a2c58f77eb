"""FedNova (Wang et al., NeurIPS 2020).

FedNova: "Tackling the Objective Inconsistency Problem in Heterogeneous Federated Optimization" (Wang et al.,
NeurIPS 2020, arXiv:2007.07481).

Clients run different numbers of local steps (their data sizes differ); plain averaging then
optimises a skewed objective. With p_i = n_i / n, the normalised update d_i = (x - y_i) / a_i, where
a_i is the l1 norm of client i's accumulation vector (``tau-eff``, see ``clients/fednova.py``):
    x <- x - tau_eff * sum_i p_i d_i,      tau_eff = sum_i p_i a_i
Buffers (e.g. BatchNorm statistics) are averaged as in FedAvg.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from flwr.app import ArrayRecord, Message, MetricRecord
from typing_extensions import override

from fedsim.protocols.fednova import TAU_EFF
from fedsim.records import arrays_of, from_numpy, metrics_of, number, to_numpy, weighted_average
from fedsim.strategy import ClientReply, FedsimStrategy, StrategyParams


class FedNova(FedsimStrategy):
    """FedNova: normalized averaging of updates made with different numbers of local steps.

    Notes
    -----
    The client replies as for FedAvg plus ``TAU_EFF`` in ``METRICS``: the l1 norm of its
    accumulation vector (its effective number of steps, :func:`fedsim.numerics.accumulation_norm`).

    References
    ----------
    Wang et al., "Tackling the Objective Inconsistency Problem in Heterogeneous Federated
    Optimization", NeurIPS 2020, arXiv:2007.07481.
    """

    params: Params

    paper = "Wang et al., NeurIPS 2020 (arXiv:2007.07481)"

    @override
    def reply_problem(self, msg: Message) -> str | None:
        problem = super().reply_problem(msg)
        tau = metrics_of(msg.content).get(TAU_EFF, 0.0) if problem is None else 0.0
        if problem is None and not (isinstance(tau, (int, float)) and 0.0 < tau < float("inf")):
            return "malformed reply: FedNova needs a positive, finite 'tau-eff' metric"
        return problem

    @override
    def aggregate(self, server_round: int, replies: list[ClientReply]) -> tuple[ArrayRecord, MetricRecord]:
        assert self.global_arrays is not None
        x = to_numpy(self.global_arrays)
        n = float(sum(r.num_examples for r in replies))
        p = [r.num_examples / n for r in replies]
        a = [number(metrics_of(r.content), TAU_EFF) for r in replies]
        tau_eff = sum(pi * ai for pi, ai in zip(p, a))
        buffers = to_numpy(weighted_average([arrays_of(r.content) for r in replies], p))
        new = {}
        for key, value in x.items():
            if key not in self.param_keys:
                new[key] = buffers[key]
                continue
            x64 = value.astype(np.float64)
            direction = sum(pi * (x64 - arrays_of(r.content)[key].numpy()) / ai for pi, ai, r in zip(p, a, replies))
            new[key] = (x64 - tau_eff * direction).astype(value.dtype)
        return from_numpy(new), self.aggregate_metrics(replies)


@dataclass(kw_only=True)
class Params(StrategyParams):
    """FedNova has no keys of its own."""


STRATEGY = FedNova
