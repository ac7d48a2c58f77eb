"""FedFed: "FedFed: Feature Distillation against Data Heterogeneity in Federated Learning"
(Yang, Zhang et al., NeurIPS 2023, arXiv:2310.05077; official code github.com/visitworld123/FedFed).

Before ordinary FL, clients train a feature-distillation generator G with an embedded classifier
under FedAvg for ``distill_rounds`` rounds, ``clients_per_round`` sampled clients a round as in FL
(``clients/fedfed.py`` has the objective). Every client then shares, once, the performance-sensitive part x_s = x - G(x) of its samples with Gaussian noise
of std ``share_noise_std`` added per sample, and the server pools them into the global shared set
(kept in the run directory as ``shared_pool.pt``: exactly what the server received, which the
privacy tools inspect). FL then runs the base algorithm ``strategy.base`` (FedAvg, FedProx,
SCAFFOLD or FedNova) unchanged, except that every client trains on its local batches concatenated
with as many samples of the shared set: each round the server sends each client a fresh
class-balanced draw of (local samples x local epochs) items in float16, which the byte counts in
metrics.jsonl include. Distillation rounds and the pool size are logged to
``distill_metrics.jsonl``.
"""

from __future__ import annotations

import json
import logging
import time
from functools import lru_cache
from typing import Any, Iterable

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid

from clients.fedfed import DISTILL, SHARE, TRAIN, DistillationPair
from fedsim.data import dataset_from_config
from fedsim.errors import ConfigError, FedsimError
from fedsim.progress import show
from fedsim.records import model_to_record, non_finite, payload_bytes, weighted_average
from fedsim.results import RunDirectory
from fedsim.seeding import rng, seed_torch
from fedsim.strategy import FedsimStrategy
from strategies import load_strategy_class

log = logging.getLogger("fedsim")
BASES = ("fedavg", "fedprox", "scaffold", "fednova")


class FedFedMixin:
    """FedFed's distillation and sharing phases in front of a base strategy."""

    cfg: Any
    node_of: dict[int, int]
    num_examples: dict[int, int]
    pool_x: np.ndarray | None = None
    pool_y: np.ndarray | None = None

    # -- phase A: feature distillation, then sharing -------------------------------------------
    def setup(self, grid: Grid, run: RunDirectory) -> None:
        super().setup(grid, run)
        pool_file = run.path / "shared_pool.pt"
        if pool_file.exists():  # a resumed run: the distillation already happened
            pool = torch.load(pool_file, weights_only=True)
            self.pool_x, self.pool_y = pool["x"].numpy(), pool["y"].numpy()
            return
        log_file = run.path / "distill_metrics.jsonl"
        log_file.write_text("")
        arrays = self.distill(grid, log_file)
        self.collect_shared(grid, arrays, log_file)
        torch.save({"x": torch.from_numpy(self.pool_x), "y": torch.from_numpy(self.pool_y)}, pool_file)

    def _send(self, grid: Grid, clients: list[int], arrays: ArrayRecord, config: ConfigRecord) -> tuple[list[Message], list[Message]]:
        messages = [
            Message(RecordDict({"arrays": arrays, "config": config}), dst_node_id=self.node_of[cid], message_type=MessageType.TRAIN)
            for cid in clients
        ]
        return messages, list(grid.send_and_receive(messages, timeout=self.cfg.round_timeout))

    def _require(self, phase: str, accepted: list) -> None:
        if len(accepted) < self.cfg.min_clients:
            raise FedsimError(
                f"FedFed {phase}: only {len(accepted)} usable replies (min_clients={self.cfg.min_clients}); see the warnings above"
            )

    def distill(self, grid: Grid, log_file) -> ArrayRecord:
        s, data = self.cfg.strategy, self._dataset()
        seed_torch(self.cfg.seed, "fedfed-init")
        arrays = model_to_record(DistillationPair(self.cfg, data.input_shape, data.num_classes))
        rounds = int(s.distill_rounds)
        for r in range(1, rounds + 1):
            t0 = time.time()
            self.global_arrays = arrays
            config = ConfigRecord(
                {"fedfed-phase": DISTILL, "server-round": r, "lr": float(s.distill_lr),
                 "local-epochs": int(s.distill_epochs), "batch-size": int(self.cfg.batch_size)}
            )
            messages, replies = self._send(grid, self.sample_clients(r, "fedfed-distill"), arrays, config)
            accepted = self.accept_replies(r, replies, check=lambda m: FedsimStrategy.reply_problem(self, m))
            self._require(f"distillation round {r}", accepted)
            arrays = weighted_average([a.content["arrays"] for a in accepted], [a.num_examples for a in accepted])
            metrics = self.aggregate_metrics(accepted)
            record = {"phase": DISTILL, "round": r, "clients_ok": len(accepted),
                      "bytes_down": sum(payload_bytes(m.content) for m in messages),
                      "bytes_up": sum(payload_bytes(m.content) for m in replies if not m.has_error()),
                      **{k.replace("-", "_"): v for k, v in metrics.items()}, "round_time_s": time.time() - t0}
            with log_file.open("a") as f:
                f.write(json.dumps(record) + "\n")
            show(f"[distill {r}/{rounds}] loss {record['train_loss']:.4f} (recon {record['distill_recon']:.4f}, "
                 f"ce_views {record['distill_ce_views']:.4f}) | clients {len(accepted)}/{len(messages)} | {record['round_time_s']:.1f}s")
        return arrays

    def _share_problem(self, msg: Message) -> str | None:
        if "shared" not in msg.content.array_records:
            return "malformed reply: FedFed sharing needs a 'shared' ArrayRecord"
        shared = msg.content["shared"]
        if set(shared.keys()) != {"x", "y"} or tuple(shared["x"].shape[1:]) != tuple(self._dataset().input_shape):
            return f"malformed shared features: expected x of shape (n, {self._dataset().input_shape}) and y"
        if shared["x"].shape[0] != shared["y"].shape[0]:
            return "malformed shared features: x and y differ in length"
        bad = non_finite(shared)
        return f"returned NaN/Inf in shared '{bad}'" if bad else None

    def collect_shared(self, grid: Grid, arrays: ArrayRecord, log_file) -> None:
        t0 = time.time()
        config = ConfigRecord({"fedfed-phase": SHARE, "server-round": 0})
        messages, replies = self._send(grid, sorted(self.node_of), arrays, config)
        accepted = self.accept_replies(0, replies, check=self._share_problem)
        self._require("sharing", accepted)
        self.pool_x = np.concatenate([a.content["shared"]["x"].numpy() for a in accepted])
        self.pool_y = np.concatenate([a.content["shared"]["y"].numpy() for a in accepted]).astype(np.int64)
        upload = {a.client_id: payload_bytes(RecordDict({"shared": a.content["shared"]})) for a in accepted}
        record = {"phase": SHARE, "pool_samples": int(len(self.pool_y)), "pool_bytes": int(self.pool_x.nbytes + self.pool_y.nbytes),
                  "upload_bytes_per_client": upload, "bytes_down": sum(payload_bytes(m.content) for m in messages),
                  "share_noise_std": float(self.cfg.strategy.share_noise_std), "round_time_s": time.time() - t0}
        with log_file.open("a") as f:
            f.write(json.dumps(record) + "\n")
        show(f"[share] pool of {record['pool_samples']} noised features ({record['pool_bytes'] / 2**20:.1f}MB) "
             f"from {len(accepted)} clients, sigma={record['share_noise_std']}")

    def _dataset(self):
        return dataset_from_config(self.cfg)

    # -- phase B: the base algorithm with shared samples ---------------------------------------
    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        config["fedfed-phase"] = TRAIN
        return super().configure_train(server_round, arrays, config, grid)

    def train_content(self, client_id: int, arrays: ArrayRecord, config: ConfigRecord) -> RecordDict:
        content = super().train_content(client_id, arrays, config)
        content["shared"] = self.shared_draw(client_id, int(config["server-round"]), int(config["local-epochs"]))
        return content

    def shared_draw(self, client_id: int, server_round: int, epochs: int) -> ArrayRecord:
        """A class-balanced sample of the pool, one item per local sample and epoch."""
        assert self.pool_x is not None and self.pool_y is not None
        gen = rng(self.cfg.seed, "fedfed-draw", server_round, client_id)
        n = self.num_examples[client_id] * epochs
        classes = np.unique(self.pool_y)
        wanted = gen.choice(classes, size=n)
        idx = np.empty(n, dtype=np.int64)
        for c in classes:
            slots = np.flatnonzero(wanted == c)
            members = np.flatnonzero(self.pool_y == c)
            idx[slots] = members[gen.integers(len(members), size=len(slots))]
        return ArrayRecord({"x": torch.from_numpy(self.pool_x[idx]), "y": torch.from_numpy(self.pool_y[idx])})


@lru_cache(maxsize=None)
def fedfed_strategy_class(base_name: str) -> type[FedsimStrategy]:
    if base_name not in BASES:
        raise ConfigError(f"strategy.base={base_name!r} is invalid: FedFed plugs into {', '.join(BASES)}")
    base = load_strategy_class(base_name)
    return type(f"FedFed[{base.__name__}]", (FedFedMixin, base), {})


def STRATEGY(cfg: Any, param_keys: list[str]) -> FedsimStrategy:
    """FedFed over the base strategy named by ``strategy.base``."""
    return fedfed_strategy_class(str(cfg.strategy.base))(cfg, param_keys)
