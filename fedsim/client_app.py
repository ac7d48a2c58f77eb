"""The Flower ClientApp of every fedsim run: routes Message-API calls to the strategy's client module.

What a process shares among the clients it hosts (dataset, partition, one model instance) is built
once, on first use, by :class:`ClientRuntime`; a client's own persistent state lives in its
:class:`~fedsim.client_state.ClientStateStore`. Flower's Ray engine ships the ClientApp to its
actor with every message; a runtime arriving that way is this process's runtime of the same run
(:func:`shared_runtime`), so the partition and model are built once per actor, not per message.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any

import torch
from flwr.app import Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from omegaconf import OmegaConf

from fedsim.client_env import ClientClass, ClientEnv, ClientUpdate, TrainSettings
from fedsim.client_state import ClientStateStore
from fedsim.data import dataset_from_config, make_partition, personal_test_split
from fedsim.data.local import LocalData
from fedsim.data.local_folder import dataset_format, load_device_data
from fedsim.data.partition import label_histograms
from fedsim.hooks import Mod
from fedsim.models import model_from_config
from fedsim.protocols.messages import CLIENT_ID, INFO, NUM_EXAMPLES, SERVER_ROUND
from fedsim.records import config_of, integer
from fedsim.seeding import rng


def resolve_device(name: str) -> torch.device:
    """The torch device ``name`` names (``auto``: CUDA where present, else the CPU)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@dataclass(frozen=True)
class ClientPlugins:
    """What the client runtime takes from above (:mod:`fedsim.plugins`).

    What the runtime takes from above (:mod:`fedsim.plugins`), as module-level functions so that a runtime
    pickles by reference: a run's client class (``clients``), its defence and the ClientApp mods (attack
    observers, update defences: ``fedsim.privacy``).
    """

    client_class: Callable[[str, Any], ClientClass]
    defence: Callable[[Any], Any]
    mods: Callable[[Any, Any, Callable[[int], ClientEnv], Callable[[Context], int]], list[Mod]]


class ClientRuntime:
    """Per-process cache of what the clients of one run share."""

    def __init__(self, cfg: dict[str, Any], plugins: ClientPlugins) -> None:
        self._cfg_dict = cfg
        self.plugins = plugins

    def __reduce__(self):
        return shared_runtime, (json.dumps(self._cfg_dict, sort_keys=True), self.plugins)

    @cached_property
    def cfg(self):
        """The run's config, rebuilt from its plain-dict form in this process."""
        return OmegaConf.create(self._cfg_dict)

    @cached_property
    def dataset(self):
        """The run's dataset (only its format where a device brings its own images)."""
        info = self.cfg.get("dataset_info")
        if self.cfg.get("data_dir") and info:  # a device with its own images needs only the dataset's format
            return dataset_format(info)
        return dataset_from_config(self.cfg)

    @cached_property
    def splits(self):
        """Every client's partition of the training set (labeled and unlabeled indices)."""
        return make_partition(self.dataset.y_train.numpy(), self.cfg.num_clients, self.cfg.partition, self.cfg.seed)

    @cached_property
    def test_splits(self):
        """Each client's own test set, following its training label distribution."""
        histograms = label_histograms(self.dataset.y_train.numpy(), self.splits, self.dataset.num_classes)
        return personal_test_split(self.dataset.y_test.numpy(), histograms, rng(self.cfg.seed, "test-split"))

    @cached_property
    def device(self) -> torch.device:
        """The device this process trains on."""
        return resolve_device(self.cfg.device)

    @cached_property
    def model(self) -> torch.nn.Module:
        """The one model instance this process's clients load their weights into."""
        return model_from_config(self.cfg, self.dataset.input_shape, self.dataset.num_classes).to(self.device)

    @cached_property
    def defence(self):
        """The run's defence (None when ``defence=none``)."""
        return self.plugins.defence(self.cfg.defence)

    @cached_property
    def train_settings(self) -> TrainSettings:
        """The run keys every local step reads, read out of the config once."""
        return TrainSettings.of(self.cfg)

    @cached_property
    def client_class(self) -> ClientClass:
        """The run's client update class (``clients.<strategy.client>``)."""
        return self.plugins.client_class(self.cfg.strategy.client, self.cfg)

    def local_data(self, indices, test: bool = False) -> LocalData:
        """Samples ``indices`` of the training set (or of the test set with ``test``) as a client's data."""
        x, y = (self.dataset.x_test, self.dataset.y_test) if test else (self.dataset.x_train, self.dataset.y_train)
        if len(indices) == 0:
            return LocalData(x[:0], y[:0], self.dataset)  # views: nothing to copy
        idx = torch.from_numpy(indices)
        return LocalData(x[idx], y[idx], self.dataset)

    @cached_property
    def state_root(self) -> Path:
        """Where the clients' state stores live (under the run directory)."""
        return Path(self.cfg.run_dir) / "client_state"

    @cached_property
    def device_data(self) -> dict[str, LocalData] | None:
        """A deployed device's own images (``data_dir``), or None when it holds a partition."""
        if not self.cfg.get("data_dir"):
            return None
        ds = self.dataset
        loaded = load_device_data(Path(self.cfg.data_dir), ds.input_shape, ds.num_classes)
        return {part: LocalData(x, y, ds) for part, (x, y) in loaded.items()}

    def client_data(self, client_id: int) -> tuple[LocalData, LocalData, Callable[[], LocalData]]:
        """(labeled, unlabeled) samples of a client and what builds its test samples (most rounds never do)."""
        if self.device_data is not None:
            train, test = self.device_data["train"], self.device_data["test"]
            return train, LocalData(train.x[:0], train.y[:0], train.dataset), lambda: test
        split = self.splits[client_id]
        return (
            self.local_data(split.labeled),
            self.local_data(split.unlabeled),
            lambda: self.local_data(self.test_splits[client_id], test=True),  # the split too, on first use
        )

    def train_sizes(self) -> dict[int, int]:
        """Client id -> the samples it trains on, from the partition (no client is built)."""
        cls = self.client_class
        return {
            cid: cls.train_examples(len(split.labeled), len(split.unlabeled)) for cid, split in enumerate(self.splits)
        }

    def client(self, client_id: int) -> ClientUpdate:
        """The client update of ``client_id``, built on this process's shared model and data."""
        data, unlabeled, test_split = self.client_data(client_id)
        env = ClientEnv(
            client_id=client_id,
            cfg=self.cfg,
            data=data,
            unlabeled=unlabeled,
            test_split=test_split,
            model=self.model,
            device=self.device,
            state=ClientStateStore(self.state_root, client_id),
            defence=self.defence,
            settings=self.train_settings,
        )
        return self.client_class(env)


@lru_cache(maxsize=2)
def shared_runtime(cfg_json: str, plugins: ClientPlugins) -> ClientRuntime:
    """The process's runtime of the run ``cfg_json`` describes (what an unpickled runtime becomes)."""
    return ClientRuntime(json.loads(cfg_json), plugins)


def client_id_of(context: Context) -> int:
    """The client a Flower context stands for (its ``partition-id``)."""
    return int(context.node_config["partition-id"])


def make_client_app(cfg: dict[str, Any], plugins: ClientPlugins) -> ClientApp:
    """Build the ClientApp for a resolved run config (a plain dict, so it ships to Ray actors)."""
    runtime = shared_runtime(json.dumps(cfg, sort_keys=True), plugins)
    app = ClientApp(mods=plugins.mods(runtime.cfg, runtime.defence, lambda cid: runtime.client(cid).env, client_id_of))

    @app.query()
    def query(msg: Message, context: Context) -> Message:
        cid = client_id_of(context)
        info = MetricRecord({CLIENT_ID: cid, NUM_EXAMPLES: runtime.client(cid).num_train_examples()})
        return Message(RecordDict({INFO: info}), reply_to=msg)

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        server_round = integer(config_of(msg.content), SERVER_ROUND)
        content = runtime.client(client_id_of(context)).train(msg.content, server_round)
        return Message(content, reply_to=msg)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        server_round = integer(config_of(msg.content), SERVER_ROUND)
        content = runtime.client(client_id_of(context)).evaluate(msg.content, server_round)
        return Message(content, reply_to=msg)

    return app
