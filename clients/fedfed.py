"""FedFed client: "FedFed: Feature Distillation against Data Heterogeneity in Federated Learning"
(Yang, Zhang et al., NeurIPS 2023, arXiv:2310.05077).

The server tells the phase in the config record (``fedfed-phase``):

- ``distill``: train the generator G and an embedded classifier f on local data. For x in [0, 1],
  x_r = G(x), x_s = x - x_r, two noised views v_k = x_s + N(0, s_k^2) and
      loss = re * MSE(x_r, x) + ce * CE(f([v1; v2]), [y; y]) + kl * KL + xce * CE(f(x), y).
  The reconstruction term makes x_r carry as much of x as it can, the CE terms make the part left
  in x_s enough to classify under noise: x_s holds the performance-sensitive features.
- ``share``: send x_s + N(0, sigma^2) (fresh noise per sample, eval mode, mean latent) of every
  local sample with its label; x_r never leaves the client.
- ``train``: the base algorithm's own update (``strategy.base``), each local batch concatenated
  with as many shared samples (sent by the server, class-balanced) and trained with plain CE.

Shared x_s enter the classifier as ``x_s / std`` (the linear part of the dataset normalisation),
so that x_s + x_r normalised equals x normalised.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Iterator

import torch
from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict
from torch import nn
from torch.nn import functional as F

from clients import load_client_class
from clients.base import Client, ClientEnv
from fedsim.models import model_from_config
from fedsim.models.generator import FeatureGenerator, kl_divergence
from fedsim.records import load_record, model_to_record
from fedsim.seeding import seed_torch, torch_generator

DISTILL, SHARE, TRAIN = "distill", "share", "train"


class DistillationPair(nn.Module):
    """G and the embedded classifier f, trained and averaged together in the distillation phase."""

    def __init__(self, cfg, input_shape: tuple[int, int, int], num_classes: int) -> None:
        super().__init__()
        s = cfg.strategy
        self.generator = FeatureGenerator(input_shape, int(s.generator_width), int(s.generator_latent))
        self.classifier = model_from_config(cfg, input_shape, num_classes)


def distillation_pair(env: ClientEnv, arrays: ArrayRecord) -> DistillationPair:
    """The (G, f) pair at the weights of ``arrays``, on the client's device."""
    data = env.data.dataset
    pair = DistillationPair(env.cfg, data.input_shape, data.num_classes).to(env.device)
    load_record(pair, arrays)
    return pair


class FedFedMixin:
    """Adds FedFed's distillation and sharing phases, and shared samples in training, to a base client."""

    env: ClientEnv

    def train(self, content: RecordDict, server_round: int) -> RecordDict:
        phase = content["config"]["fedfed-phase"]
        if phase == DISTILL:
            return self.distill(content, server_round)
        if phase == SHARE:
            return self.share(content)
        self.shared = content["shared"]
        return super().train(content, server_round)

    def batches(self, config: ConfigRecord, generator: torch.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        device, dataset = self.env.device, self.env.data.dataset
        shared_x = self.shared["x"].numpy()
        shared_y = torch.from_numpy(self.shared["y"].numpy())
        offset = 0
        for x, y in super().batches(config, generator):
            idx = torch.arange(offset, offset + len(y)) % len(shared_y)
            offset += len(y)
            xs = dataset.scale_difference(torch.from_numpy(shared_x[idx.numpy()]).float()).to(device)
            yield torch.cat([x, xs]), torch.cat([y, shared_y[idx].to(device)])

    def distill(self, content: RecordDict, server_round: int) -> RecordDict:
        s, env = self.env.cfg.strategy, self.env
        config: ConfigRecord = content["config"]
        pair = distillation_pair(self.env, content["arrays"])
        seed_torch(env.cfg.seed, "fedfed-distill", server_round, env.client_id)
        generator = torch_generator(env.cfg.seed, "fedfed-distill-shuffle", server_round, env.client_id)
        optimizer = torch.optim.AdamW(pair.parameters(), lr=float(config["lr"]))
        data = env.data.dataset
        pair.train()
        totals = {"loss": 0.0, "recon": 0.0, "ce_views": 0.0, "kl": 0.0, "ce_x": 0.0}
        steps = 0
        for _ in range(int(config["local-epochs"])):
            for idx in env.data.index_batches(int(config["batch-size"]), generator):
                x01 = env.data.x[idx].to(env.device).float().div_(255.0)
                y = env.data.y[idx].to(env.device)
                x_r, mu, logvar = pair.generator(x01)
                x_s = x01 - x_r
                views = torch.cat([x_s + float(s.view_noise_std1) * torch.randn_like(x_s),
                                   x_s + float(s.view_noise_std2) * torch.randn_like(x_s)])
                parts = {
                    "recon": F.mse_loss(x_r, x01),
                    "ce_views": F.cross_entropy(pair.classifier(data.scale_difference(views)), torch.cat([y, y])),
                    "kl": kl_divergence(mu, logvar),
                    "ce_x": F.cross_entropy(pair.classifier(data.normalize(env.data.x[idx].to(env.device))), y),
                }
                loss = (float(s.weight_recon) * parts["recon"] + float(s.weight_ce) * parts["ce_views"]
                        + float(s.weight_kl) * parts["kl"] + float(s.weight_xce) * parts["ce_x"])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                totals["loss"] += loss.item()
                for key, value in parts.items():
                    totals[key] += value.item()
                steps += 1
        metrics = {f"distill-{k}" if k != "loss" else "train-loss": v / max(steps, 1) for k, v in totals.items()}
        metrics["num-examples"] = len(env.data)
        return RecordDict({"arrays": model_to_record(pair), "metrics": MetricRecord(metrics)})

    @torch.no_grad()
    def share(self, content: RecordDict) -> RecordDict:
        """The noised performance-sensitive part of every local sample, as float16, with labels."""
        env = self.env
        pair = distillation_pair(self.env, content["arrays"]).eval()
        sigma = float(env.cfg.strategy.share_noise_std)
        noise_rng = torch_generator(env.cfg.seed, "fedfed-share-noise", env.client_id)
        chunks = []
        for idx in env.data.index_batches(1000):
            x01 = env.data.x[idx].to(env.device).float().div_(255.0)
            x_s = (x01 - pair.generator(x01)[0]).cpu()
            chunks.append(x_s + sigma * torch.randn(x_s.shape, generator=noise_rng))
        shared = torch.cat(chunks).half() if chunks else torch.zeros((0, *env.data.dataset.input_shape), dtype=torch.float16)
        return RecordDict(
            {
                "shared": ArrayRecord({"x": shared, "y": env.data.y.clone()}),
                "metrics": MetricRecord({"num-examples": len(env.data)}),
            }
        )


@lru_cache(maxsize=None)
def fedfed_client_class(base_name: str) -> type[Client]:
    base = load_client_class(base_name)
    return type(f"FedFed{base.__name__}", (FedFedMixin, base), {})


def CLIENT(env: ClientEnv) -> Client:
    """The FedFed client over the configured base algorithm's client (``strategy.base``)."""
    return fedfed_client_class(str(env.cfg.strategy.base))(env)
