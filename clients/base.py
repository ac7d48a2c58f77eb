"""The shared client trainer: plain epochs of minibatch SGD with a loss and a gradient hook.

:class:`Client` is FedAvg's client update (McMahan et al., 2017); other algorithms subclass it and
override :meth:`Client.loss` (e.g. FedProx's proximal term), :meth:`Client.before_step` (e.g.
SCAFFOLD's control-variate correction) or :meth:`Client.train` (extra records).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from flwr.app import ConfigRecord, MetricRecord, RecordDict
from torch import nn
from torch.nn import functional as F

from fedsim.client_env import ClientEnv
from fedsim.evaluation import evaluate
from fedsim.hooks import local_training
from fedsim.models import auxiliary_loss
from fedsim.protocols.messages import ARRAYS, CONFIG, METRICS, NUM_EXAMPLES
from fedsim.records import load_record, model_to_record
from fedsim.seeding import seed_torch, torch_generator


@dataclass
class TrainStats:
    loss: float
    steps: int
    examples: int


def make_optimizer(model: nn.Module, cfg: Any, lr: float) -> torch.optim.Optimizer:
    """The local optimizer named in ``cfg.optimizer`` (sgd or adam) over the trainable parameters
    of ``model``, at learning rate ``lr``, with no state (momentum, moments) from earlier use.

    Building a torch optimizer costs about as much as a small client's whole local step, so the
    optimizer of the same parameters and config is kept and reset (its state cleared, ``lr`` set):
    the same as a new one."""
    params = [p for p in model.parameters() if p.requires_grad]
    key = (id(cfg), *map(id, params))
    kept = _optimizers.pop(key, None)
    if kept is None:
        kept = (cfg, new_optimizer(params, cfg, lr))  # holding cfg and the parameters keeps their ids unique
    _optimizers[key] = kept
    while len(_optimizers) > 8:
        _optimizers.pop(next(iter(_optimizers)))
    optimizer = kept[1]
    optimizer.state.clear()
    for group in optimizer.param_groups:
        group["lr"] = lr
    return optimizer


_optimizers: dict[tuple[int, ...], tuple[Any, torch.optim.Optimizer]] = {}  # the last used, oldest first


def new_optimizer(params: list[nn.Parameter], cfg: Any, lr: float) -> torch.optim.Optimizer:
    if cfg.name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=cfg.weight_decay)
    raise ValueError(f"unknown optimizer '{cfg.name}'")


class Client:
    """FedAvg client: load the global model, train E local epochs, send the weights back."""

    # Whether the client's unlabeled samples count in its weight (semi-supervised clients).
    counts_unlabeled = False

    def __init__(self, env: ClientEnv) -> None:
        self.env = env

    @classmethod
    def train_examples(cls, labeled: int, unlabeled: int) -> int:
        """Samples a client with these counts trains on (its weight in averaging), known without
        building it: the labeled ones, plus the unlabeled ones where ``counts_unlabeled``."""
        return labeled + (unlabeled if cls.counts_unlabeled else 0)

    def num_train_examples(self) -> int:
        return self.train_examples(len(self.env.data), len(self.env.unlabeled))

    # -- hooks for subclasses -------------------------------------------------------------
    def loss(self, model: nn.Module, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, y)

    def optimizer(self, model: nn.Module, lr: float) -> torch.optim.Optimizer:
        """The local optimizer over what this client trains (the model by default)."""
        return make_optimizer(model, self.env.cfg.optimizer, lr)

    def batch_loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The loss of one local step (a forward pass and :meth:`loss` by default)."""
        return self.loss(model, model(x), y)

    def before_step(self, model: nn.Module) -> None:
        """Called after backward, before the optimizer step."""

    def after_step(self, model: nn.Module) -> None:
        """Called after the optimizer step (e.g. to re-apply a sparsity mask)."""

    def batches(self, config: ConfigRecord, generator: torch.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The (x, y) minibatches of one local epoch (augmented as the run's ``augment`` says)."""
        return self.env.data.batches(
            int(config["batch-size"]), self.env.device, generator, self.env.train_settings().augment
        )

    # -- the update -------------------------------------------------------------------------
    def train(self, content: RecordDict, server_round: int) -> RecordDict:
        config: ConfigRecord = content[CONFIG]
        model = self.env.model
        load_record(model, content[ARRAYS])
        stats = self.fit(model, config, server_round)
        return RecordDict({"arrays": model_to_record(model), METRICS: self.metrics(stats)})

    def evaluate(self, content: RecordDict, server_round: int) -> RecordDict:
        """Accuracy and loss on this client's own test set of the model it would use: the received
        global model here, the personal model in decentralized strategies."""
        load_record(self.env.model, content[ARRAYS])
        return self.test_metrics(self.env.model)

    def test_metrics(self, model: nn.Module) -> RecordDict:
        """Accuracy and loss on the own test split, and ``subset-accuracy``: the argmax over the
        labels of the client's training data only (where it has labeled data)."""
        env = self.env
        classes = [int(c) for c in torch.unique(env.data.y)] if len(env.data) else None
        result = evaluate(model, env.test, int(env.cfg.eval_batch_size), env.device, classes=classes)
        metrics = MetricRecord({"accuracy": result["accuracy"], "loss": result["loss"], NUM_EXAMPLES: len(env.test)})
        if "subset_accuracy" in result:
            metrics["subset-accuracy"] = result["subset_accuracy"]
        return RecordDict({"metrics": metrics})

    def metrics(self, stats: TrainStats) -> MetricRecord:
        return MetricRecord({"num-examples": stats.examples, "train-loss": stats.loss, "num-steps": stats.steps})

    def fit(self, model: nn.Module, config: ConfigRecord, server_round: int) -> TrainStats:
        """Run the configured local epochs on this client's data (seeded by run, round and client)."""
        env = self.env
        settings = env.train_settings()
        seed_torch(settings.seed, "train", server_round, env.client_id)
        generator = torch_generator(settings.seed, "shuffle", server_round, env.client_id)
        model.train()
        total, steps = 0.0, 0
        base_optimizer = self.optimizer(model, float(config["lr"]))
        clip_norm = settings.clip_norm
        with local_training(env.defence, model, base_optimizer, int(config["batch-size"])) as optimizer:
            for _ in range(int(config["local-epochs"])):
                for x, y in self.batches(config, generator):
                    optimizer.zero_grad(set_to_none=True)
                    loss = self.batch_loss(model, x, y) + auxiliary_loss(model)
                    loss.backward()
                    self.before_step(model)
                    if clip_norm is not None:
                        torch.nn.utils.clip_grad_norm_(model.parameters(), clip_norm)
                    optimizer.step()
                    self.after_step(model)
                    total += loss.item()
                    steps += 1
        return TrainStats(loss=total / max(steps, 1), steps=steps, examples=self.num_train_examples())


CLIENT = Client
