"""FedSA's party side: a teacher that never leaves the party, saliency scores, and local amalgamation.

A party holds a teacher pre-trained on its own task and data. It answers three kinds of request
(``fedsa-phase`` in the config), none of which returns raw data or teacher weights:

- ``teacher``: prepare the teacher once (train it on the party's own labeled data, load it from
  ``strategy.teachers.paths[party]``, or keep it at random init for parties listed in
  ``strategy.teachers.random``, or train it on the party's images with shuffled labels for parties
  in ``strategy.teachers.shuffled``, or train it on another dataset's images for parties in
  ``strategy.teachers.foreign``: deliberately useless teachers) and report its accuracy on the
  party's own test split;
- ``select``: given the student and the student owner's probe images, compare the Grad-CAM
  saliency maps of teacher and student (at ``strategy.saliency_layer``) on each image and return the mean similarity
  per target
  task (scalars only);
- ``amalgamate``: train a copy of the student so that a 1x1-conv translator of its last conv
  feature map matches the teacher's (FitNets hint loss, MSE) on the party's own images, and return
  the student; the translator stays at the party (client state).
"""

from __future__ import annotations

import dataclasses
import os
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ConfigRecord, MetricRecord, RecordDict
from torch import nn
from torch.nn import functional as F
from typing_extensions import override

from clients.base import Client, make_optimizer
from fedsim.data.datasets import ImageDataset, load_dataset
from fedsim.data.local import LocalData
from fedsim.errors import ConfigError
from fedsim.evaluation import evaluate
from fedsim.models import features_of, model_from_config, split_model
from fedsim.protocols.fedsa import AMALGAMATE, PHASE, PROBE, SELECT, TEACHER, TEACHER_ACCURACY, similarity_key
from fedsim.protocols.messages import ACCURACY, ARRAYS, LAST_CHECKPOINT, METRICS, NUM_EXAMPLES
from fedsim.records import arrays_of, config_of, integer, load_record, model_to_record, text
from fedsim.seeding import seed_torch, torch_generator


def conv_split(
    model: nn.Module, input_shape: tuple[int, ...], layer: str = "last"
) -> tuple[nn.Sequential, nn.Sequential]:
    """``model`` split after a feature layer with a spatial output.

    (low, high) of ``model`` split after a feature layer whose output is a spatial map (N, C, h, w): ``last``:
    the last one with h * w > 1 (where the hint loss looks); ``intermediate``: the last one at a higher
    resolution than that (the stage before the last, as the official Grad-CAM target_layer, layer3 of a
    ResNet), or the last one where there is no earlier stage.
    """
    layers = list(features_of(model).children())
    x = torch.zeros(1, *input_shape, device=next(model.parameters()).device)
    spatial: list[tuple[int, int]] = []  # (split index, h * w)
    with torch.no_grad():
        was_training = model.training
        model.eval()
        for i, module in enumerate(layers):
            x = module(x)
            if x.dim() == 4 and x.shape[2] * x.shape[3] > 1:
                spatial.append((i + 1, x.shape[2] * x.shape[3]))
        model.train(was_training)
    if not spatial:
        raise ConfigError(
            f"FedSA needs a convolutional model: {type(model).__name__} has no spatial feature map (use model=cnn or "
            "resnet18)"
        )
    last, final_size = spatial[-1]
    if layer == "intermediate":
        earlier = [i for i, size in spatial if size > final_size]
        last = earlier[-1] if earlier else last
    return split_model(model, last)


def gradcam(model: nn.Module, x: torch.Tensor, layer: str = "intermediate") -> torch.Tensor:
    """Grad-CAM maps of ``model``'s predicted class on ``x`` (Selvaraju et al., 2017).

    Grad-CAM maps (N, H, W) of ``model``'s predicted class on ``x`` at ``layer`` (see :func:`conv_split`),
    each scaled to [0, 1] and upsampled to the input size (Selvaraju et al., 2017).
    """
    low, high = conv_split(model, tuple(x.shape[1:]), layer)
    model.eval()
    feats = low(x).detach().requires_grad_(True)
    logits = high(feats)
    score = logits.gather(1, logits.argmax(1, keepdim=True)).sum()
    (grad,) = torch.autograd.grad(score, feats)
    cam = F.relu((grad.mean(dim=(2, 3), keepdim=True) * feats).sum(1, keepdim=True)).detach()
    cam = F.interpolate(cam, size=x.shape[2:], mode="bilinear", align_corners=False)[:, 0]
    low_, high_ = cam.amin(dim=(1, 2), keepdim=True), cam.amax(dim=(1, 2), keepdim=True)
    return (cam - low_) / (high_ - low_).clamp_min(1e-12)


def saliency_similarity(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image similarity 0.5 + 0.5 cos(a_k, b_k) of two stacks of saliency maps, in [0, 1]."""
    return 0.5 + 0.5 * F.cosine_similarity(a.flatten(1), b.flatten(1), dim=1, eps=1e-12)


def feature_channels(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Channels of the feature map a model's convolutional part produces."""
    low, _ = conv_split(model, input_shape)
    with torch.no_grad():
        return int(low.eval()(torch.zeros(1, *input_shape, device=next(model.parameters()).device)).shape[1])


def translator_for(student: nn.Module, teacher: nn.Module, input_shape: tuple[int, ...]) -> nn.Conv2d:
    """The 1x1 conv mapping the student's feature map to the teacher's channels (FitNets regressor)."""
    return nn.Conv2d(feature_channels(student, input_shape), feature_channels(teacher, input_shape), kernel_size=1)


def hint_loss(student_low: nn.Module, translator: nn.Module, teacher_low: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """MSE between the translated student feature map and the (fixed) teacher feature map."""
    with torch.no_grad():
        target = teacher_low(x)
    return F.mse_loss(translator(student_low(x)), target)


def shuffled_labels(env: Any) -> Any:
    """The party's environment with its labels shuffled: a useless teacher's data.

    The party's environment with its labels permuted at random (seeded): a teacher trained on it fits noise,
    the useless teacher of FedSA's selection test (its images, hence its low-level features, stay those of
    real data).
    """
    order = torch.randperm(len(env.data.y), generator=torch_generator(env.cfg.seed, "fedsa-shuffle", env.client_id))
    return dataclasses.replace(env, data=dataclasses.replace(env.data, y=env.data.y[order]))


def as_images_of(foreign: ImageDataset, like: ImageDataset) -> ImageDataset:
    """``foreign``'s images in ``like``'s shape: channels averaged or repeated, then resized (bilinear)."""
    channels, height, width = like.input_shape

    def convert(x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        if x.shape[1] != channels:
            x = x.mean(1, keepdim=True).expand(-1, channels, -1, -1)
        x = F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False)
        return x.round().clamp(0, 255).to(torch.uint8)

    grey = (float(np.mean(foreign.mean)),) * channels if len(foreign.mean) != channels else foreign.mean
    spread = (float(np.mean(foreign.std)),) * channels if len(foreign.std) != channels else foreign.std
    return dataclasses.replace(
        foreign, x_train=convert(foreign.x_train), x_test=convert(foreign.x_test), mean=grey, std=spread
    )


def foreign_data(env: Any, dataset: str) -> Any:
    """The party's environment with another dataset's images and labels in place of its own: a useless teacher's data.

    As many images as the party holds, drawn (seeded) from ``dataset``'s training set and converted to the run's image
    shape (:func:`as_images_of`): a teacher trained on them is a working network for another task, which knows none of
    the student's classes (FedSA's selection test with a teacher that is useless but not broken).
    """
    own = env.data.dataset
    foreign = load_dataset(dataset, str(env.cfg.data_root), bool(env.cfg.dataset.download))
    if foreign.num_classes > own.num_classes:
        raise ConfigError(
            f"strategy.teachers.foreign_dataset={dataset} has {foreign.num_classes} classes, more than the run's "
            f"{own.num_classes}: pick a dataset with at most {own.num_classes}"
        )
    images = as_images_of(foreign, own)
    pick = torch.randperm(len(images.y_train), generator=torch_generator(env.cfg.seed, "fedsa-foreign", env.client_id))
    pick = pick[: len(env.data)]
    return dataclasses.replace(env, data=LocalData(images.x_train[pick], images.y_train[pick], images))


class FedSAParty(Client):
    """A teacher party: prepares its teacher, scores saliency similarity, amalgamates locally."""

    @property
    def teacher_file(self) -> Path:
        """Where this party keeps its trained teacher (under the run directory)."""
        return Path(self.env.cfg.run_dir) / "teachers" / f"party-{self.env.client_id:03d}.pt"

    @cached_property
    def teacher(self) -> nn.Module:
        """The party's teacher, loaded from :attr:`teacher_file` (prepared in the TEACHER phase)."""
        cfg, data = self.env.cfg, self.env.data.dataset
        teacher = model_from_config(cfg, data.input_shape, data.num_classes).to(self.env.device)
        teacher.load_state_dict(torch.load(self.teacher_file, map_location=self.env.device, weights_only=True))
        return teacher.eval().requires_grad_(False)

    @override
    def train(self, content: RecordDict, server_round: int) -> RecordDict:
        phase = text(config_of(content), PHASE)
        if phase == TEACHER:
            return self.prepare_teacher(config_of(content))
        if phase == SELECT:
            return self.score(content)
        if phase == AMALGAMATE:
            return self.amalgamate(content, server_round)
        raise ValueError(f"unknown fedsa-phase {phase!r}")

    # -- teacher ------------------------------------------------------------------------------
    def prepare_teacher(self, config: ConfigRecord) -> RecordDict:
        """The TEACHER phase: train (or load, or leave useless) the teacher; reply its test accuracy."""
        teachers, env = self.env.cfg.strategy.teachers, self.env
        if not self.teacher_file.exists():
            seed_torch(env.cfg.seed, "fedsa-teacher", env.client_id)
            model = model_from_config(env.cfg, env.data.dataset.input_shape, env.data.dataset.num_classes).to(
                env.device
            )
            if teachers.paths:
                if env.client_id >= len(teachers.paths):
                    raise ConfigError(
                        f"strategy.teachers.paths has {len(teachers.paths)} entries: party {env.client_id} has no "
                        "checkpoint"
                    )
                path = Path(teachers.paths[env.client_id])
                if not path.is_file():
                    raise ConfigError(
                        f"strategy.teachers.paths[{env.client_id}]={path} does not exist: pass a teacher state_dict "
                        "file"
                    )
                model.load_state_dict(torch.load(path, map_location=env.device, weights_only=True))
            elif env.client_id in list(teachers.shuffled or []):
                Client(shuffled_labels(env)).fit(model, config, server_round=0)  # a teacher that learned nothing true
            elif env.client_id in list(teachers.foreign or []):
                Client(foreign_data(env, str(teachers.foreign_dataset))).fit(model, config, server_round=0)
            elif env.client_id not in list(teachers.random or []):
                Client(env).fit(model, config, server_round=0)  # plain supervised training on the party's task
            self.teacher_file.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.teacher_file.with_suffix(".tmp")
            torch.save({k: v.cpu() for k, v in model.state_dict().items()}, tmp)
            os.replace(tmp, self.teacher_file)
        result = evaluate(self.teacher, env.test, int(env.cfg.eval_batch_size), env.device)
        metrics: dict[str, Any] = {TEACHER_ACCURACY: result[ACCURACY], NUM_EXAMPLES: len(env.data)}
        return RecordDict({METRICS: MetricRecord(metrics)})

    # -- selection ----------------------------------------------------------------------------
    def score(self, content: RecordDict) -> RecordDict:
        """Mean saliency similarity of teacher and student on each task's probe images."""
        student = self.env.model
        load_record(student, arrays_of(content))
        x = torch.from_numpy(arrays_of(content, PROBE)["x"].numpy()).to(self.env.device)
        task = torch.from_numpy(arrays_of(content, PROBE)["task"].numpy()).to(self.env.device)
        layer = str(self.env.cfg.strategy.saliency_layer)
        similarity = saliency_similarity(gradcam(student, x, layer), gradcam(self.teacher, x, layer))
        metrics: dict[str, Any] = {similarity_key(int(t)): float(similarity[task == t].mean()) for t in task.unique()}
        metrics[NUM_EXAMPLES] = len(self.env.data)
        return RecordDict({METRICS: MetricRecord(metrics)})

    # -- amalgamation -------------------------------------------------------------------------
    def amalgamate(self, content: RecordDict, server_round: int) -> RecordDict:
        """The AMALGAMATE phase: distil the teacher into the received student on the probe images; reply it."""
        config, env = config_of(content), self.env
        student = env.model
        load_record(student, arrays_of(content))
        shape = env.data.dataset.input_shape
        self.student_low, _ = conv_split(student, shape)
        self.teacher_low, _ = conv_split(self.teacher, shape)
        seed_torch(env.cfg.seed, "fedsa-translator", env.client_id)
        self.translator = translator_for(student, self.teacher, shape).to(env.device)
        saved = env.state.load(server_round)
        if saved is not None:
            self.translator.load_state_dict(saved)
        stats = self.fit(student, config, server_round)
        env.state.save(server_round, self.translator.state_dict(), integer(config, LAST_CHECKPOINT))
        return RecordDict({ARRAYS: model_to_record(student), METRICS: self.metrics(stats)})

    def optimizer(self, model: nn.Module, lr: float) -> torch.optim.Optimizer:
        """Student and translator train together."""
        return make_optimizer(nn.ModuleList([model, self.translator]), self.env.train_settings().optimizer, lr)

    def batch_loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The hint loss on the party's images; their labels are never used for the student."""
        return hint_loss(self.student_low, self.translator, self.teacher_low, x)


CLIENT = FedSAParty
