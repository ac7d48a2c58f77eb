"""FedSA (Xie et al., arXiv:2208.00561).

FedSA: "Federated Selective Aggregation for Knowledge Amalgamation" (Xie, Yu, Fang, Song, Feng, Wang, Sun,
Song; arXiv:2208.00561; official code in github.com/zju-vipa/KamalEngine,
examples/knowledge_amalgamation/FedSA).

Parties (the clients) each hold a teacher pre-trained on their own task and data; neither leaves
the party (``clients/fedsa.py``). The server owns a student for a new task, for which it has only
a small labeled probe set (``probe_per_class`` images per class of each target task; drawn from the
test split and removed from the evaluation set, so it is disjoint from every party's data and from
what the student is scored on).

1. Start: every party prepares its teacher (trained on its own data or loaded); the student is
   trained on the probe set (``probe_epochs``).
2. Saliency-based selection (round 1 and every ``select_every`` rounds): the server sends the
   student and the probe images (not their labels) to every party; each returns, per target task,
   the mean similarity 0.5 + 0.5 cos between its teacher's and the student's Grad-CAM maps. As in
   the official code, transferability t_k = 1 / similarity_k, scores 2 - t_k are min-max scaled and
   soft-maxed into selection probabilities, and ``num_selected`` teachers are drawn per task with
   replacement (or the top ones with ``sample: false``).
3. Selective aggregation (every round): each selected party trains the student to reproduce its
   teacher's feature map through a translator on its own images; the server averages the returned
   students, each weighted by how often its party was drawn.
4. Task adaptation (every evaluation): a copy of the student gets a fresh last layer and is
   fine-tuned on the probe set (``adapt_epochs``); its accuracy on each task's test images is the
   round's test accuracy (mean over tasks; per task in ``task_accuracy``).

Single-task: ``tasks: null`` (all classes of the dataset, one task). Multi-task: a list of class
lists; the student has one output per class and task t is scored on its own classes' logits.
Baselines: ``selection: all`` (every teacher every round, equal weights), ``random`` (teachers drawn
uniformly: the official select_random), ``none`` (no teacher: the student learns from its probe set
only, the "scratch" student of the claim). Selection metrics per round: ``selection_probability_<t>``
and ``selection_similarity_<t>`` (one entry per party; -1 where it did not answer).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from torch import nn
from torch.nn import functional as F
from typing_extensions import override

from fedsim.client_app import resolve_device
from fedsim.data import ImageDataset, dataset_from_config
from fedsim.errors import ConfigError, FedsimError
from fedsim.models import classifier_of, model_from_config
from fedsim.params import spec
from fedsim.progress import show
from fedsim.protocols.fedsa import (
    AMALGAMATE,
    PHASE,
    PROBE,
    SELECT,
    SIMILARITY_PREFIX,
    TEACHER,
    TEACHER_ACCURACY,
    similarity_key,
)
from fedsim.protocols.messages import ARRAYS, BATCH_SIZE, CONFIG, LOCAL_EPOCHS, LR, METRICS, SERVER_ROUND
from fedsim.records import (
    arrays_of,
    has_record,
    load_record,
    metrics_of,
    model_to_record,
    number,
    payload_bytes,
    weighted_average,
)
from fedsim.results import RunDirectory, append_record
from fedsim.seeding import rng, seed_torch, torch_generator
from fedsim.strategy import ClientReply, FedsimStrategy, StrategyParams, typed_params

log = logging.getLogger("fedsim")


def target_tasks(tasks: Any, num_classes: int) -> list[list[int]]:
    """The student's tasks as class lists: ``None`` is one task over every class."""
    if tasks is None:
        return [list(range(num_classes))]
    out = [sorted({int(c) for c in task}) for task in tasks]
    if not out or any(not t or t[0] < 0 or t[-1] >= num_classes for t in out):
        raise ConfigError(f"strategy.tasks={tasks}: give non-empty lists of class ids in 0..{num_classes - 1}")
    return out


def probe_split(labels: np.ndarray, classes: list[int], per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(probe, rest) indices among the samples of ``classes``: ``per_class`` probe samples each."""
    probe, rest = [], []
    for c in classes:
        idx = rng(seed, "fedsa-probe", c).permutation(np.flatnonzero(labels == c))
        if len(idx) <= per_class:
            raise ConfigError(f"strategy.probe_per_class={per_class} leaves no test images of class {c}: lower it")
        probe.append(idx[:per_class])
        rest.append(idx[per_class:])
    return np.sort(np.concatenate(probe)), np.sort(np.concatenate(rest))


def selection_probabilities(similarity: np.ndarray) -> np.ndarray:
    """The official rule: transferability 1/s, scores 2 - 1/s min-max scaled to [0, 1], softmax."""
    score = 2.0 - 1.0 / np.maximum(similarity, 1e-12)
    spread = score.max() - score.min()
    scaled = (score - score.min()) / spread if spread > 0 else np.zeros_like(score)
    p = np.exp(scaled - scaled.max())
    return p / p.sum()


def task_loss(logits: torch.Tensor, y: torch.Tensor, classes: list[int]) -> torch.Tensor:
    """Cross-entropy of a task over its own classes' logits."""
    index = torch.tensor(classes, device=logits.device)
    target = (y[:, None] == index[None, :]).float().argmax(1)
    return F.cross_entropy(logits[:, index], target)


class StudentTasks:
    """The server's side of the new task(s): probe sets, task adaptation and per-task scoring."""

    def __init__(self, cfg: Any, params: Params, data: ImageDataset) -> None:
        s = params
        self.cfg, self.params, self.data = cfg, params, data
        self.tasks = target_tasks(s.tasks, data.num_classes)
        y = data.y_test.numpy()
        splits = [probe_split(y, t, int(s.probe_per_class), int(cfg.seed)) for t in self.tasks]
        self.probe = [p for p, _ in splits]
        self.test = [r for _, r in splits]
        self.device = resolve_device(cfg.device)
        self.model = model_from_config(cfg, data.input_shape, data.num_classes).to(self.device)

    def probe_record(self) -> ArrayRecord:
        """The probe images (normalized, no labels) and the task each belongs to."""
        idx = np.concatenate(self.probe)
        task = np.concatenate([np.full(len(p), t) for t, p in enumerate(self.probe)])
        x = self.data.normalize(self.data.x_test[torch.from_numpy(idx)])
        return ArrayRecord({"x": x.contiguous(), "task": torch.from_numpy(task)})

    def train_on_probe(
        self, arrays: ArrayRecord, epochs: int, lr: float, purpose: str, fresh_head: bool
    ) -> ArrayRecord:
        """Fine-tune ``arrays`` on every task's probe set (Adam); optionally with a new last layer."""
        model = self.model
        load_record(model, arrays)
        seed_torch(self.cfg.seed, purpose)
        if fresh_head:
            last = [m for m in classifier_of(model).modules() if isinstance(m, nn.Linear)][-1]
            last.reset_parameters()
        optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=1e-4)
        generator = torch_generator(self.cfg.seed, purpose, "shuffle")
        batch = int(self.cfg.batch_size)
        model.train()
        for _ in range(epochs):
            for t, idx in enumerate(self.probe):
                order = torch.from_numpy(idx)[torch.randperm(len(idx), generator=generator)]
                for chunk in order.split(batch):
                    x = self.data.normalize(self.data.x_test[chunk]).to(self.device)
                    loss = task_loss(model(x), self.data.y_test[chunk].to(self.device), self.tasks[t])
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
        return model_to_record(model)

    @torch.no_grad()
    def score(self, arrays: ArrayRecord) -> dict[str, Any]:
        """Accuracy and loss of ``arrays`` on each task's test images (mean over tasks first)."""
        model = self.model
        load_record(model, arrays)
        model.eval()
        accuracy, losses = [], []
        for classes, idx in zip(self.tasks, self.test):
            correct, loss_sum = 0, 0.0
            for chunk in torch.from_numpy(idx).split(int(self.cfg.eval_batch_size)):
                x = self.data.normalize(self.data.x_test[chunk]).to(self.device)
                y = self.data.y_test[chunk].to(self.device)
                logits = model(x)[:, classes]
                target = (y[:, None] == torch.tensor(classes, device=self.device)[None, :]).float().argmax(1)
                correct += int((logits.argmax(1) == target).sum())
                loss_sum += float(F.cross_entropy(logits, target, reduction="sum"))
            accuracy.append(correct / len(idx))
            losses.append(loss_sum / len(idx))
        return {"accuracy": float(np.mean(accuracy)), "loss": float(np.mean(losses)), "task_accuracy": accuracy}

    def adapted_score(self, arrays: ArrayRecord, purpose: str) -> dict[str, Any]:
        """Task adaptation on the probe set, then the per-task scores."""
        s = self.params
        return self.score(self.train_on_probe(arrays, int(s.adapt_epochs), float(s.probe_lr), purpose, fresh_head=True))


class FedSA(FedsimStrategy):
    """FedSA: a server-side student amalgamated from the parties' teachers, selected by saliency.

    The server owns a student for a new task and a small labeled probe set; every
    ``select_every`` rounds it asks the parties how similar their teachers' Grad-CAM saliency on
    the probe images is to the student's, draws teachers by that similarity, and averages the
    students the selected parties amalgamate.

    Notes
    -----
    The client (a party) answers three phases named by ``PHASE`` in ``CONFIG``: ``TEACHER``
    (prepare its teacher, reply ``TEACHER_ACCURACY``), ``SELECT`` (reply one
    ``similarity_key(task)`` per task, a cosine in [-1, 1]) and ``AMALGAMATE`` (train the received
    student from its teacher on the probe images, reply it under ``ARRAYS``).

    References
    ----------
    Xie et al., "Federated Selective Aggregation for Knowledge Amalgamation", arXiv:2208.00561.
    """

    params: Params

    paper = "Xie et al., arXiv:2208.00561"

    def __init__(self, cfg: Any, param_keys: list[str], params: Params) -> None:
        super().__init__(cfg, param_keys, params)
        self.student = StudentTasks(cfg, params, dataset_from_config(cfg))
        self.selected: list[int] = []  # party ids, with multiplicity (their weights in averaging)
        self.probabilities: dict[int, list[float]] = {}  # task -> selection probability per party
        self.similarity: dict[int, list[float]] = {}  # task -> saliency similarity per party, last selection
        self.traffic: dict[str, int] = {}
        self.log_file: Path | None = None
        self.teachers = typed_params(TeacherParams, params.teachers)  # checked with the config

    # -- start: teachers, probe-trained student -----------------------------------------------------
    @override
    def setup(self, grid: Grid, run: RunDirectory) -> None:
        self.log_file = run.path / "fedsa.jsonl"
        t = self.teachers
        config = ConfigRecord(
            {
                PHASE: TEACHER,
                SERVER_ROUND: 0,
                LR: float(t.lr),
                LOCAL_EPOCHS: int(t.epochs),
                BATCH_SIZE: int(self.cfg.batch_size),
            }
        )
        replies = self.ask(grid, sorted(self.node_of), RecordDict({CONFIG: config}))
        teachers = {r.client_id: number(metrics_of(r.content), TEACHER_ACCURACY) for r in replies}
        self.write_log({"event": "teachers", "teacher_accuracy_own_task": teachers})
        show(
            "[fedsa] teachers ready; accuracy on their own tasks: "
            + ", ".join(f"{k}: {v:.3f}" for k, v in teachers.items())
        )

    @override
    def initial_arrays(self, arrays: ArrayRecord) -> ArrayRecord:
        s = self.params
        arrays = self.student.train_on_probe(
            arrays, int(s.probe_epochs), float(s.probe_lr), "fedsa-probe-init", fresh_head=False
        )
        alone = self.student.adapted_score(arrays, "fedsa-adapt-0")
        self.write_log({"event": "student_alone", **alone})
        show(f"[fedsa] student trained alone on the probe set: accuracy {alone['accuracy']:.4f}")
        return arrays

    def ask(self, grid: Grid, parties: list[int], content: RecordDict, server_round: int = 0) -> list[ClientReply]:
        """Send ``content`` to ``parties``; the replies that carry metrics (failures are logged)."""
        messages = [Message(content, dst_node_id=self.node_of[p], message_type=MessageType.TRAIN) for p in parties]
        replies = list(grid.send_and_receive(messages, timeout=self.cfg.round_timeout))
        self.traffic = {
            "down": sum(payload_bytes(m.content) for m in messages),
            "up": sum(payload_bytes(r.content) for r in replies if not r.has_error()),
        }
        accepted = self.accept_replies(server_round, replies, check=self.metrics_problem)
        if not accepted:
            raise FedsimError("FedSA: no party answered (see the warnings above); check the client logs")
        return accepted

    def metrics_problem(self, msg: Message) -> str | None:
        """Why a phase reply's metrics cannot be used (non-finite, a similarity outside [-1, 1]), or None."""
        if not has_record(msg.content, METRICS, MetricRecord):
            return "malformed reply: needs a 'metrics' MetricRecord"
        metrics = metrics_of(msg.content)
        bad = [k for k, v in metrics.items() if isinstance(v, float) and not np.isfinite(v)]
        if bad:
            return f"returned non-finite metric '{bad[0]}'"
        outside = [  # a cosine
            k
            for k, v in metrics.items()
            if k.startswith(SIMILARITY_PREFIX) and (not isinstance(v, (int, float)) or not -1.0 <= v <= 1.0)
        ]
        return f"returned '{outside[0]}' outside [-1, 1]" if outside else None

    def write_log(self, record: dict[str, Any]) -> None:
        """Append one record to the run's ``fedsa.jsonl``."""
        if self.log_file is not None:
            append_record(self.log_file, record)

    # -- selection ----------------------------------------------------------------------------------
    def select(self, server_round: int, arrays: ArrayRecord, grid: Grid) -> None:
        """Ask every party for its saliency similarities and draw this period's teachers."""
        s, parties = self.params, sorted(self.node_of)
        uniform = {t: [1.0 / len(parties)] * len(parties) for t in range(len(self.student.tasks))}
        if s.selection in ("all", "none"):
            self.selected, self.traffic, self.probabilities = (parties if s.selection == "all" else []), {}, uniform
            return
        if s.selection == "random":  # the official select_random baseline: teachers drawn uniformly
            gen = rng(self.cfg.seed, "fedsa-random", server_round)
            self.selected = [
                parties[i] for t in uniform for i in gen.choice(len(parties), size=int(s.num_selected), replace=True)
            ]
            self.traffic, self.probabilities = {}, uniform
            self.write_log(
                {"event": "selection", "round": server_round, "probabilities": uniform, "selected": self.selected}
            )
            return
        config = ConfigRecord({PHASE: SELECT, SERVER_ROUND: server_round})
        replies = self.ask(
            grid,
            parties,
            RecordDict({ARRAYS: arrays, PROBE: self.student.probe_record(), CONFIG: config}),
            server_round,
        )
        answered = [r.client_id for r in replies]
        gen = rng(self.cfg.seed, "fedsa-select", server_round)
        self.selected, self.probabilities, similarity = [], {}, {}
        for t in range(len(self.student.tasks)):
            sim = np.array([number(metrics_of(r.content), similarity_key(t)) for r in replies])
            p = selection_probabilities(sim)
            k = int(s.num_selected)
            chosen = (
                gen.choice(len(answered), size=k, replace=True, p=p) if s.sample else np.argsort(-p, kind="stable")[:k]
            )
            self.selected += [answered[i] for i in chosen]
            self.probabilities[t] = [float(p[answered.index(c)]) if c in answered else 0.0 for c in parties]
            similarity[t] = dict(zip(answered, sim.tolist()))
        self.similarity = {t: [float(v.get(c, float("nan"))) for c in parties] for t, v in similarity.items()}
        self.write_log(
            {
                "event": "selection",
                "round": server_round,
                "similarity": similarity,
                "probabilities": self.probabilities,
                "selected": self.selected,
            }
        )

    # -- rounds -------------------------------------------------------------------------------------
    @override
    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self.traffic = {}
        if not self.selected or (server_round - 1) % int(self.params.select_every) == 0:
            self.select(server_round, arrays, grid)
        self.global_arrays = arrays
        if not self.selected:  # selection none: the student learns from its probe set only
            return []
        config[SERVER_ROUND] = server_round
        config[PHASE] = AMALGAMATE
        content = RecordDict({ARRAYS: arrays, CONFIG: config})
        return [
            Message(content, dst_node_id=self.node_of[p], message_type=MessageType.TRAIN, group_id=str(server_round))
            for p in sorted(set(self.selected))
        ]

    @override
    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        if self.params.selection == "none":  # no teacher was asked: the probe-trained student stays
            assert self.global_arrays is not None
            return self.global_arrays, MetricRecord({"selected-teachers": []})
        return super().aggregate_train(server_round, replies)

    def aggregate(self, server_round: int, replies: list[ClientReply]) -> tuple[ArrayRecord, MetricRecord]:
        """Mean of the returned students, each weighted by how often its party was drawn."""
        weights = [float(self.selected.count(r.client_id)) for r in replies]
        arrays = weighted_average([arrays_of(r.content) for r in replies], weights)
        metrics = self.aggregate_metrics(replies)
        metrics["selected-teachers"] = list(self.selected)
        for t, p in self.probabilities.items():
            metrics[f"selection-probability-{t}"] = p
        for t, sim in self.similarity.items():  # per party; -1 (outside 0.5 + 0.5 cos's [0, 1]) where it did not answer
            metrics[f"selection-similarity-{t}"] = [v if np.isfinite(v) else -1.0 for v in sim]
        metrics.update(self.useless_teacher_metrics())
        if self.traffic:
            metrics["selection-bytes-down"], metrics["selection-bytes-up"] = self.traffic["down"], self.traffic["up"]
        return arrays, metrics

    def useless_teacher_metrics(self) -> dict[str, float]:
        """How the selection ranks teachers that are useless by construction.

        Where some teachers are useless by construction (``teachers.random`` / ``shuffled`` / ``foreign``): their mean
        selection probability, and the margin min(useful) - max(useless) (> 0: every useless teacher is ranked
        below every useful one), both averaged over tasks.
        """
        t, parties = self.teachers, sorted(self.node_of)
        useless = {int(p) for p in [*(t.random or []), *(t.shuffled or []), *(t.foreign or [])]} & set(parties)
        if not useless or len(useless) == len(parties) or not self.probabilities:
            return {}
        margins, probabilities = [], []
        for p in self.probabilities.values():
            bad = [p[i] for i, c in enumerate(parties) if c in useless]
            good = [p[i] for i, c in enumerate(parties) if c not in useless]
            margins.append(min(good) - max(bad))
            probabilities.append(float(np.mean(bad)))
        return {
            "useless-teacher-margin": float(np.mean(margins)),
            "useless-teacher-probability": float(np.mean(probabilities)),
        }

    @override
    def evaluate_round(self, server_round: int, arrays: ArrayRecord, grid: Grid, evaluate: Callable) -> dict[str, Any]:
        return self.student.adapted_score(arrays, f"fedsa-adapt-{server_round}")

    # -- checkpoints --------------------------------------------------------------------------------
    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "selected": list(self.selected),
            "probabilities": {str(k): v for k, v in self.probabilities.items()},
            "similarity": {str(k): v for k, v in self.similarity.items()},
        }

    @override
    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.selected = [int(p) for p in state.get("selected", [])]
        self.probabilities = {int(k): list(v) for k, v in state.get("probabilities", {}).items()}
        self.similarity = {int(k): list(v) for k, v in state.get("similarity", {}).items()}


@dataclass(kw_only=True)
class TeacherParams:
    """The parties' teachers (``strategy.teachers``).

    How they are trained or loaded, and which are useless by construction.

    """

    epochs: int = spec("epochs each party trains its teacher", ge=0)
    lr: float = spec("teacher learning rate", gt=0)
    paths: list[str] | None = spec("one teacher state_dict file per party, loaded instead of training")
    random: list[int] = spec("party ids whose teacher stays at random init (useless teachers)", ge=0)
    shuffled: list[int] = spec("party ids whose teacher trains on shuffled labels (useless teachers)", ge=0)
    foreign: list[int] = spec(
        "party ids whose teacher trains on another dataset (foreign_dataset): useless for the task", ge=0
    )
    foreign_dataset: str = spec("the dataset the foreign teachers learn, its images resized to the run's")


@dataclass(kw_only=True)
class Params(StrategyParams):
    """FedSA's hyperparameters (``configs/strategy/fedsa.yaml``)."""

    tasks: list[list[int]] | None = spec("the student's task(s): class lists; null = every class", ge=0)
    probe_per_class: int = spec("labeled probe images per class", ge=1)
    probe_epochs: int = spec("student epochs on the probe set before amalgamation", ge=0)
    adapt_epochs: int = spec("task-adaptation epochs before every test", ge=0)
    probe_lr: float = spec("Adam step size on the probe set", gt=0)
    selection: Literal["saliency", "random", "all", "none"] = spec("teacher selection")
    saliency_layer: Literal["intermediate", "last"] = spec("feature map whose Grad-CAM the selection compares")
    num_selected: int = spec("teachers drawn per task at each selection", ge=1)
    sample: bool = spec("draw by selection probability (true) or take the most similar")
    select_every: int = spec("rounds between selections", ge=1)
    teachers: dict = spec("the teacher parties (epochs, lr, paths, random)")

    @staticmethod
    def validate_run(cfg: Any) -> str | None:
        """Grad-CAM saliency needs a spatial feature map."""
        if cfg.model.name not in ("cnn", "resnet18"):
            return (
                "strategy=fedsa needs a convolutional model for its Grad-CAM saliency: "
                f"use model=cnn or resnet18 (got model={cfg.model.name})"
            )
        return None

    @staticmethod
    def validate(node: Any) -> str | None:
        """Check the nested ``teachers`` group."""
        from fedsim.params import check

        check("strategy.teachers", TeacherParams, node["teachers"])
        return None


STRATEGY = FedSA
