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
from fedsim.protocols.messages import (
    ACCURACY,
    ARRAYS,
    BATCH_SIZE,
    LOCAL_EPOCHS,
    LOSS,
    LR,
    METRICS,
    NUM_EXAMPLES,
    NUM_STEPS,
    SUBSET_ACCURACY,
    TRAIN_LOSS,
)
from fedsim.records import arrays_of, config_of, integer, load_record, model_reply, number
from fedsim.seeding import seed_torch, torch_generator


@dataclass
class TrainStats:
    """What one local training did: mean loss, optimizer steps and the samples it weighs."""

    loss: float
    steps: int
    examples: int


def make_optimizer(model: nn.Module, cfg: Any, lr: float) -> torch.optim.Optimizer:
    """The local optimizer of ``model``, reset to no state.

    The local optimizer named in ``cfg.optimizer`` (sgd or adam) over the trainable parameters of ``model``,
    at learning rate ``lr``, with no state (momentum, moments) from earlier use.

    Building a torch optimizer costs about as much as a small client's whole local step, so the
    optimizer of the same parameters and config is kept and reset (its state cleared, ``lr`` set):
    the same as a new one.
    """
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
    """A new torch optimizer ``cfg.name`` (sgd or adam) over ``params`` at learning rate ``lr``."""
    if cfg.name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=cfg.weight_decay)
    raise ValueError(f"unknown optimizer '{cfg.name}'")


class Client:
    """FedAvg client: load the global model, train E local epochs, send the weights back.

    A subclass changes one part through the hooks: :meth:`loss`, :meth:`batch_loss`,
    :meth:`optimizer`, :meth:`batches`, :meth:`before_step` / :meth:`after_step`, :meth:`fit`,
    :meth:`metrics`, or :meth:`train` for a whole new reply.

    Parameters
    ----------
    env : fedsim.client_env.ClientEnv
        The client's data, model instance, device, state store, defence and the run's config.
    """

    # Whether the client's unlabeled samples count in its weight (semi-supervised clients).
    counts_unlabeled = False

    def __init__(self, env: ClientEnv) -> None:
        self.env = env

    @classmethod
    def train_examples(cls, labeled: int, unlabeled: int) -> int:
        """Samples a client with these counts trains on, known without building it.

        Samples a client with these counts trains on (its weight in averaging), known without building it: the
        labeled ones, plus the unlabeled ones where ``counts_unlabeled``.
        """
        return labeled + (unlabeled if cls.counts_unlabeled else 0)

    def num_train_examples(self) -> int:
        """Samples this client trains on: its weight in the aggregate."""
        return self.train_examples(len(self.env.data), len(self.env.unlabeled))

    # -- hooks for subclasses -------------------------------------------------------------
    def loss(self, model: nn.Module, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The training loss of a batch.

        Parameters
        ----------
        model : torch.nn.Module
            The model being trained (for losses that read it, e.g. a proximal term).
        logits : torch.Tensor
            The model's outputs on the batch.
        y : torch.Tensor
            The batch's labels.

        Returns
        -------
        torch.Tensor
            A scalar; cross-entropy for FedAvg.
        """
        return F.cross_entropy(logits, y)

    def optimizer(self, model: nn.Module, lr: float) -> torch.optim.Optimizer:
        """The local optimizer over what this client trains (the model by default).

        Parameters
        ----------
        model : torch.nn.Module
            The model to train.
        lr : float
            This round's learning rate (``LR`` in the train message's ``CONFIG``).

        Returns
        -------
        torch.optim.Optimizer
            With no state from earlier rounds (wrapped by DP-SGD where that defence is on).
        """
        return make_optimizer(model, self.env.train_settings().optimizer, lr)

    def batch_loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The loss of one local step (a forward pass and :meth:`loss` by default).

        Parameters
        ----------
        model : torch.nn.Module
            The model being trained.
        x, y : torch.Tensor
            One minibatch from :meth:`batches`, on the client's device.

        Returns
        -------
        torch.Tensor
            A scalar to back-propagate (the model's auxiliary loss, e.g. MJP's, is added to it).
        """
        return self.loss(model, model(x), y)

    def before_step(self, model: nn.Module) -> None:
        """Called after backward, before the optimizer step (e.g. SCAFFOLD's gradient correction).

        Parameters
        ----------
        model : torch.nn.Module
            The model being trained, its gradients filled.
        """

    def after_step(self, model: nn.Module) -> None:
        """Called after the optimizer step (e.g. to re-apply a sparsity mask).

        Parameters
        ----------
        model : torch.nn.Module
            The model being trained.
        """

    def batches(self, config: ConfigRecord, generator: torch.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The minibatches of one local epoch.

        Parameters
        ----------
        config : ConfigRecord
            The train message's instructions (``BATCH_SIZE``, ``SERVER_ROUND``).
        generator : torch.Generator
            The shuffle's source, seeded by run, round and client.

        Returns
        -------
        Iterator[tuple[torch.Tensor, torch.Tensor]]
            (x, y) on the client's device, augmented as the run's ``augment`` says.
        """
        return self.env.data.batches(
            integer(config, BATCH_SIZE), self.env.device, generator, self.env.train_settings().augment
        )

    # -- the update -------------------------------------------------------------------------
    def train(self, content: RecordDict, server_round: int) -> RecordDict:
        """The reply to a train message: load the received model, :meth:`fit`, send it back.

        Parameters
        ----------
        content : RecordDict
            The message: the global model (``ARRAYS``) and the round's ``CONFIG``.
        server_round : int
            The round.

        Returns
        -------
        RecordDict
            The trained model (``ARRAYS``) and :meth:`metrics` (``METRICS``).
        """
        config: ConfigRecord = config_of(content)
        model = self.env.model
        load_record(model, arrays_of(content))
        stats = self.fit(model, config, server_round)
        return RecordDict({ARRAYS: model_reply(model), METRICS: self.metrics(stats)})

    def evaluate(self, content: RecordDict, server_round: int) -> RecordDict:
        """The reply to an evaluate message: the received model scored on the client's own test split.

        Parameters
        ----------
        content : RecordDict
            The model to score (``ARRAYS``); decentralized clients score their personal model instead.
        server_round : int
            The round.

        Returns
        -------
        RecordDict
            ``METRICS`` with ``ACCURACY``, ``LOSS``, ``NUM_EXAMPLES`` and, where the client has labels,
            ``SUBSET_ACCURACY`` (:meth:`test_metrics`).
        """
        load_record(self.env.model, arrays_of(content))
        return self.test_metrics(self.env.model)

    def test_metrics(self, model: nn.Module) -> RecordDict:
        """Accuracy and loss of ``model`` on the client's own test split.

        Accuracy and loss on the own test split, and ``subset-accuracy``: the argmax over the labels of the
        client's training data only (where it has labeled data).
        """
        env = self.env
        classes = [int(c) for c in torch.unique(env.data.y)] if len(env.data) else None
        result = evaluate(model, env.test, int(env.cfg.eval_batch_size), env.device, classes=classes)
        metrics = MetricRecord({ACCURACY: result[ACCURACY], LOSS: result[LOSS], NUM_EXAMPLES: len(env.test)})
        if "subset_accuracy" in result:
            metrics[SUBSET_ACCURACY] = result["subset_accuracy"]
        return RecordDict({METRICS: metrics})

    def metrics(self, stats: TrainStats) -> MetricRecord:
        """The train reply's metrics.

        Parameters
        ----------
        stats : TrainStats
            What :meth:`fit` did.

        Returns
        -------
        MetricRecord
            ``NUM_EXAMPLES`` (the reply's weight), ``TRAIN_LOSS`` and ``NUM_STEPS``; subclasses add theirs.
        """
        return MetricRecord({NUM_EXAMPLES: stats.examples, TRAIN_LOSS: stats.loss, NUM_STEPS: stats.steps})

    def fit(self, model: nn.Module, config: ConfigRecord, server_round: int) -> TrainStats:
        """Run the configured local epochs on this client's data, seeded by run, round and client.

        Parameters
        ----------
        model : torch.nn.Module
            The model to train in place.
        config : ConfigRecord
            The round's ``LR``, ``LOCAL_EPOCHS`` and ``BATCH_SIZE``.
        server_round : int
            The round (part of the seeds).

        Returns
        -------
        TrainStats
            Mean loss, steps and the samples the client weighs.
        """
        env = self.env
        settings = env.train_settings()
        seed_torch(settings.seed, "train", server_round, env.client_id)
        generator = torch_generator(settings.seed, "shuffle", server_round, env.client_id)
        model.train()
        total, steps = 0.0, 0
        base_optimizer = self.optimizer(model, number(config, LR))
        clip_norm = settings.clip_norm
        with local_training(env.defence, model, base_optimizer, integer(config, BATCH_SIZE)) as optimizer:
            for _ in range(integer(config, LOCAL_EPOCHS)):
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
