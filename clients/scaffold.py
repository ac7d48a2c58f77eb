"""SCAFFOLD client update (Karimireddy et al., ICML 2020, arXiv:1910.06378), option II.

Every local step corrects the gradient by (c - c_i): c is the server control variate received in
the ``control`` ArrayRecord, c_i this client's own, kept in its persistent state. After K local
steps at learning rate eta:  c_i+ = c_i - c + (x - y_i) / (K * eta).  The reply carries the new
weights y_i and ``control-delta`` = c_i+ - c_i.

With heavy-ball momentum rho, K steps move the weights by eta * a * (mean gradient) with
a = sum_k (1 - rho^(K-k)) / (1 - rho) (``accumulation_norm``), not eta * K; fedsim divides by
eta * a, which is K for plain SGD as in the paper. Dividing by K alone would overestimate c_i by up
to 1 / (1 - rho) (10x at rho = 0.9) and make training diverge.
"""

from __future__ import annotations

import torch
from flwr.app import ArrayRecord, ConfigRecord, RecordDict
from torch import nn
from typing_extensions import override

from clients.base import Client
from fedsim.numerics import accumulation_norm, optimizer_momentum
from fedsim.protocols.messages import ARRAYS, LAST_CHECKPOINT, LR, METRICS
from fedsim.protocols.scaffold import CONTROL, CONTROL_DELTA
from fedsim.records import arrays_of, config_of, integer, load_record, model_to_record, number


class ScaffoldClient(Client):
    """SCAFFOLD client: drift-corrected local steps; returns its model and the change of its control variate."""

    @override
    def train(self, content: RecordDict, server_round: int) -> RecordDict:
        config: ConfigRecord = config_of(content)
        model = self.env.model
        load_record(model, arrays_of(content))
        names = [n for n, _ in model.named_parameters()]
        server_c = arrays_of(content, CONTROL).to_torch_state_dict()
        saved = self.env.state.load(before_round=server_round)
        own_c = saved if saved is not None else {n: torch.zeros_like(server_c[n]) for n in names}
        self.correction = [(server_c[n] - own_c[n]).to(self.env.device) for n in names]
        start = [p.detach().clone() for p in model.parameters()]

        stats = self.fit(model, config, server_round)

        steps = accumulation_norm(max(stats.steps, 1), optimizer_momentum(self.env.cfg.optimizer))
        scale = 1.0 / (steps * number(config, LR))
        new_c, delta_c = {}, {}
        for name, p, x in zip(names, model.parameters(), start):
            new_c[name] = own_c[name] - server_c[name] + (x - p.detach()).cpu() * scale
            delta_c[name] = new_c[name] - own_c[name]
        self.env.state.save(server_round, new_c, last_checkpoint=integer(config, LAST_CHECKPOINT))
        return RecordDict(
            {
                ARRAYS: model_to_record(model),
                CONTROL_DELTA: ArrayRecord(delta_c),
                METRICS: self.metrics(stats),
            }
        )

    @override
    def before_step(self, model: nn.Module) -> None:
        for p, corr in zip(model.parameters(), self.correction):
            if p.grad is not None:
                p.grad.add_(corr)


CLIENT = ScaffoldClient
