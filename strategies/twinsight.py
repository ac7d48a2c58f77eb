"""Twin-sight (Zhang et al., ICLR 2024).

Twin-sight: "Robust Training of Federated Models with Extremely Label Deficiency" (Zhang, Yang et al., ICLR
2024, arXiv:2402.14430; official code github.com/visitworld123/Twin-sight).

Federated semi-supervised learning with twin models per client (``clients/twinsight.py``): a
supervised model f (the global model that is evaluated) and an unsupervised SimCLR model g, coupled
by a neighbourhood-preserving constraint. The server runs FedAvg on both, weighting each client by
all its local samples; g travels in the ``unsupervised`` ArrayRecord and is checkpointed with the
strategy state.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from typing_extensions import override

from fedsim.data import dataset_from_config
from fedsim.params import spec
from fedsim.protocols.twinsight import UNSUPERVISED, unsupervised_model
from fedsim.records import arrays_of, from_numpy, model_to_record, to_numpy, weighted_average
from fedsim.seeding import seed_torch
from fedsim.strategy import ClientReply, FedsimStrategy, StrategyParams


class TwinSight(FedsimStrategy):
    """Twin-sight: FedAvg on a supervised and an unsupervised model per client.

    Notes
    -----
    The client trains the supervised model on its labels and the unsupervised (SimCLR) model on
    all its samples, coupled by the neighbourhood-preserving constraint, and replies with both:
    ``ARRAYS`` and ``UNSUPERVISED``.

    References
    ----------
    Zhang et al., "Robust Training of Federated Models with Extremely Label Deficiency",
    ICLR 2024, arXiv:2402.14430.
    """

    params: Params

    paper = "Zhang et al., ICLR 2024 (arXiv:2402.14430)"

    def __init__(self, cfg: Any, param_keys: list[str], params: Params) -> None:
        super().__init__(cfg, param_keys, params)
        data = dataset_from_config(cfg)
        seed_torch(cfg.seed, "twinsight-init")
        self.unsupervised: ArrayRecord = model_to_record(unsupervised_model(cfg, data.input_shape, data.num_classes))

    @override
    def train_content(self, client_id: int, arrays: ArrayRecord, config: ConfigRecord) -> RecordDict:
        content = super().train_content(client_id, arrays, config)
        content[UNSUPERVISED] = self.unsupervised
        return content

    @override
    def reply_problem(self, msg: Message) -> str | None:
        return super().reply_problem(msg) or self.record_problem(msg, UNSUPERVISED, self.unsupervised)

    @override
    def aggregate(self, server_round: int, replies: list[ClientReply]) -> tuple[ArrayRecord, MetricRecord]:
        arrays, metrics = super().aggregate(server_round, replies)
        self.unsupervised = weighted_average(
            [arrays_of(r.content, UNSUPERVISED) for r in replies], [r.num_examples for r in replies]
        )
        return arrays, metrics

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"unsupervised": to_numpy(self.unsupervised)}

    @override
    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "unsupervised" in state:
            self.unsupervised = from_numpy(state["unsupervised"])


@dataclass(kw_only=True)
class Params(StrategyParams):
    """Twin-sight's hyperparameters (``configs/strategy/twinsight.yaml``)."""

    contrastive_weight: float = spec("weight of the unsupervised model's InfoNCE", ge=0)
    np_weight: float = spec("weight of the neighbourhood-preserving constraint", ge=0)
    temperature: float = spec("InfoNCE temperature", gt=0)
    projection_dim: int = spec("SimCLR projector output size", ge=1)
    pseudo_label_weight: float = spec("weight of pseudo-labels on unlabeled data", ge=0)
    threshold: float = spec("confidence for a pseudo-label", ge=0, le=1)


STRATEGY = TwinSight
