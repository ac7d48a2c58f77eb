"""FedFed (Yang et al., NeurIPS 2023).

FedFed: "FedFed: Feature Distillation against Data Heterogeneity in Federated Learning" (Yang, Zhang et al.,
NeurIPS 2023, arXiv:2310.05077; official code github.com/visitworld123/FedFed).

Before ordinary FL, clients train a feature-distillation generator G with an embedded classifier
under FedAvg for ``distill_rounds`` rounds (official: 15, every client each round;
``distill_clients`` samples fewer). Every client then shares, once, noised copies of the
performance-sensitive part x_s = x - G(x) of its samples, one per entry of ``share_noise_std``
(official: two, std 0.2 and 0.25, noise drawn per sample), and the server pools them into the global
shared set (kept in the run directory as ``shared_pool.pt``: exactly what the server received, which the privacy tools
inspect). The server sends that set to every client once (``receive``); clients keep it.
FL then runs the base algorithm ``strategy.base`` (FedAvg, FedProx, SCAFFOLD or FedNova)
unchanged, except that every local step also trains on class-balanced items of each shared copy
(1:1:1 with the local batch and the official two copies, ``clients/fedfed.py``). Distillation rounds, the pool and the
one-off broadcast, with their bytes, are logged to ``distill_metrics.jsonl``; per-round traffic
in metrics.jsonl is the base algorithm's. The averaged pair is checkpointed after every distillation round
(``distill_checkpoints/``, removed once the pool is saved), so a run stopped during distillation resumes there.

Client obligation: the phases ``distill`` (return the (G, f) pair), ``share`` (return ``shared``:
x1, x2, ..., y), ``receive`` (keep the set under its digest) and ``train`` (the base update with the
kept set).
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import time
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid
from typing_extensions import override

from fedsim.checkpoint import Checkpoint, latest_checkpoint, save_checkpoint
from fedsim.data import dataset_from_config
from fedsim.errors import ConfigError, FedsimError
from fedsim.params import spec
from fedsim.progress import show
from fedsim.protocols.fedfed import (
    DISTILL,
    LABELS,
    PHASE,
    POOL_DIGEST,
    RECEIVE,
    SHARE,
    SHARED_FEATURES,
    TRAIN,
    DistillationPair,
    shared_copy_keys,
)
from fedsim.protocols.messages import ARRAYS, BATCH_SIZE, CONFIG, LOCAL_EPOCHS, LR, SERVER_ROUND
from fedsim.records import (
    arrays_of,
    has_record,
    model_to_record,
    non_finite,
    payload_bytes,
    record_bytes,
    weighted_average,
)
from fedsim.results import RunDirectory, append_record, read_records, write_records
from fedsim.seeding import rng, seed_torch
from fedsim.strategy import FedsimStrategy, StrategyParams
from strategies import load_strategy_class

log = logging.getLogger("fedsim")
BASES = ("fedavg", "fedprox", "scaffold", "fednova")


def pool_digest(pool: dict[str, np.ndarray]) -> str:
    """A content digest of the shared set: the name clients keep it under."""
    digest = hashlib.blake2b(digest_size=16)
    for key in sorted(pool):
        digest.update(np.ascontiguousarray(pool[key]).tobytes())
    return digest.hexdigest()


# The mixin goes in front of any base strategy (fedfed_strategy_class); the checker sees it as one.
if TYPE_CHECKING:
    _MixinBase = FedsimStrategy
else:
    _MixinBase = object


class FedFedMixin(_MixinBase):
    """FedFed: feature distillation and one-time sharing in front of a base strategy.

    Phase A (``setup``): the clients train a generator G with an embedded classifier under FedAvg,
    then each shares, once, noised copies of the performance-sensitive part x - G(x) of its
    samples; the server pools them and sends the pool to every client once. Phase B: the base
    algorithm (FedAvg, FedProx, SCAFFOLD or FedNova) runs with clients training on their data
    mixed 1:1:1 with draws from the pool.

    Notes
    -----
    The client answers the phase named by ``PHASE`` in ``CONFIG`` (:mod:`fedsim.protocols.fedfed`):
    ``DISTILL`` (train the received (G, f) pair, reply it under ``ARRAYS``), ``SHARE`` (reply its
    noised copies and ``LABELS`` under ``SHARED_FEATURES``), ``RECEIVE`` (keep the pool under its
    ``POOL_DIGEST``), ``TRAIN`` (the base algorithm's obligation, with the pool it holds).

    References
    ----------
    Yang et al., "FedFed: Feature Distillation against Data Heterogeneity in Federated Learning",
    NeurIPS 2023, arXiv:2310.05077.
    """

    paper = "Yang et al., NeurIPS 2023 (arXiv:2310.05077)"

    params: Params
    pool: dict[str, np.ndarray] | None = None  # x1, x2, ... (float16) and y of every shared sample
    pool_digest: str = ""

    # -- phase A: feature distillation, then sharing -------------------------------------------
    @override
    def setup(self, grid: Grid, run: RunDirectory) -> None:
        super().setup(grid, run)
        pool_file = run.path / "shared_pool.pt"
        log_file, checkpoints = run.path / "distill_metrics.jsonl", run.path / "distill_checkpoints"
        if pool_file.exists():  # a resumed run: the distillation and the broadcast already happened
            self.pool = {k: v.numpy() for k, v in torch.load(pool_file, weights_only=True).items()}
            self.pool_digest = pool_digest(self.pool)
            return
        arrays = self.distill(grid, log_file, checkpoints)
        self.collect_shared(grid, arrays, log_file)
        self.broadcast_pool(grid, log_file)
        assert self.pool is not None  # collect_shared pooled the clients' copies
        torch.save({k: torch.from_numpy(v) for k, v in self.pool.items()}, pool_file)
        shutil.rmtree(checkpoints, ignore_errors=True)  # the pool supersedes them

    def _send(
        self, grid: Grid, clients: list[int], arrays: ArrayRecord, config: ConfigRecord
    ) -> tuple[list[Message], list[Message]]:
        messages = [
            Message(
                RecordDict({ARRAYS: arrays, CONFIG: config}),
                dst_node_id=self.node_of[cid],
                message_type=MessageType.TRAIN,
            )
            for cid in clients
        ]
        return messages, list(grid.send_and_receive(messages, timeout=self.cfg.round_timeout))

    def _require(self, phase: str, accepted: list) -> None:
        if len(accepted) < self.cfg.min_clients:
            raise FedsimError(
                f"FedFed {phase}: only {len(accepted)} usable replies (min_clients={self.cfg.min_clients}); see the "
                "warnings above"
            )

    def distill(self, grid: Grid, log_file: Path, checkpoints: Path) -> ArrayRecord:
        """Phase A: train G and the embedded classifier under FedAvg; returns the averaged pair.

        The averaged pair is checkpointed after every distillation round (the clients keep no state between
        them), so that a run stopped during distillation continues after its last finished round; its log keeps
        the rounds up to there.
        """
        s, data = self.params, self._dataset()
        done = latest_checkpoint(checkpoints)
        if done is None:
            seed_torch(self.cfg.seed, "fedfed-init")
            arrays = model_to_record(DistillationPair(self.cfg, data.input_shape, data.num_classes))
            log_file.write_text("")
        else:
            arrays = done.arrays
            kept = [r for r in read_records(log_file) if r["phase"] == DISTILL and r["round"] <= done.server_round]
            write_records(log_file, kept)
            show(f"[distill] resuming after distillation round {done.server_round}")
        rounds = int(s.distill_rounds)
        for r in range(1 if done is None else done.server_round + 1, rounds + 1):
            t0 = time.time()
            self.global_arrays = arrays
            config = ConfigRecord(
                {
                    PHASE: DISTILL,
                    SERVER_ROUND: r,
                    LR: float(s.distill_lr),
                    LOCAL_EPOCHS: int(s.distill_epochs),
                    BATCH_SIZE: int(self.cfg.batch_size),
                }
            )
            messages, replies = self._send(grid, self.distill_clients(r), arrays, config)
            accepted = self.accept_replies(r, replies, check=lambda m: FedsimStrategy.reply_problem(self, m))
            self._require(f"distillation round {r}", accepted)
            arrays = weighted_average([arrays_of(a.content) for a in accepted], [a.num_examples for a in accepted])
            metrics = self.aggregate_metrics(accepted)
            record = {
                "phase": DISTILL,
                "round": r,
                "clients_ok": len(accepted),
                "bytes_down": sum(payload_bytes(m.content) for m in messages),
                "bytes_up": sum(payload_bytes(m.content) for m in replies if not m.has_error()),
                **{k.replace("-", "_"): v for k, v in metrics.items()},
                "round_time_s": time.time() - t0,
            }
            append_record(log_file, record)
            save_checkpoint(checkpoints, Checkpoint(r, arrays, {}), keep=1)
            show(
                f"[distill {r}/{rounds}] loss {record['train_loss']:.4f} (recon {record['distill_recon']:.4f}, "
                f"ce_views {record['distill_ce_views']:.4f}) | clients {len(accepted)}/{len(messages)} | "
                f"{record['round_time_s']:.1f}s"
            )
        return arrays

    def distill_clients(self, distill_round: int) -> list[int]:
        """Every client (official), or ``distill_clients`` of them drawn per distillation round."""
        chosen = self.params.distill_clients
        ids = sorted(self.node_of)
        if chosen is None or int(chosen) >= len(ids):
            return ids
        return sorted(
            int(c) for c in rng(self.cfg.seed, "fedfed-distill", distill_round).choice(ids, int(chosen), replace=False)
        )

    def _share_problem(self, msg: Message) -> str | None:
        if not has_record(msg.content, SHARED_FEATURES):
            return "malformed reply: FedFed sharing needs a 'shared' ArrayRecord"
        shared = arrays_of(msg.content, SHARED_FEATURES)
        shape = tuple(self._dataset().input_shape)
        copies = self.copy_keys()
        if set(shared.keys()) != {*copies, LABELS} or any(tuple(shared[k].shape[1:]) != shape for k in copies):
            return f"malformed shared features: expected {', '.join(copies)} of shape (n, {shape}) and y"
        if len({shared[k].shape[0] for k in (*copies, LABELS)}) != 1:
            return f"malformed shared features: {', '.join(copies)} and y differ in length"
        if any(shared[k].dtype != "float16" for k in copies) or shared[LABELS].dtype != "int64":
            return f"malformed shared features: expected float16 {', '.join(copies)} and int64 y"
        labels, classes = shared[LABELS].numpy(), self._dataset().num_classes
        if labels.size and not (0 <= labels.min() and labels.max() < classes):
            return f"malformed shared features: labels outside 0..{classes - 1}"
        bad = non_finite(shared)
        return f"returned NaN/Inf in shared '{bad}'" if bad else None

    def collect_shared(self, grid: Grid, arrays: ArrayRecord, log_file: Path) -> None:
        """Phase A, sharing: every client sends its noised copies once; the server pools them."""
        t0 = time.time()
        config = ConfigRecord({PHASE: SHARE, SERVER_ROUND: 0})
        messages, replies = self._send(grid, sorted(self.node_of), arrays, config)
        accepted = self.accept_replies(0, replies, check=self._share_problem)
        self._require("sharing", accepted)
        pool = {
            k: np.concatenate([arrays_of(a.content, SHARED_FEATURES)[k].numpy() for a in accepted])
            for k in (*self.copy_keys(), LABELS)
        }
        pool[LABELS] = pool[LABELS].astype(np.int64)
        self.pool, self.pool_digest = pool, pool_digest(pool)
        upload = {a.client_id: record_bytes(arrays_of(a.content, SHARED_FEATURES)) for a in accepted}
        s = self.params
        record: dict[str, Any] = {
            "phase": SHARE,
            "pool_samples": int(len(pool[LABELS])),
            "pool_bytes": int(sum(v.nbytes for v in pool.values())),
            "upload_bytes_per_client": upload,
            "bytes_down": sum(payload_bytes(m.content) for m in messages),
            "share_noise_std": [float(v) for v in s.share_noise_std],
            "round_time_s": time.time() - t0,
        }
        append_record(log_file, record)
        sigmas = record["share_noise_std"]
        show(
            f"[share] pool of {record['pool_samples']} samples x {len(sigmas)} noised copies "
            f"({record['pool_bytes'] / 2**20:.1f}MB) "
            f"from {len(accepted)} clients, sigma={'/'.join(str(v) for v in sigmas)}"
        )

    def broadcast_pool(self, grid: Grid, log_file: Path) -> None:
        """Send the global shared set to every client, once; each keeps it for the rest of the run."""
        assert self.pool is not None
        t0 = time.time()
        config = ConfigRecord({PHASE: RECEIVE, SERVER_ROUND: 0, POOL_DIGEST: self.pool_digest})
        shared = ArrayRecord({k: torch.from_numpy(v) for k, v in self.pool.items()})
        messages = [
            Message(
                RecordDict({SHARED_FEATURES: shared, CONFIG: config}),
                dst_node_id=self.node_of[cid],
                message_type=MessageType.TRAIN,
            )
            for cid in sorted(self.node_of)
        ]
        replies = list(grid.send_and_receive(messages, timeout=self.cfg.round_timeout))
        received = [r for r in replies if not r.has_error()]
        for reply in replies:
            if reply.has_error():
                log.warning(
                    "client %d did not keep the shared set: %s",
                    self.client_of(reply.metadata.src_node_id),
                    reply.error.reason,
                )
        record: dict[str, Any] = {
            "phase": RECEIVE,
            "clients_ok": len(received),
            "bytes_down": sum(payload_bytes(m.content) for m in messages),
            "pool_digest": self.pool_digest,
            "round_time_s": time.time() - t0,
        }
        append_record(log_file, record)
        show(
            f"[receive] shared set sent once to {len(received)}/{len(messages)} clients "
            f"({record['bytes_down'] / 2**20:.1f}MB in all)"
        )

    def copy_keys(self) -> tuple[str, ...]:
        """The record keys of the shared copies, one per entry of ``share_noise_std``."""
        return shared_copy_keys(len(self.params.share_noise_std))

    def _dataset(self):
        return dataset_from_config(self.cfg)

    # -- phase B: the base algorithm with shared samples ---------------------------------------
    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Phase B: the base algorithm's train messages, naming the pool every client must hold."""
        config[PHASE] = TRAIN
        config[POOL_DIGEST] = self.pool_digest
        return super().configure_train(server_round, arrays, config, grid)


@cache
def fedfed_strategy_class(base_name: str) -> type[FedsimStrategy]:
    """The FedFed strategy class over the base strategy ``base_name`` (fedavg, fedprox, scaffold, fednova)."""
    if base_name not in BASES:
        raise ConfigError(f"strategy.base={base_name!r} is invalid: FedFed plugs into {', '.join(BASES)}")
    base = load_strategy_class(base_name)
    return type(f"FedFed[{base.__name__}]", (FedFedMixin, base), {})


@dataclass(kw_only=True)
class Params(StrategyParams):
    """FedFed's hyperparameters (``configs/strategy/fedfed.yaml``), the base algorithm's included."""

    base: Literal["fedavg", "fedprox", "scaffold", "fednova"] = spec("the FL algorithm FedFed plugs into")
    mu: float = spec("FedProx proximal weight (base=fedprox)", ge=0)
    server_lr: float = spec("SCAFFOLD global step size (base=scaffold)", gt=0)
    distill_rounds: int = spec("rounds of generator training", ge=1)
    distill_clients: int | None = spec("clients per distillation round; null = every client", ge=1)
    distill_epochs: int = spec("local epochs per distillation round", ge=1)
    distill_lr: float = spec("AdamW step size of the distillation", gt=0)
    distill_weight_decay: float = spec("AdamW weight decay", ge=0)
    mixup_alpha: float = spec("mixup Beta(alpha, alpha) of the classifier warm-up; 0 = off", ge=0)
    generator_width: int = spec("channels of the generator", ge=2)
    generator_latent: int | None = spec("latent size; null = as wide as the encoder output", ge=1)
    weight_recon: float = spec("weight of the reconstruction term", ge=0)
    weight_ce: float = spec("weight of the CE on the noised views", ge=0)
    weight_kl: float = spec("weight of the KL term", ge=0)
    weight_xce: float = spec("weight of the CE on x", ge=0)
    label_skew_boost: float = spec("factor on ce, kl and xce for label-skewed clients", ge=0)
    view_noise_std1: float = spec("noise std of the first view in distillation", ge=0)
    view_noise_std2: float = spec("noise std of the second view in distillation", ge=0)
    share_noise_std: list[float] = spec("one shared copy per entry, with Gaussian noise of that std", ge=0)

    @staticmethod
    def validate(node: Any) -> str | None:
        """At least one shared copy, and an even generator width."""
        if len(node["share_noise_std"]) < 1:
            return "share_noise_std=[]: give at least one noise level (official: [0.2, 0.25])"
        if node["generator_width"] % 2:
            return f"generator_width={node['generator_width']}: must be even (the encoder halves it)"
        return None


def STRATEGY(cfg: Any, param_keys: list[str], params: Params) -> FedsimStrategy:
    """FedFed over the base strategy named by ``strategy.base``."""
    return fedfed_strategy_class(params.base)(cfg, param_keys, params)
