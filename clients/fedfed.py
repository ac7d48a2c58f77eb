"""FedFed's client update.

FedFed client: "FedFed: Feature Distillation against Data Heterogeneity in Federated Learning" (Yang, Zhang et
al., NeurIPS 2023, arXiv:2310.05077; official code github.com/visitworld123/FedFed).

The server tells the phase in the config record (``fedfed-phase``):

- ``distill``: train the generator G and an embedded classifier f on local data, as the official
  client does each distillation round (one pass over the local data each, batch ``batch-size``):
  1. classifier warm-up: f alone on crop/flip-augmented local images with mixup (Beta(``mixup_alpha``));
  2. unless the client is label-skewed: G alone on mosaics of four local images (with cutout):
     re * MSE(G(m), m) + kl * KL;
  3. the whole objective, for x in [0, 1], x_r = G(x), x_s = x - x_r, two noised views
     v_k = x_s + N(0, s_k^2) (noise drawn per sample):
         re * MSE(x_r, x) + ce * CE(f([v1; v2]), [y; y]) + kl * KL + xce * CE(f(x), y),
     with ce, kl and xce x5 for a label-skewed client (official ``VAE_adaptive``).
  The reconstruction weight is the official curriculum's: ``weight_recon`` x10 while the local
  epoch index is below 10 (always, with one local epoch). A client is label-skewed when it holds
  more than a fifth of an equal share of the data and one class makes up over 70% of it (the
  official rule). The official code also leaves G frozen for label-skewed clients in step 3 (the
  warm-up's requires_grad=False is undone only by the mosaic step they skip); its x5 weights on the
  generator's own terms show that G was meant to train there, so here it does.
- ``share``: one noised copy of the performance-sensitive part of every local sample per entry of
  ``share_noise_std`` (official: two, x_s + N(0, 0.2^2) and x_s + N(0, 0.25^2); fresh noise per
  sample, eval mode, mean latent), with labels; x_r never leaves the client.
- ``receive``: the global shared set, sent once after sharing; the client keeps it (its state
  store, under the set's digest) for the rest of the run, as official clients keep theirs.
- ``train``: the base algorithm's own update (``strategy.base``). Each round the client draws, per
  copy, as many items as it has samples, class-balanced, from the kept set; every local step trains
  on a batch of local images and the matching batch of shared items of each copy (1:1:1 with the
  official two copies), and plain CE over the concatenation. The run's ``augment`` applies to all
  three parts, as to the base algorithm's own batches, so that FedFed and its base see the same
  augmentation (the official code crops and flips every algorithm's images: ``augment=shift_flip``).

Shared x_s enter the classifier as ``x_s / std`` (the linear part of the dataset normalisation),
so that x_s + x_r normalised equals x normalised.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import cache
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict
from torch.nn import functional as F
from typing_extensions import override

from clients import load_client_class
from clients.base import Client
from fedsim.client_env import ClientEnv, augmented
from fedsim.data.augment import shift_flip
from fedsim.models.generator import kl_divergence
from fedsim.protocols import fedfed as protocol
from fedsim.protocols.messages import (
    ARRAYS,
    BATCH_SIZE,
    LOCAL_EPOCHS,
    LR,
    METRICS,
    NUM_EXAMPLES,
    SERVER_ROUND,
    TRAIN_LOSS,
)
from fedsim.records import arrays_of, config_of, integer, load_record, model_to_record, number, text
from fedsim.seeding import rng, seed_torch, torch_generator

CURRICULUM = ((10, 10.0), (20, 5.0))  # official: re x10 while the local epoch index < 10, x5 below 20


def distillation_pair(env: ClientEnv, arrays: ArrayRecord) -> protocol.DistillationPair:
    """The (G, f) pair at the weights of ``arrays``, on the client's device."""
    data = env.data.dataset
    pair = protocol.DistillationPair(env.cfg, data.input_shape, data.num_classes).to(env.device)
    load_record(pair, arrays)
    return pair


def label_skewed(labels: torch.Tensor, equal_share: float) -> bool:
    """The official rule: more than 0.2 x an equal share of the data, and one class over 70% of it."""
    n = len(labels)
    return n > 0.2 * equal_share and n > 0 and int(torch.bincount(labels).max()) > 0.7 * n


def recon_weight(weight: float, local_epoch: int) -> float:
    """The official curriculum on the reconstruction term (local epoch indices start at 1 there)."""
    for below, factor in CURRICULUM:
        if local_epoch + 1 < below:
            return weight * factor
    return weight


def mosaic(x01: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The official mosaic pre-training input of a batch.

    Each output: four random images' half-side crops (one random offset per output) tiled 2 x 2, then a cutout
    square of half the side (the official mosaic pre-training input).
    """
    n, c, h, w = x01.shape
    hh, hw = h // 2, w // 2
    picks = torch.randint(n, (n, 4), generator=generator)
    top = torch.randint(0, h - hh + 1, (n,), generator=generator)
    left = torch.randint(0, w - hw + 1, (n,), generator=generator)
    rows = (top[:, None] + torch.arange(hh)[None, :])[:, None, :, None]
    cols = (left[:, None] + torch.arange(hw)[None, :])[:, None, None, :]
    chan = torch.arange(c)[None, :, None, None]
    crops = [x01[picks[:, k][:, None, None, None], chan, rows, cols] for k in range(4)]
    out = torch.zeros_like(x01)
    out[:, :, :hh, :hw], out[:, :, :hh, hw : 2 * hw] = crops[0], crops[1]
    out[:, :, hh : 2 * hh, :hw], out[:, :, hh : 2 * hh, hw : 2 * hw] = crops[2], crops[3]
    cy, cx = torch.randint(h, (n,), generator=generator), torch.randint(w, (n,), generator=generator)
    ys, xs = torch.arange(h)[None, :, None], torch.arange(w)[None, None, :]
    hole = ((ys - cy[:, None, None]).abs() < hh // 2 + 1) & ((xs - cx[:, None, None]).abs() < hw // 2 + 1)
    return out.masked_fill(hole[:, None], 0.0)


def balanced_draw(labels: np.ndarray, n: int, gen: np.random.Generator, num_classes: int) -> np.ndarray:
    """A class-balanced draw of ``n`` indices into ``labels``.

    n indices into ``labels``: n // C of every class without replacement (with, where a class has fewer), and
    the remainder uniformly (the official per-round draw from the shared set).
    """
    per_class = n // num_classes
    picks = []
    for c in range(num_classes):
        members = np.flatnonzero(labels == c)
        if len(members):
            picks.append(gen.choice(members, size=per_class, replace=len(members) < per_class))
    picks.append(gen.integers(len(labels), size=n - sum(len(p) for p in picks)))
    return np.concatenate(picks)


# The mixin goes in front of any base client (fedfed_client_class); the checker sees it as a Client.
if TYPE_CHECKING:
    _MixinBase = Client
else:
    _MixinBase = object


class FedFedMixin(_MixinBase):
    """Adds FedFed's distillation, sharing and receiving phases, and the shared set in training, to a base client."""

    pool: dict[str, torch.Tensor] | None = None  # x1, x2, ... and y of the shared set, once received

    @override
    def train(self, content: RecordDict, server_round: int) -> RecordDict:
        phase = config_of(content)[protocol.PHASE]
        if phase == protocol.DISTILL:
            return self.distill(content, server_round)
        if phase == protocol.SHARE:
            return self.share(content)
        if phase == protocol.RECEIVE:
            return self.receive(content)
        digest = text(config_of(content), protocol.POOL_DIGEST)
        self.pool = self.env.state.shared_payload(digest)
        if self.pool is None:
            raise RuntimeError(
                f"FedFed: this client does not hold the shared set {digest[:12]} (it missed the broadcast)"
            )
        return super().train(content, server_round)

    @override
    def batches(self, config: ConfigRecord, generator: torch.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        env, data = self.env, self.env.data.dataset
        server_round = integer(config, SERVER_ROUND)
        pool = self.pool
        assert pool is not None  # train() received it
        pool_y = pool[protocol.LABELS].numpy()
        n, size = len(env.data), integer(config, BATCH_SIZE)
        draws = rng(env.cfg.seed, "fedfed-draw", server_round, env.client_id)  # once per round, as official
        keys = protocol.shared_copy_keys(len(env.cfg.strategy.share_noise_std))
        copies = [balanced_draw(pool_y, n, draws, data.num_classes) for _ in keys]
        augment = augmented(env.cfg)

        def view(x: torch.Tensor) -> torch.Tensor:
            return shift_flip(x, generator, data.hflip) if augment else x.float()

        for idx in env.data.index_batches(size, generator):
            parts = [data.normalize(view(env.data.x[idx]))]
            labels = [env.data.y[idx]]
            for key, drawn in zip(keys, copies):
                chosen = torch.from_numpy(drawn[idx.numpy()])
                parts.append(data.scale_difference(view(pool[key][chosen])))
                labels.append(pool[protocol.LABELS][chosen])
            yield torch.cat(parts).to(env.device), torch.cat(labels).to(env.device)

    def distill(self, content: RecordDict, server_round: int) -> RecordDict:
        """The DISTILL phase: train the received (G, f) pair on this client's data and reply it."""
        s, env = self.env.cfg.strategy, self.env
        config: ConfigRecord = config_of(content)
        pair = distillation_pair(self.env, arrays_of(content))
        seed_torch(env.cfg.seed, "fedfed-distill", server_round, env.client_id)
        generator = torch_generator(env.cfg.seed, "fedfed-distill-shuffle", server_round, env.client_id)
        optimizer = torch.optim.AdamW(
            pair.parameters(), lr=number(config, LR), weight_decay=float(s.distill_weight_decay)
        )
        skewed = label_skewed(env.data.y, len(env.data.dataset.y_train) / env.cfg.num_clients)
        boost = float(s.label_skew_boost) if skewed else 1.0
        size = integer(config, BATCH_SIZE)
        pair.train()
        totals = {"loss": 0.0, "recon": 0.0, "ce_views": 0.0, "kl": 0.0, "ce_x": 0.0}
        steps = 0
        for epoch in range(integer(config, LOCAL_EPOCHS)):
            re = recon_weight(float(s.weight_recon), epoch)
            self.warm_up_classifier(pair, optimizer, size, generator)
            if not skewed:
                self.mosaic_pretrain(pair, optimizer, size, generator, re)
            for idx in env.data.index_batches(size, generator):
                parts = self.distill_losses(pair, idx, generator)
                loss = (
                    re * parts["recon"]
                    + boost * float(s.weight_ce) * parts["ce_views"]
                    + boost * float(s.weight_kl) * parts["kl"]
                    + boost * float(s.weight_xce) * parts["ce_x"]
                )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                totals["loss"] += loss.item()
                for key, value in parts.items():
                    totals[key] += value.item()
                steps += 1
        metrics: dict[str, Any] = {
            f"distill-{k}" if k != "loss" else TRAIN_LOSS: v / max(steps, 1) for k, v in totals.items()
        }
        metrics[NUM_EXAMPLES] = len(env.data)
        metrics["label-skewed"] = int(skewed)
        return RecordDict({ARRAYS: model_to_record(pair), METRICS: MetricRecord(metrics)})

    def augmented(self, idx: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Local images ``idx`` in [0, 1] with random crop and flip."""
        data = self.env.data.dataset
        return shift_flip(self.env.data.x[idx].float().div_(255.0), generator, data.hflip).to(self.env.device)

    def warm_up_classifier(
        self, pair: protocol.DistillationPair, optimizer: torch.optim.Optimizer, size: int, generator: torch.Generator
    ) -> None:
        """One pass of f alone with mixup on augmented local images (official ``aug_classifier_train``)."""
        alpha, data = float(self.env.cfg.strategy.mixup_alpha), self.env.data.dataset
        pair.generator.requires_grad_(False)
        for idx in self.env.data.index_batches(size, generator):
            x = self.augmented(idx, generator)
            y = self.env.data.y[idx].to(self.env.device)
            lam = float(torch.distributions.Beta(alpha, alpha).sample()) if alpha > 0 else 1.0
            perm = torch.randperm(len(y), generator=generator).to(self.env.device)
            logits = pair.classifier(data.standardize(lam * x + (1 - lam) * x[perm]))
            loss = lam * F.cross_entropy(logits, y) + (1 - lam) * F.cross_entropy(logits, y[perm])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        pair.generator.requires_grad_(True)

    def mosaic_pretrain(
        self,
        pair: protocol.DistillationPair,
        optimizer: torch.optim.Optimizer,
        size: int,
        generator: torch.Generator,
        re: float,
    ) -> None:
        """One pass of G alone on mosaics: re * MSE + kl * KL (official ``aug_VAE_train``)."""
        kl_weight = float(self.env.cfg.strategy.weight_kl)
        for idx in self.env.data.index_batches(size, generator):
            if len(idx) < 4:
                break
            m = mosaic(self.augmented(idx, generator).cpu(), generator).to(self.env.device)
            x_r, mu, logvar = pair.generator(m)
            loss = re * F.mse_loss(x_r, m) + kl_weight * kl_divergence(mu, logvar)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    def distill_losses(
        self, pair: protocol.DistillationPair, idx: torch.Tensor, generator: torch.Generator
    ) -> dict[str, torch.Tensor]:
        """FedFed's distillation losses on the batch ``idx``: reconstruction, views' and raw cross-entropy, KL."""
        s, env, data = self.env.cfg.strategy, self.env, self.env.data.dataset
        x01 = self.augmented(idx, generator)
        y = env.data.y[idx].to(env.device)
        x_r, mu, logvar = pair.generator(x01)
        x_s = x01 - x_r
        views = torch.cat(
            [
                x_s + float(s.view_noise_std1) * torch.randn_like(x_s),
                x_s + float(s.view_noise_std2) * torch.randn_like(x_s),
            ]
        )
        return {
            "recon": F.mse_loss(x_r, x01),
            "ce_views": F.cross_entropy(pair.classifier(data.scale_difference(views)), torch.cat([y, y])),
            "kl": kl_divergence(mu, logvar),
            "ce_x": F.cross_entropy(pair.classifier(data.standardize(x01)), y),
        }

    @torch.no_grad()
    def share(self, content: RecordDict) -> RecordDict:
        """The SHARE phase: this client's noised copies of its performance-sensitive features.

        One noised copy of the performance-sensitive part of every local sample per noise level, float16, with
        labels.
        """
        env, sigmas = self.env, [float(v) for v in self.env.cfg.strategy.share_noise_std]
        pair = distillation_pair(self.env, arrays_of(content)).eval()
        noise_rng = torch_generator(env.cfg.seed, "fedfed-share-noise", env.client_id)
        copies: dict[str, list[torch.Tensor]] = {key: [] for key in protocol.shared_copy_keys(len(sigmas))}
        for idx in env.data.index_batches(1000):
            x01 = env.data.x[idx].to(env.device).float().div_(255.0)
            x_s = (x01 - pair.generator(x01)[0]).cpu()
            for key, sigma in zip(copies, sigmas):
                copies[key].append(x_s + sigma * torch.randn(x_s.shape, generator=noise_rng))
        empty = torch.zeros((0, *env.data.dataset.input_shape), dtype=torch.float16)
        shared = {k: torch.cat(v).half() if v else empty for k, v in copies.items()}
        return RecordDict(
            {
                protocol.SHARED_FEATURES: ArrayRecord({**shared, protocol.LABELS: env.data.y.clone()}),
                METRICS: MetricRecord({NUM_EXAMPLES: len(env.data)}),
            }
        )

    def receive(self, content: RecordDict) -> RecordDict:
        """Keep the global shared set for the rest of the run."""
        pool = arrays_of(content, protocol.SHARED_FEATURES)
        digest = text(config_of(content), protocol.POOL_DIGEST)
        self.env.state.keep_shared(digest, {k: torch.from_numpy(pool[k].numpy()) for k in pool.keys()})
        return RecordDict(
            {
                METRICS: MetricRecord(
                    {NUM_EXAMPLES: len(self.env.data), "pool-samples": int(pool[protocol.LABELS].shape[0])}
                )
            }
        )


@cache
def fedfed_client_class(base_name: str) -> type[Client]:
    """The FedFed client class over the base algorithm's client ``base_name``."""
    base = load_client_class(base_name)
    return type(f"FedFed{base.__name__}", (FedFedMixin, base), {})


def client_class(cfg: Any) -> type[Client]:
    """The FedFed client class over the configured base algorithm's client (``strategy.base``)."""
    return fedfed_client_class(str(cfg.strategy.base))


def CLIENT(env: ClientEnv) -> Client:
    """The FedFed client over the configured base algorithm's client (``strategy.base``)."""
    return client_class(env.cfg)(env)
