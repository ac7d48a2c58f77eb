"""FedImpro: "FedImpro: Measuring and Improving Client Update in Federated Learning"
(Tang, Zhang et al., ICLR 2024, arXiv:2402.07011; official code github.com/wizard1203/FedImpro).

FedAvg on the weights, plus shared per-class feature distributions at the split layer: clients
return count, E[h] and E[h^2] per class (noised, see ``clients/fedimpro.py``); the server pools them
weighted by counts,
    E[h]_c = sum_i n_ic E_i[h]_c / sum_i n_ic,   var_c = max(E[h^2]_c - E[h]_c^2, 0),
and sends N(E[h]_c, diag var_c) back, from which clients draw synthetic features so that the high
part of every client trains on similar conditional distributions. Classes no sampled client held
this round keep their previous statistics. The weight of the synthetic loss grows linearly to
``lambda_max`` over ``lambda_warmup_rounds`` (the official code's t/500 grows without bound).

Update dissimilarity between clients, the paper's measure of client drift, is in every round's
metrics (``update_dissimilarity``) for every strategy.
"""

from __future__ import annotations

from typing import Any, Iterable

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid

from fedsim.data import dataset_from_config
from fedsim.models import model_from_config, split_model
from fedsim.records import from_numpy, non_finite
from fedsim.strategy import ClientReply, FedsimStrategy


def pool_feature_stats(records: list[ArrayRecord], previous: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Count-weighted pooling of per-class first and second moments (float64)."""
    counts = np.stack([r["count"].numpy().astype(np.float64) for r in records])  # (clients, C)
    total = counts.sum(0)
    weights = counts / np.maximum(total, 1.0)
    mean = np.einsum("kc,kcd->cd", weights, np.stack([r["mean"].numpy().astype(np.float64) for r in records]))
    second = np.einsum("kc,kcd->cd", weights, np.stack([r["second"].numpy().astype(np.float64) for r in records]))
    seen = total > 0
    out = {k: v.copy() for k, v in previous.items()}
    out["count"][seen] = total[seen]
    out["mean"][seen] = mean[seen]
    out["var"][seen] = np.maximum(second - mean**2, 0.0)[seen]
    return out


class FedImpro(FedsimStrategy):
    def __init__(self, cfg: Any, param_keys: list[str]) -> None:
        super().__init__(cfg, param_keys)
        data = dataset_from_config(cfg)
        model = model_from_config(cfg, data.input_shape, data.num_classes)
        low, _ = split_model(model, cfg.strategy.split_at)
        with torch.no_grad():
            dim = low.eval()(torch.zeros(1, *data.input_shape))[0].numel()
        c = data.num_classes
        self.stats = {"count": np.zeros(c), "mean": np.zeros((c, dim), np.float32), "var": np.ones((c, dim), np.float32)}

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        s = self.cfg.strategy
        config["fedimpro-lambda"] = float(s.lambda_max) * min(1.0, server_round / max(int(s.lambda_warmup_rounds), 1))
        return super().configure_train(server_round, arrays, config, grid)

    def train_content(self, client_id: int, arrays: ArrayRecord, config: ConfigRecord) -> RecordDict:
        content = super().train_content(client_id, arrays, config)
        content["feature-stats"] = from_numpy({k: v.astype(np.float32) for k, v in self.stats.items()})
        return content

    def reply_problem(self, msg: Message) -> str | None:
        problem = super().reply_problem(msg)
        if problem is not None:
            return problem
        if "feature-stats" not in msg.content.array_records:
            return "malformed reply: FedImpro needs a 'feature-stats' ArrayRecord"
        stats = msg.content["feature-stats"]
        c, dim = self.stats["mean"].shape
        expected = {"count": (c,), "mean": (c, dim), "second": (c, dim)}
        if set(stats.keys()) != set(expected) or any(tuple(stats[k].shape) != v for k, v in expected.items()):
            return f"malformed feature-stats: expected count {(c,)}, mean and second {(c, dim)}"
        bad = non_finite(stats)
        return f"returned NaN/Inf in feature-stats '{bad}'" if bad else None

    def aggregate(self, server_round: int, replies: list[ClientReply]) -> tuple[ArrayRecord, MetricRecord]:
        arrays, metrics = super().aggregate(server_round, replies)
        self.stats = pool_feature_stats([r.content["feature-stats"] for r in replies], self.stats)
        metrics["classes-with-stats"] = int((self.stats["count"] > 0).sum())
        return arrays, metrics

    def state_dict(self) -> dict[str, Any]:
        return {"stats": dict(self.stats)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "stats" in state:
            self.stats = {k: np.asarray(v) for k, v in state["stats"].items()}


STRATEGY = FedImpro
