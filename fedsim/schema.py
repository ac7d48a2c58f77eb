"""Schemas of the core config.

The top-level keys and the groups the engine owns (optimizer, deploy, model, dataset, partition, backend,
logger). Plug-in groups (strategy, attack, defence) carry their schemas with their code; ``fedsim.options``
checks those. Values live in ``configs/``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

from fedsim.params import spec


@dataclass(kw_only=True)
class Optimizer:
    """The clients' local optimizer (``optimizer.*``)."""

    name: Literal["sgd", "adam"] = spec("the clients' local optimizer")
    lr: float = spec("local learning rate", gt=0)
    lr_decay: float = spec("lr of round t = lr * lr_decay^(t-1)", gt=0)
    momentum: float = spec("SGD momentum", ge=0, lt=1)
    weight_decay: float = spec("L2 weight decay", ge=0)
    clip_norm: float | None = spec("clip each local step's gradient to this L2 norm; null = no clipping", gt=0)


@dataclass(kw_only=True)
class Deploy:
    """A deployment's SuperLink and credentials (``deploy.*``)."""

    host: str = spec("interface the SuperLink listens on")
    port: int = spec("the SuperLink's HTTP(S) port", ge=1, le=65535)
    credentials: str = spec("folder of scripts/make_credentials.py output")
    insecure: bool = spec("plain HTTP without node authentication")


@dataclass(kw_only=True)
class Run:
    """The top-level keys (groups are checked by their own schemas)."""

    seed: int = spec("seed of partition, sampling and initialisation", ge=0)
    num_rounds: int = spec("FL rounds", ge=1)
    num_clients: int = spec("clients registered", ge=1)
    clients_per_round: int = spec("clients sampled each round", ge=1)
    min_clients: int = spec("fewest usable replies for a round to count", ge=1)
    local_epochs: int = spec("local epochs per round", ge=1)
    batch_size: int = spec("local batch size", ge=1)
    augment: Literal["none", "shift_flip"] = spec("augmentation of local training batches")
    eval_every: int = spec("evaluate the global model every N rounds", ge=1)
    evaluation: Literal["global", "personal"] = spec(
        "global: the global model on the test set; personal: on each client's own test split"
    )
    eval_batch_size: int = spec("evaluation batch size", ge=1)
    checkpoint_every: int = spec("checkpoint every N rounds; 0 = only the last", ge=0)
    checkpoints_kept: int = spec("keep the newest N checkpoints; 0 = all", ge=0)
    round_timeout: float = spec("seconds to wait for replies", gt=0)
    connect_timeout: float = spec("seconds to wait for the clients to connect", gt=0)
    device: str = spec("auto, cpu, cuda or cuda:N")
    data_root: str = spec("where datasets live")
    runs_root: str = spec("where run directories go")
    run_dir: str | None = spec("this run's directory; null = <runs_root>/<timestamp>-<strategy>")
    resume: str | None = spec("a run directory to continue from its last checkpoint")
    verbose: bool = spec("show Flower's and Ray's logs")
    dataset_info: dict | None = spec(
        "the dataset's format, which `fedsim server` adds for devices with their own images", default=None
    )

    @staticmethod
    def validate(node: Any) -> str | None:
        """Keys that depend on each other: the device name, and clients per round within 1..num_clients."""
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", str(node["device"])):
            return f"device={node['device']!r}: choose auto, cpu, cuda or cuda:N"
        if node["clients_per_round"] > node["num_clients"]:
            return (
                f"clients_per_round={node['clients_per_round']} exceeds num_clients={node['num_clients']}: "
                "lower it or add clients"
            )
        if node["min_clients"] > node["clients_per_round"]:
            return (
                f"min_clients={node['min_clients']} exceeds clients_per_round={node['clients_per_round']}: "
                "a round could never succeed"
            )
        return None


# -- models ----------------------------------------------------------------------------------------
@dataclass(kw_only=True)
class HiddenWidth:
    """The FedAvg paper's CNN (its fully connected layer) and 2NN (each hidden layer)."""

    name: str = spec("model")
    hidden: int = spec("width of the hidden fully connected layer(s)", ge=1)


@dataclass(kw_only=True)
class ResNet18:
    """``model=resnet18``."""

    name: str = spec("model")
    width: int = spec("channels of the first stage", ge=1)


@dataclass(kw_only=True)
class ViTTiny:
    """``model=vit_tiny``: a CPU-sized Vision Transformer."""

    name: str = spec("model")
    patch: int = spec("patch side in pixels", ge=1)
    dim: int = spec("embedding width", ge=1)
    depth: int = spec("transformer blocks", ge=1)
    heads: int = spec("attention heads", ge=1)
    mlp_ratio: float = spec("MLP width / embedding width", gt=0)
    position_embedding: Literal["learned", "mjp"] = spec("position embedding (mjp: the MJP defence)")

    @staticmethod
    def validate(node: Any) -> str | None:
        """The heads divide the embedding width."""
        if node["dim"] % node["heads"]:
            return f"heads={node['heads']}: must divide dim={node['dim']} (each head gets dim / heads channels)"
        return None


MODELS: dict[str, type] = {"cnn": HiddenWidth, "mlp": HiddenWidth, "resnet18": ResNet18, "vit_tiny": ViTTiny}


# -- data ------------------------------------------------------------------------------------------
@dataclass(kw_only=True)
class Dataset:
    """The ``dataset`` group."""

    name: str = spec("dataset")
    download: bool = spec("let torchvision download missing files (needs a network)")


@dataclass(kw_only=True)
class Partition:
    """What every ``partition`` option has: the labeled share of each client's samples."""

    name: str = spec("partition")
    labeled_ratio: float = spec("fraction of each client's samples that keep their label", ge=0, le=1)
    labeled_clients: int | None = spec("the first m clients fully labeled, the rest unlabeled", ge=0)
    max_samples_per_client: int | None = spec("keep at most this many samples per client", ge=1)


@dataclass(kw_only=True)
class IID(Partition):
    """``partition=iid``."""

    samples_per_client: int | None = spec(
        "each client draws this many samples from the whole training set, "
        "independently of the others (clients overlap); null = a disjoint even split",
        ge=1,
    )


@dataclass(kw_only=True)
class Dirichlet(Partition):
    """``partition=dirichlet``: label proportions per client drawn from Dir(alpha)."""

    alpha: float = spec("Dirichlet concentration of the label split", gt=0)
    min_size: int = spec("fewest samples a client may hold", ge=0)


@dataclass(kw_only=True)
class Shards(Partition):
    """``partition=shards``: each client holds ``classes_per_client`` classes."""

    classes_per_client: int = spec("classes each client holds", ge=1)


PARTITIONS: dict[str, type] = {"iid": IID, "dirichlet": Dirichlet, "shards": Shards}


# -- execution and tracking ------------------------------------------------------------------------
@dataclass(kw_only=True)
class InProcess:
    """``backend=inprocess``: every client in the server's process."""

    name: str = spec("backend")
    num_threads: int = spec("torch threads of this process; 0 = one per core", ge=0)


@dataclass(kw_only=True)
class Simulation(InProcess):
    """``backend=simulation``: clients on Ray workers."""

    engine: Literal["pool", "flower"] = spec(
        "pool: one Ray worker per num_cpus, many clients per task; flower: Flower's engine, one actor call per message"
    )
    num_cpus: float = spec("CPUs per client actor", gt=0)
    num_gpus: float = spec("GPUs per client actor (fractions share one)", ge=0)
    ray_init_args: dict = spec("arguments of ray.init, e.g. {address: auto}")


BACKENDS: dict[str, type] = {"inprocess": InProcess, "simulation": Simulation}


@dataclass(kw_only=True)
class CsvLogger:
    """``logger=csv``."""

    file: str = spec("file name in the run directory")


@dataclass(kw_only=True)
class TensorBoardLogger:
    """``logger=tensorboard``."""

    flush_secs: float = spec("seconds between flushes of the event file", gt=0)


@dataclass(kw_only=True)
class MlflowLogger:
    """``logger=mlflow``."""

    tracking_uri: str | None = spec("MLflow tracking URI; null = sqlite in ./mlruns")
    experiment: str = spec("MLflow experiment the runs are filed under")


LOGGERS: dict[str, type] = {"csv": CsvLogger, "tensorboard": TensorBoardLogger, "mlflow": MlflowLogger}
