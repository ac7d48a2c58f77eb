"""SCAFFOLD: "Stochastic Controlled Averaging for Federated Learning" (Karimireddy et al.,
ICML 2020, arXiv:1910.06378).

The server keeps a control variate c (one array per trainable parameter) and sends it with the
model. With S the sampled clients and N all clients, after each round
    x <- x + eta_g * mean_i(y_i - x)          c <- c + |S|/N * mean_i(delta c_i)
Buffers (e.g. BatchNorm statistics) are averaged as in FedAvg. Clients keep their own c_i
(``clients/scaffold.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from fedsim.params import spec
from fedsim.protocols.messages import CONFIG
from fedsim.protocols.scaffold import CONTROL
from fedsim.records import from_numpy, to_numpy, weighted_average
from fedsim.strategy import ClientReply, FedsimStrategy, StrategyParams


class Scaffold(FedsimStrategy):
    paper = "Karimireddy et al., ICML 2020 (arXiv:1910.06378)"

    def __init__(self, cfg: Any, param_keys: list[str], params: Params) -> None:
        super().__init__(cfg, param_keys, params)
        self.control: ArrayRecord | None = None

    def train_content(self, client_id: int, arrays: ArrayRecord, config: ConfigRecord) -> RecordDict:
        if self.control is None:
            weights = to_numpy(arrays)
            self.control = from_numpy({k: np.zeros_like(weights[k]) for k in self.param_keys})
        return RecordDict({"arrays": arrays, CONTROL: self.control, CONFIG: config})

    def reply_problem(self, msg: Message) -> str | None:
        return super().reply_problem(msg) or self.record_problem(msg, "control-delta", self.control)

    def aggregate(self, server_round: int, replies: list[ClientReply]) -> tuple[ArrayRecord, MetricRecord]:
        assert self.global_arrays is not None and self.control is not None
        x = to_numpy(self.global_arrays)
        mean_y = to_numpy(weighted_average([r.content["arrays"] for r in replies], [1.0] * len(replies)))
        eta_g = float(self.params.server_lr)
        new = {}
        for key, value in x.items():
            if key in self.param_keys:
                new[key] = (value + eta_g * (mean_y[key].astype(np.float64) - value)).astype(value.dtype)
            else:
                new[key] = mean_y[key]
        mean_dc = to_numpy(weighted_average([r.content["control-delta"] for r in replies], [1.0] * len(replies)))
        share = len(replies) / self.cfg.num_clients
        c = to_numpy(self.control)
        self.control = from_numpy({k: (c[k] + share * mean_dc[k]).astype(c[k].dtype) for k in c})
        return from_numpy(new), self.aggregate_metrics(replies)

    def state_dict(self) -> dict[str, Any]:
        return {} if self.control is None else {"control": to_numpy(self.control)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "control" in state:
            self.control = from_numpy(state["control"])


@dataclass(kw_only=True)
class Params(StrategyParams):
    server_lr: float = spec("SCAFFOLD global step size eta_g", gt=0)


STRATEGY = Scaffold
