"""``python -m fedsim attack``: evaluate one attack against a model / dataset / defence setting.

The victim holds ``num_images`` training images (a seeded draw) and sends one update per
``batch_size`` of them: a gradient, or a FedAvg weight delta after ``local_epochs`` local epochs.
The defence acts where it would in a run (DP-SGD on per-example gradients, local DP and pruning on
the update, MJP by jigsawing the victim's patches at ``defence.eval_ratio``); the attacker sees
that update and nothing else. Writes ``grid.png`` (originals over reconstructions),
``metrics.csv`` (per image) and ``summary.json`` (means) to the output folder, and prints the table.
"""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch.nn import functional as F

from fedsim.checkpoint import latest_checkpoint
from fedsim.data import dataset_from_config
from fedsim.errors import ConfigError
from fedsim.models import model_from_config
from fedsim.models.vit import ViT
from fedsim.privacy.attacks import INVERSIONS, inversion_from_config
from fedsim.privacy.attacks.base import ImageSpace, score_images
from fedsim.privacy.attacks.observation import Observation, attacker_copy, observe_update
from fedsim.privacy.defences import defence_from_config
from fedsim.privacy.defences.dp import DPSGD, CentralDP
from fedsim.privacy.metrics import image_scores
from fedsim.privacy.report import save_grid, table
from fedsim.progress import show
from fedsim.records import load_record
from fedsim.seeding import rng, seed_torch, torch_generator


def victim_model(cfg: DictConfig, shape: tuple[int, int, int], num_classes: int) -> torch.nn.Module:
    """The model the victim trains, on the CPU where the attacks run: seeded initial weights, or a run's checkpoint."""
    seed_torch(cfg.seed, "init")
    model = model_from_config(cfg, shape, num_classes)
    if cfg.weights:
        ckpt = latest_checkpoint(Path(cfg.weights) / "checkpoints")
        if ckpt is None:
            raise ConfigError(
                f"weights={cfg.weights}: no checkpoint there; pass the directory of a fedsim run with checkpoints"
            )
        try:
            load_record(model, ckpt.arrays)
        except (KeyError, RuntimeError) as err:
            raise ConfigError(
                f"weights={cfg.weights} do not fit model={cfg.model.name}: {str(err).splitlines()[0]}"
            ) from err
    return model


@contextmanager
def jigsawed(model: torch.nn.Module, defence: Any, generator: torch.Generator) -> Iterator[None]:
    """Under MJP, the victim's patches are jigsawed at ``eval_ratio`` while its update is computed."""
    ratio = getattr(defence, "eval_ratio", None)
    if ratio is None:
        yield
        return
    assert isinstance(model, ViT)  # MJP is a ViT defence (validated when the run is composed)
    model.jigsaw(ratio, generator)
    try:
        yield
    finally:
        model.jigsaw(None)


def dp_sgd_gradient(
    model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, mech: DPSGD, generator: torch.Generator
) -> dict[str, torch.Tensor]:
    """One DP-SGD step's private mean gradient, through the same Opacus optimizer local training uses."""
    torch.manual_seed(generator.initial_seed())  # Opacus draws its noise from the global generator
    trainable = {k: p for k, p in model.named_parameters() if p.requires_grad}
    model.train()  # Opacus records activations in training mode only (the zoo's cnn/mlp have no dropout or BN)
    with mech.training(model, torch.optim.SGD(trainable.values(), lr=0.0), len(y)) as optimizer:
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.pre_step()  # clip per example, add noise, average: p.grad is what the step would use
        return {k: p.grad.detach().clone() for k, p in trainable.items() if p.grad is not None}


@dataclass(frozen=True)
class VictimProtocol:
    """How the victim computes what it sends.

    One gradient when a single step covers all its images (``local_epochs`` 1 and a local batch of at least
    ``batch_size``), else a FedAvg weight delta.
    """

    batch_size: int = 1
    local_epochs: int = 1
    local_batch_size: int | None = None
    lr: float = 0.1
    momentum: float = 0.0

    @classmethod
    def of(cls, cfg: DictConfig) -> VictimProtocol:
        """From the config of ``python -m fedsim attack``."""
        return cls(int(cfg.batch_size), int(cfg.local_epochs), cfg.local_batch_size, float(cfg.lr), float(cfg.momentum))


def victim_update(
    protocol: VictimProtocol,
    model: torch.nn.Module,
    defence: Any,
    x: torch.Tensor,
    y: torch.Tensor,
    generator: torch.Generator,
) -> Observation:
    """What the server receives from the victim for one batch (after the defence)."""
    mb = int(protocol.local_batch_size or protocol.batch_size)
    kind = "gradient" if protocol.local_epochs == 1 and mb >= len(y) else "delta"
    victim = attacker_copy(model)
    with jigsawed(victim, defence, generator):
        if isinstance(defence, DPSGD):
            if kind != "gradient":
                raise ConfigError(
                    "defence=dp_sgd is evaluated on single gradients here: use local_epochs=1 and no local_batch_size"
                )
            obs = Observation(victim, dp_sgd_gradient(victim, x, y, defence, generator), kind, len(y))
        else:
            obs = observe_update(
                victim,
                x,
                y,
                kind,
                batch_size=mb,
                local_epochs=protocol.local_epochs,
                lr=protocol.lr,
                momentum=protocol.momentum,
            )
    if hasattr(defence, "transform_update"):
        obs.update = defence.transform_update(obs.update, generator)
    obs.model = attacker_copy(model)  # the attacker's copy: no knowledge of the victim's jigsaw
    return obs


@dataclass
class VictimAttack:
    """Per-image scores (``rows``), their means, and the images for the grid."""

    rows: list[dict[str, Any]]
    means: dict[str, float]
    originals: torch.Tensor
    reconstructions: torch.Tensor


def reference_images(dataset: Any, picks: torch.Tensor, seed: int) -> torch.Tensor:
    """One other training image per victim: the random-image reference.

    One other training image per victim (a seeded draw): what an attacker scores with a random image of the
    same data, the level below which a reconstruction shows nothing of the victim.
    """
    others = np.setdiff1d(np.arange(len(dataset.y_train)), picks.numpy())
    return torch.from_numpy(rng(seed, "attack-reference").choice(others, len(picks), replace=False))


def attack_victims(
    model: torch.nn.Module,
    dataset: Any,
    defence: Any,
    method: Any,
    picks: torch.Tensor,
    protocol: VictimProtocol,
    seed: int,
    lpips_home: str | None = None,
) -> VictimAttack:
    """Attack the training images ``picks`` and score each reconstruction.

    Attack the training images ``picks``, ``protocol.batch_size`` of them behind each observed update, and
    score each reconstruction beside a random other image's score (``reference_psnr``/``_ssim``).
    """
    space = ImageSpace.of(dataset)
    references = reference_images(dataset, picks, seed)
    originals: list[torch.Tensor] = []
    recs: list[torch.Tensor] = []
    rows: list[dict[str, Any]] = []
    for start in range(0, len(picks), protocol.batch_size):
        idx = picks[start : start + protocol.batch_size]
        x01, y = dataset.x_train[idx].float() / 255.0, dataset.y_train[idx]
        generator = torch_generator(seed, "attack", start)
        obs = victim_update(protocol, model, defence, space.from_unit(x01), y, generator)
        rec = method.reconstruct(obs, len(idx), space, generator)
        result = score_images(space.to_unit(rec.images), x01, rec.labels, y, lpips_home)
        assert result.originals is not None and result.reconstructions is not None  # score_images sets both
        reference = image_scores(
            dataset.x_train[references[start : start + len(idx)]].float() / 255.0, result.originals
        )
        originals.append(result.originals)
        recs.append(result.reconstructions)
        for i in range(len(idx)):
            rows.append(
                {
                    "image": start + i,
                    "batch": start // protocol.batch_size,
                    **{k: v[i] for k, v in result.per_sample.items()},
                    "reference_psnr": float(reference["psnr"][i]),
                    "reference_ssim": float(reference["ssim"][i]),
                }
            )
        rows[-1]["label_accuracy"] = result.metrics.get("label_accuracy")
        show(
            f"attack batch {start // protocol.batch_size + 1}/{-(-len(picks) // protocol.batch_size)}: "
            + ", ".join(f"{k} {v:.4g}" for k, v in result.metrics.items())
        )
    names = [c for c in rows[0] if c not in ("image", "batch", "label_accuracy")]
    means = {k: sum(r[k] for r in rows) / len(rows) for k in names}
    labels = [r["label_accuracy"] for r in rows if r.get("label_accuracy") is not None]
    means["label_accuracy"] = sum(labels) / len(labels)
    return VictimAttack(rows, means, torch.cat(originals), torch.cat(recs))


def write_attack_files(out: Path, attack: VictimAttack, title: str) -> None:
    """``metrics.csv`` (per image) and ``grid.png`` (originals over reconstructions) in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    columns = [c for c in attack.rows[0] if c != "label_accuracy"]
    with (out / "metrics.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(attack.rows)
    save_grid(out / "grid.png", attack.originals, attack.reconstructions, title)


def output_dir(cfg: DictConfig) -> Path:
    """Where a stand-alone attack writes its files (``out_dir``, or a new folder under the runs root)."""
    path = (
        Path(cfg.out_dir)
        if cfg.out_dir
        else Path(cfg.runs_root) / f"attack-{time.strftime('%Y%m%d-%H%M%S')}-{cfg.attack.name}"
    )
    path.mkdir(parents=True, exist_ok=True)
    return path


def run_attack(cfg: DictConfig) -> dict[str, Any]:
    """Attack ``num_images`` victim images; returns the summary written to ``summary.json``."""
    name = str(cfg.attack.name)
    if name not in INVERSIONS:
        raise ConfigError(
            f"attack={name} cannot run stand-alone: choose one of {', '.join(sorted(INVERSIONS))} (the others attack "
            "what a federated run shares)"
        )
    defence = defence_from_config(cfg.defence)
    if isinstance(defence, CentralDP):
        raise ConfigError(
            "defence=central_dp noises the aggregate, not what one client sends: evaluate it in a run, or use "
            "defence=local_dp"
        )
    dataset = dataset_from_config(cfg)
    model = victim_model(cfg, dataset.input_shape, dataset.num_classes)
    method = inversion_from_config(cfg.attack)
    picks = torch.from_numpy(
        rng(cfg.seed, "attack-victims").choice(len(dataset.y_train), int(cfg.num_images), replace=False)
    )
    t0 = time.time()
    attack = attack_victims(
        model, dataset, defence, method, picks, VictimProtocol.of(cfg), int(cfg.seed), cfg.attack.get("lpips_home")
    )
    out = output_dir(cfg)
    write_attack_files(out, attack, f"{name} on {cfg.model.name}, defence={cfg.defence.name}, batch {cfg.batch_size}")
    summary = {
        "attack": name,
        "model": cfg.model.name,
        "defence": cfg.defence.name,
        "dataset": cfg.dataset.name,
        "num_images": int(cfg.num_images),
        "batch_size": int(cfg.batch_size),
        "local_epochs": int(cfg.local_epochs),
        "weights": cfg.weights,
        "mean": attack.means,
        "seconds": time.time() - t0,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    (out / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    columns = [c for c in attack.rows[0] if c != "label_accuracy"]
    print(table(attack.rows + [{"image": "mean", "batch": "", **attack.means}], columns))
    print(f"label accuracy {attack.means['label_accuracy']:.3f}; grid, metrics.csv and summary.json in {out}")
    summary["out_dir"] = str(out)
    return summary
