"""FedImpro (Tang et al., ICLR 2024).

FedImpro: "FedImpro: Measuring and Improving Client Update in Federated Learning" (Tang, Zhang et al., ICLR
2024, arXiv:2402.07011; official code github.com/wizard1203/FedImpro).

FedAvg on the weights, plus shared per-class feature distributions at the split layer. The server
starts them as the official code does (means uniform in [0, 1), std ``feature_std_max``), sends
N(mean_c, diag std_c^2) with every training message, and replaces them each round by the
uniform average of the estimates the sampled clients return (official ``estimate_mode=selected``,
``estimate_weight=uniform``; ``clients/fedimpro.py`` says how a client updates its estimate).

The weight of the synthetic-feature loss is lambda_t = t / ``lambda_ramp_rounds``, the official
"gradual2half" schedule of the published runs (t/500 over 1000 rounds: 1 at mid-run, 2 at the end),
uncapped as there unless ``lambda_max`` is set. Runs much shorter than 1000 rounds scale the ramp
(``configs/experiment/repro_fedimpro.yaml`` reaches the same lambda at the same fraction of the run).

Client obligation: train on real plus synthetic features as above and return ``feature-stats``
(``mean`` and ``std``, each classes x split-layer features) with the updated weights.
Update dissimilarity between clients, the paper's measure of client drift, is in every round's
metrics (``update_dissimilarity``) for every strategy.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from typing_extensions import override

from fedsim.data import dataset_from_config
from fedsim.models import model_from_config, split_model
from fedsim.params import spec
from fedsim.protocols.fedimpro import FEATURE_STATS, LAMBDA, MEAN, STD
from fedsim.records import arrays_of, from_numpy, has_record, non_finite
from fedsim.seeding import torch_generator
from fedsim.strategy import ClientReply, FedsimStrategy, StrategyParams

STATS = (MEAN, STD)


def average_feature_stats(records: list[ArrayRecord]) -> dict[str, np.ndarray]:
    """Uniform average of the clients' per-class means and stds (the official server's rule)."""
    return {
        key: np.mean([r[key].numpy().astype(np.float64) for r in records], axis=0).astype(np.float32) for key in STATS
    }


def lambda_schedule(server_round: int, ramp_rounds: int, cap: float | None) -> float:
    """lambda_t = t / ramp (official gradual2half), capped at ``cap`` when one is given."""
    value = server_round / ramp_rounds
    return value if cap is None else min(value, cap)


class FedImpro(FedsimStrategy):
    """FedImpro: FedAvg plus shared per-class feature distributions at the split layer.

    The server sends N(mean_c, std_c^2) of every class with each training message and replaces it
    by the uniform mean of the sampled clients' noised estimates; the weight of the loss on sampled
    features ramps up with the rounds (``lambda_ramp_rounds``).

    Notes
    -----
    The client trains its high part also on features drawn from the received distribution (loss
    weight ``LAMBDA`` in ``CONFIG``), and replies with its model (``ARRAYS``) and its noised
    per-class estimate (``FEATURE_STATS``: ``MEAN`` and ``STD``, see
    :mod:`fedsim.protocols.fedimpro`).

    References
    ----------
    Tang et al., "FedImpro: Measuring and Improving Client Update in Federated Learning",
    ICLR 2024, arXiv:2402.07011.
    """

    params: Params

    paper = "Tang et al., ICLR 2024 (arXiv:2402.07011)"

    def __init__(self, cfg: Any, param_keys: list[str], params: Params) -> None:
        super().__init__(cfg, param_keys, params)
        data = dataset_from_config(cfg)
        model = model_from_config(cfg, data.input_shape, data.num_classes)
        low, _ = split_model(model, params.split_at)
        with torch.no_grad():
            dim = low.eval()(torch.zeros(1, *data.input_shape))[0].numel()
        c, start = data.num_classes, torch_generator(cfg.seed, "fedimpro-init-stats")
        std = float(params.feature_std_max) if params.feature_std_max is not None else 1.0
        self.stats = {MEAN: torch.rand((c, dim), generator=start).numpy(), STD: np.full((c, dim), std, np.float32)}

    @override
    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        s = self.params
        cap = None if s.lambda_max is None else float(s.lambda_max)
        self.current_lambda = lambda_schedule(server_round, int(s.lambda_ramp_rounds), cap)
        config[LAMBDA] = self.current_lambda
        return super().configure_train(server_round, arrays, config, grid)

    @override
    def train_content(self, client_id: int, arrays: ArrayRecord, config: ConfigRecord) -> RecordDict:
        content = super().train_content(client_id, arrays, config)
        content[FEATURE_STATS] = from_numpy(self.stats)
        return content

    @override
    def reply_problem(self, msg: Message) -> str | None:
        problem = super().reply_problem(msg)
        if problem is not None:
            return problem
        if not has_record(msg.content, FEATURE_STATS):
            return "malformed reply: FedImpro needs a 'feature-stats' ArrayRecord"
        stats = arrays_of(msg.content, FEATURE_STATS)
        shape = self.stats[MEAN].shape
        if set(stats.keys()) != set(STATS) or any(tuple(stats[k].shape) != shape for k in STATS):
            return f"malformed feature-stats: expected mean and std of shape {shape}"
        if any(stats[k].dtype != self.stats[k].dtype for k in STATS):
            return f"malformed feature-stats: expected dtype {self.stats['mean'].dtype}"
        bad = non_finite(stats)
        if bad:
            return f"returned NaN/Inf in feature-stats '{bad}'"
        return "malformed feature-stats: a negative std" if (stats[STD].numpy() < 0).any() else None

    @override
    def aggregate(self, server_round: int, replies: list[ClientReply]) -> tuple[ArrayRecord, MetricRecord]:
        arrays, metrics = super().aggregate(server_round, replies)
        self.stats = average_feature_stats([arrays_of(r.content, FEATURE_STATS) for r in replies])
        metrics[LAMBDA] = self.current_lambda
        metrics["feature-std-mean"] = float(self.stats[STD].mean())
        return arrays, metrics

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"stats": dict(self.stats)}

    @override
    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "stats" in state:
            self.stats = {k: np.asarray(v) for k, v in state["stats"].items()}


@dataclass(kw_only=True)
class Params(StrategyParams):
    """FedImpro's hyperparameters (``configs/strategy/fedimpro.yaml``)."""

    split_at: int | None = spec("feature layers in the low part; null = mid-network", ge=1)
    feature_std_max: float = spec("cap on the std of synthetic features", ge=0)
    stats_reference_count: float = spec("a batch moves a class's estimate by n_c / this", gt=0)
    stats_noise_std: float = spec("noise std on the shared per-class statistics", ge=0)
    lambda_ramp_rounds: int = spec("synthetic-feature loss weight = round / this", ge=1)
    lambda_max: float | None = spec("cap on that weight; null = uncapped", ge=0)


STRATEGY = FedImpro
