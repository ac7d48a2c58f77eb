"""Leakage metrics: PSNR, MSE, SSIM, label-recovery accuracy, membership AUC and TPR at low FPR.

Images are compared in [0, 1] (de-normalised). Batch reconstructions are matched to the originals
by a Hungarian assignment on MSE before scoring, since an attacker recovers a batch as a set.
LPIPS needs torchvision's AlexNet weights, which cannot be downloaded here: it is computed only
when they are present locally (``lpips_home``) and skipped with a message otherwise.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger("fedsim")

ALEXNET_FILE = "hub/checkpoints/alexnet-owt-7be5be79.pth"


def mse(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-image mean squared error of [0, 1] images (N, C, H, W)."""
    return (x - y).pow(2).flatten(1).mean(1)


def psnr(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-image peak signal-to-noise ratio in dB for data range 1."""
    return 10.0 * torch.log10(1.0 / mse(x, y).clamp_min(1e-10))


def ssim(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-image SSIM: 11-pixel Gaussian window, sigma 1.5, data range 1."""
    # torchmetrics is imported where it is used: importing it (and torchvision's models with it)
    # takes seconds, which every run would pay at start-up although only privacy attacks score images.
    from torchmetrics.functional.image import structural_similarity_index_measure

    scores = structural_similarity_index_measure(
        x.float(), y.float(), data_range=1.0, kernel_size=11, sigma=1.5, reduction="none"
    )
    assert isinstance(scores, torch.Tensor)  # a tuple only with return_full_image or return_contrast_sensitivity
    return scores


def match(reconstructions: torch.Tensor, candidates: torch.Tensor) -> np.ndarray:
    """For each reconstruction, the index of its original: a one-to-one assignment minimising MSE."""
    from scipy.optimize import linear_sum_assignment  # here: importing scipy.optimize costs every run 0.3 s

    cost = torch.cdist(reconstructions.flatten(1).double(), candidates.flatten(1).double()).pow(2).numpy()
    rows, cols = linear_sum_assignment(cost)
    order = np.empty(len(reconstructions), dtype=np.int64)
    order[rows] = cols
    return order


def image_scores(
    reconstructions: torch.Tensor, originals: torch.Tensor, lpips_home: str | None = None
) -> dict[str, torch.Tensor]:
    """Per-image scores of reconstructions against the originals they match best (Hungarian)."""
    reconstructions = reconstructions.detach().float().clamp(0, 1).cpu()
    matched = originals.detach().float().cpu()[match(reconstructions, originals.detach().float().cpu())]
    scores = {
        "psnr": psnr(reconstructions, matched),
        "mse": mse(reconstructions, matched),
        "ssim": ssim(reconstructions, matched),
    }
    lp = lpips(reconstructions, matched, lpips_home)
    if lp is not None:
        scores["lpips"] = lp
    scores["matched"] = matched
    return scores


def lpips(x: torch.Tensor, y: torch.Tensor, lpips_home: str | None) -> torch.Tensor | None:
    """Per-image LPIPS (AlexNet) if its weights are under ``lpips_home`` (a TORCH_HOME), else None."""
    if not lpips_home or not (Path(lpips_home) / ALEXNET_FILE).exists():
        log.info("LPIPS skipped: needs torchvision's AlexNet weights at <lpips_home>/%s (no download)", ALEXNET_FILE)
        return None
    os.environ["TORCH_HOME"] = str(lpips_home)
    from torchmetrics.functional.image import learned_perceptual_image_patch_similarity

    rgb = (lambda t: t.expand(-1, 3, -1, -1)) if x.shape[1] == 1 else (lambda t: t)
    return torch.stack(
        [
            learned_perceptual_image_patch_similarity(rgb(a[None]), rgb(b[None]), net_type="alex", normalize=True)
            for a, b in zip(x, y)
        ]
    )


def label_accuracy(predicted: list[int] | torch.Tensor, true: list[int] | torch.Tensor) -> float:
    """Fraction of the true labels recovered, as multisets (order-free)."""
    found, truth = Counter(int(v) for v in predicted), Counter(int(v) for v in true)
    return sum((found & truth).values()) / max(sum(truth.values()), 1)


def membership_scores(members: torch.Tensor, non_members: torch.Tensor, fpr: float = 0.01) -> dict[str, float]:
    """AUC and TPR at ``fpr`` of a score that is higher for members."""
    from torchmetrics.functional.classification import binary_auroc, binary_roc  # see ssim(): imported where used

    scores = torch.cat([members, non_members]).double()
    target = torch.cat([torch.ones(len(members)), torch.zeros(len(non_members))]).long()
    fprs, tprs, _ = binary_roc(scores, target)
    tpr_at = float(tprs[fprs <= fpr].max()) if bool((fprs <= fpr).any()) else 0.0
    return {"auc": float(binary_auroc(scores, target)), f"tpr_at_{fpr:g}_fpr": tpr_at}
