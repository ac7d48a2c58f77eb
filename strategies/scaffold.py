"""SCAFFOLD (Karimireddy et al., ICML 2020).

SCAFFOLD: "Stochastic Controlled Averaging for Federated Learning" (Karimireddy et al., ICML 2020,
arXiv:1910.06378).

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
from typing_extensions import override

from fedsim.params import spec
from fedsim.protocols.messages import ARRAYS, CONFIG
from fedsim.protocols.scaffold import CONTROL, CONTROL_DELTA
from fedsim.records import arrays_of, from_numpy, to_numpy, weighted_average
from fedsim.strategy import ClientReply, FedsimStrategy, StrategyParams


class Scaffold(FedsimStrategy):
    """SCAFFOLD: control variates correct the clients' drift.

    Notes
    -----
    The client keeps its control variate c_i, corrects every local step by ``c - c_i`` with the
    server's ``c`` (``CONTROL``), and replies with its model (``ARRAYS``) and the change of c_i
    (``CONTROL_DELTA``).

    References
    ----------
    Karimireddy et al., "SCAFFOLD: Stochastic Controlled Averaging for Federated Learning",
    ICML 2020, arXiv:1910.06378.
    """

    params: Params

    paper = "Karimireddy et al., ICML 2020 (arXiv:1910.06378)"

    def __init__(self, cfg: Any, param_keys: list[str], params: Params) -> None:
        super().__init__(cfg, param_keys, params)
        self.control: ArrayRecord | None = None

    @override
    def train_content(self, client_id: int, arrays: ArrayRecord, config: ConfigRecord) -> RecordDict:
        if self.control is None:
            weights = to_numpy(arrays)
            self.control = from_numpy({k: np.zeros_like(weights[k]) for k in self.param_keys})
        return RecordDict({ARRAYS: arrays, CONTROL: self.control, CONFIG: config})

    @override
    def reply_problem(self, msg: Message) -> str | None:
        assert self.control is not None  # configure_train set it
        return super().reply_problem(msg) or self.record_problem(msg, CONTROL_DELTA, self.control)

    @override
    def aggregate(self, server_round: int, replies: list[ClientReply]) -> tuple[ArrayRecord, MetricRecord]:
        assert self.global_arrays is not None and self.control is not None
        x = to_numpy(self.global_arrays)
        mean_y = to_numpy(weighted_average([arrays_of(r.content) for r in replies], [1.0] * len(replies)))
        eta_g = float(self.params.server_lr)
        new = {}
        for key, value in x.items():
            if key in self.param_keys:
                new[key] = (value + eta_g * (mean_y[key].astype(np.float64) - value)).astype(value.dtype)
            else:
                new[key] = mean_y[key]
        mean_dc = to_numpy(
            weighted_average([arrays_of(r.content, CONTROL_DELTA) for r in replies], [1.0] * len(replies))
        )
        share = len(replies) / self.cfg.num_clients
        c = to_numpy(self.control)
        self.control = from_numpy({k: (c[k] + share * mean_dc[k]).astype(c[k].dtype) for k in c})
        return from_numpy(new), self.aggregate_metrics(replies)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {} if self.control is None else {"control": to_numpy(self.control)}

    @override
    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "control" in state:
            self.control = from_numpy(state["control"])


@dataclass(kw_only=True)
class Params(StrategyParams):
    """SCAFFOLD's hyperparameters (``configs/strategy/scaffold.yaml``)."""

    server_lr: float = spec("SCAFFOLD global step size eta_g", gt=0)


STRATEGY = Scaffold
