"""FedSA: saliency selection, privacy of the teachers, baselines and multi-task students."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from clients.fedsa import as_images_of, gradcam, saliency_similarity
from fedsim.backends import InProcessGrid
from fedsim.data.datasets import ImageDataset
from fedsim.engine import resume_config, run
from fedsim.models import build_model
from strategies.fedsa import probe_split, selection_probabilities, target_tasks
from tests.conftest import comparable, read_metrics

# digits (8x8) with the CNN: 4 parties of 2 classes each, quick teachers.
FEDSA = [
    "strategy=fedsa",
    "model=cnn",
    "optimizer.lr=0.001",
    "num_rounds=2",
    "strategy.teachers.epochs=3",
    "strategy.probe_per_class=5",
    "strategy.adapt_epochs=5",
    "strategy.probe_epochs=5",
]


def fedsa_log(path) -> list[dict]:
    return [json.loads(line) for line in (path / "fedsa.jsonl").read_text().splitlines()]


def test_setting_applies_unless_overridden(make_cfg):
    cfg = make_cfg("strategy=fedsa", "model=cnn")
    assert cfg.partition.name == "iid"  # the test's own partition=iid wins over FedSA's shards
    assert cfg.min_clients == 1 and cfg.optimizer.name == "adam"
    from fedsim.config import compose

    default = compose(["strategy=fedsa"])
    assert default.partition.name == "shards" and default.partition.classes_per_client == 2 and default.num_clients == 5
    assert (
        compose(["strategy=fedsa", "num_clients=3", "partition.classes_per_client=3"]).partition.classes_per_client == 3
    )


def test_selection_probabilities_follow_similarity():
    p = selection_probabilities(np.array([0.6, 0.9, 0.75]))
    assert p.sum() == pytest.approx(1.0)
    assert p[1] > p[2] > p[0]
    assert selection_probabilities(np.array([0.7, 0.7])) == pytest.approx([0.5, 0.5])


def test_gradcam_maps_and_similarity():
    torch.manual_seed(0)
    model = build_model("cnn", (1, 28, 28), 10)
    x = torch.randn(4, 1, 28, 28)
    maps = gradcam(model, x)
    assert maps.shape == (4, 28, 28)
    assert maps.min() >= 0 and maps.max() <= 1 + 1e-6
    assert saliency_similarity(maps, maps) == pytest.approx(torch.ones(4))
    shifted = torch.roll(maps, shifts=10, dims=2)
    assert (saliency_similarity(maps, shifted) < 0.999).all()


def test_probe_is_disjoint_from_the_test_images():
    labels = np.repeat(np.arange(4), 20)
    probe, rest = probe_split(labels, [1, 3], per_class=5, seed=0)
    assert np.bincount(labels[probe], minlength=4).tolist() == [0, 5, 0, 5]
    assert not set(probe) & set(rest) and len(rest) == 30 and set(labels[rest]) == {1, 3}
    assert target_tasks(None, 3) == [[0, 1, 2]]


def test_teacher_weights_never_leave_a_party(make_cfg, monkeypatch):
    sent: list = []
    original = InProcessGrid.send_and_receive

    def recording(self, messages, *, timeout=None):
        messages = list(messages)
        replies = list(original(self, messages, timeout=timeout))
        sent.extend(messages + replies)
        return replies

    monkeypatch.setattr(InProcessGrid, "send_and_receive", recording)
    path = run(make_cfg(*FEDSA))
    teachers = [torch.load(f, weights_only=True) for f in sorted((path / "teachers").glob("party-*.pt"))]
    assert len(teachers) == 4
    teacher_tensors = [t.numpy() for state in teachers for t in state.values()]
    student_keys = set(build_model("cnn", (1, 8, 8), 10).state_dict())
    arrays_seen = 0
    for msg in sent:
        if msg.has_error():
            continue
        for name, record in msg.content.array_records.items():
            assert name in ("arrays", "probe"), name
            if name == "arrays":
                assert set(record.keys()) == student_keys
            for arr in record.values():
                arrays_seen += 1
                values = arr.numpy()
                assert not any(t.shape == values.shape and np.array_equal(t, values) for t in teacher_tensors)
    assert arrays_seen > 0
    metrics = read_metrics(path)
    assert [m["round"] for m in metrics] == [1, 2] and all("test_accuracy" in m for m in metrics)
    events = [e["event"] for e in fedsa_log(path)]
    assert events[:3] == ["teachers", "student_alone", "selection"]


def selection_round(make_cfg, name: str, *extra: str) -> dict:
    path = run(make_cfg(*FEDSA, "num_rounds=1", "strategy.sample=false", "strategy.num_selected=1", *extra, name=name))
    return next(e for e in fedsa_log(path) if e["event"] == "selection")


def test_a_useless_teacher_loses_its_selection(make_cfg):
    good = selection_round(make_cfg, "good")
    chosen = good["selected"][0]
    bad = selection_round(make_cfg, "bad", f"strategy.teachers.random=[{chosen}]")
    assert chosen not in bad["selected"]
    assert bad["probabilities"]["0"][chosen] < good["probabilities"]["0"][chosen]
    assert bad["probabilities"]["0"][chosen] == min(bad["probabilities"]["0"])


def test_no_selection_baseline_uses_every_teacher(make_cfg):
    metrics = read_metrics(run(make_cfg(*FEDSA, "strategy.selection=all")))
    assert all(m["selected_teachers"] == [0, 1, 2, 3] and m["clients_ok"] == 4 for m in metrics)


def test_multi_task_student(make_cfg):
    path = run(make_cfg(*FEDSA, "strategy.tasks=[[0,1,2,3,4],[5,6,7,8,9]]", "num_rounds=1"))
    (record,) = read_metrics(path)
    assert len(record["task_accuracy"]) == 2
    assert record["test_accuracy"] == pytest.approx(np.mean(record["task_accuracy"]))
    assert len(record["selected_teachers"]) == 2 * 2  # num_selected per task
    assert {"selection_probability_0", "selection_probability_1"} <= set(record)


def test_fedsa_resumes_to_the_uninterrupted_metrics(make_cfg):
    fixed = [*FEDSA, "checkpoint_every=1", "strategy.select_every=2"]
    full = read_metrics(run(make_cfg(*fixed, "num_rounds=3", name="full")))
    path = run(make_cfg(*fixed, "num_rounds=2", name="cut"))
    run(resume_config(path, make_cfg("num_rounds=3")))
    assert comparable(read_metrics(path)) == comparable(full)


def test_gradcam_layer_is_the_stage_before_the_last_map():
    """The official target layer is the stage before the last (layer3 of a ResNet): for the FedAvg
    CNN on 28x28 images, its 14x14 map; ``last`` is the 7x7 map the hint loss matches."""
    from clients.fedsa import conv_split

    model = build_model("cnn", (1, 28, 28), 10).eval()
    x = torch.zeros(2, 1, 28, 28)
    assert conv_split(model, (1, 28, 28), "intermediate")[0](x).shape[2:] == (14, 14)
    assert conv_split(model, (1, 28, 28), "last")[0](x).shape[2:] == (7, 7)


def test_a_teacher_on_shuffled_labels_is_useless_and_scored_per_party(make_cfg):
    path = run(make_cfg(*FEDSA, "num_rounds=1", "strategy.teachers.shuffled=[0]", "strategy.teachers.epochs=10"))
    accuracy = fedsa_log(path)[0]["teacher_accuracy_own_task"]
    assert accuracy["0"] < 0.75 and min(accuracy[p] for p in ("1", "2", "3")) > 0.9  # 2 classes each: chance 0.5
    metrics = read_metrics(path)[0]
    assert len(metrics["selection_similarity_0"]) == 4 and all(0 <= s <= 1 for s in metrics["selection_similarity_0"])
    assert len(metrics["selection_probability_0"]) == 4
    p = metrics["selection_probability_0"]
    assert metrics["useless_teacher_probability"] == pytest.approx(p[0])
    assert metrics["useless_teacher_margin"] == pytest.approx(min(p[1:]) - p[0])


def test_random_and_no_teacher_baselines(make_cfg):
    drawn = read_metrics(run(make_cfg(*FEDSA, "strategy.selection=random", name="random")))
    assert all(len(m["selected_teachers"]) == 2 and m["selection_probability_0"] == [0.25] * 4 for m in drawn)
    assert "useless_teacher_margin" not in drawn[0]  # no teacher is useless by construction here
    path = run(make_cfg(*FEDSA, "strategy.selection=none", name="none"))
    assert all(m["clients_sampled"] == 0 and m["bytes_down"] == 0 and "train_loss" not in m for m in read_metrics(path))
    first, second = (torch.load(path / "checkpoints" / f"round_00000{r}.pt", weights_only=False) for r in (1, 2))
    student = [k for k in first["arrays"]]
    assert student and all(
        np.array_equal(first["arrays"][k], second["arrays"][k]) for k in student
    )  # the student stays


def test_foreign_images_take_the_runs_shape():
    def dataset(channels: int, side: int) -> ImageDataset:
        x = torch.randint(0, 256, (4, channels, side, side), dtype=torch.uint8)
        y = torch.arange(4)
        mean, std = (0.5,) * channels, (0.25,) * channels
        return ImageDataset("d", x, y, x.clone(), y.clone(), 10, mean, std)

    colour, grey = dataset(3, 32), dataset(1, 8)
    as_grey = as_images_of(colour, grey)
    assert as_grey.input_shape == (1, 8, 8) and as_grey.x_train.dtype == torch.uint8
    assert as_grey.mean == (0.5,) and torch.equal(as_grey.y_train, colour.y_train)
    as_colour = as_images_of(grey, colour)
    assert as_colour.input_shape == (3, 32, 32) and as_colour.mean == (0.5, 0.5, 0.5)
    assert torch.equal(as_colour.x_train[:, 0], as_colour.x_train[:, 2])  # grey repeated over the channels


def test_a_teacher_on_another_dataset_is_useless_and_counted_as_such(make_cfg):
    path = run(
        make_cfg(
            *FEDSA,
            "num_rounds=1",
            "strategy.teachers.foreign=[0]",
            "strategy.teachers.foreign_dataset=fashion_mnist",
            "strategy.teachers.epochs=10",
        )
    )
    accuracy = fedsa_log(path)[0]["teacher_accuracy_own_task"]
    assert accuracy["0"] < 0.75 and min(accuracy[p] for p in ("1", "2", "3")) > 0.9  # 2 classes each: chance 0.5
    p = read_metrics(path)[0]["selection_probability_0"]
    assert read_metrics(path)[0]["useless_teacher_margin"] == pytest.approx(min(p[1:]) - p[0])
