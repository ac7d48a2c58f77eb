"""A small Vision Transformer (Dosovitskiy et al., ICLR 2021) with pluggable position embeddings.

``position_embedding=learned`` is the standard learnable table; ``mjp`` is the Masked Jigsaw Puzzle
embedding (Ren et al., CVPR 2023): in a training step (with probability ``mjp_prob``) a block-wise
selection of ``mjp_ratio`` of the patches is permuted among the selected slots only, and every
selected slot gets one shared learnable "unknown" embedding (the table has patches + CLS + 1 rows);
an auxiliary dense absolute localisation loss (a 2-layer MLP regressing each unshuffled position's
(row, col) from its embedding, L1) keeps the table spatially meaningful. No shuffling at test
time; :meth:`ViT.jigsaw` forces a ratio (the victim's setting in privacy evaluations).

Sized for CPU by default (dim 96, depth 4, 3 heads, 4x4 patches); the paper's ViT-Tiny is
``model.dim=192 model.depth=12``. Attention is written with plain Linear layers so Opacus can
compute per-example gradients.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from typing_extensions import override


def block_mask(h: int, w: int, count: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Flat indices of ``count`` grid cells in BEiT-style random rectangles.

    Flat indices of ``count`` grid cells chosen as BEiT-style random rectangles (aspect 0.3..3.3), topped up
    with random cells when the blocks overshoot the grid.
    """
    mask = torch.zeros(h, w, dtype=torch.bool)
    for _ in range(10 * count):
        remaining = count - int(mask.sum())
        if remaining <= 0:
            break
        area = (
            float(torch.empty(1).uniform_(min(4, remaining), remaining, generator=generator))
            if remaining > 4
            else remaining
        )
        aspect = math.exp(float(torch.empty(1).uniform_(math.log(0.3), math.log(1 / 0.3), generator=generator)))
        bh, bw = max(1, round(math.sqrt(area * aspect))), max(1, round(math.sqrt(area / aspect)))
        if bh > h or bw > w:
            continue
        top = int(torch.randint(0, h - bh + 1, (1,), generator=generator))
        left = int(torch.randint(0, w - bw + 1, (1,), generator=generator))
        block = torch.zeros_like(mask)
        block[top : top + bh, left : left + bw] = True
        if int((block & ~mask).sum()) <= remaining:
            mask |= block
    free = (~mask).flatten().nonzero().flatten()
    short = count - int(mask.sum())
    if short > 0:
        mask.view(-1)[free[torch.randperm(len(free), generator=generator)[:short]]] = True
    return mask.flatten().nonzero().flatten()


class LearnedPositions(nn.Module):
    """Standard learnable position embedding: one row per patch and one for CLS."""

    def __init__(self, grid: tuple[int, int], dim: int) -> None:
        super().__init__()
        self.grid = grid
        self.pos_embed = nn.Parameter(torch.randn(1, grid[0] * grid[1] + 1, dim) * 0.02)

    @override
    def forward(self, cls: torch.Tensor, patches: torch.Tensor) -> torch.Tensor:
        return torch.cat([cls, patches], dim=1) + self.pos_embed


class MJPPositions(LearnedPositions):
    """Masked Jigsaw Puzzle position embedding (rows: CLS, patches, unknown)."""

    coords: torch.Tensor  # (patches, 2) grid coordinates in [0, 1], the localiser's targets (a buffer)

    def __init__(self, grid: tuple[int, int], dim: int, ratio: float, prob: float, aux_weight: float) -> None:
        super().__init__(grid, dim)
        self.pos_embed = nn.Parameter(torch.randn(1, grid[0] * grid[1] + 2, dim) * 0.02)
        self.ratio, self.prob, self.aux_weight = ratio, prob, aux_weight
        self.localiser = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, 2))
        rows, cols = torch.meshgrid(torch.arange(grid[0]), torch.arange(grid[1]), indexing="ij")
        coords = torch.stack([rows.flatten() / max(grid[0] - 1, 1), cols.flatten() / max(grid[1] - 1, 1)], dim=1)
        self.register_buffer("coords", coords.float(), persistent=False)
        self.forced: tuple[float, torch.Generator | None] | None = None
        self.known_slots: torch.Tensor | None = None  # an attacker's replay: these slots, unpermuted
        self.last_aux: torch.Tensor | None = None

    def selection(self) -> torch.Tensor:
        """Patch slots to jigsaw in this forward pass (empty when none)."""
        n = self.grid[0] * self.grid[1]
        if self.known_slots is not None:
            return self.known_slots
        if self.forced is not None:
            ratio, generator = self.forced
        elif self.training and float(torch.rand(1)) < self.prob:
            ratio, generator = self.ratio, None
        else:
            return torch.empty(0, dtype=torch.long)
        return block_mask(*self.grid, round(ratio * n), generator)

    @override
    def forward(self, cls: torch.Tensor, patches: torch.Tensor) -> torch.Tensor:
        n = patches.shape[1]
        table = self.pos_embed[0, : n + 1]
        chosen = self.selection().to(patches.device)
        if len(chosen) > 0:
            if self.known_slots is None:
                generator = self.forced[1] if self.forced is not None else None
                order = chosen[torch.randperm(len(chosen), generator=generator).to(patches.device)]
                patches = patches.clone()
                patches[:, chosen] = patches[:, order]
            unknown = self.pos_embed[0, n + 1].expand(len(chosen), -1)
            table = table.index_copy(0, chosen + 1, unknown)
        kept = torch.ones(n, dtype=torch.bool, device=patches.device)
        kept[chosen] = False
        if self.training:
            predicted = self.localiser(self.pos_embed[0, 1 : n + 1][kept])
            self.last_aux = self.aux_weight * F.l1_loss(predicted, self.coords[kept])
        return torch.cat([cls, patches], dim=1) + table.unsqueeze(0)


class Attention(nn.Module):
    """Multi-head self-attention."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    @override
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        weights = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(d // self.heads), dim=-1)
        return self.proj((weights @ v).transpose(1, 2).reshape(b, n, d))


class Block(nn.Module):
    """Pre-LayerNorm transformer block."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim), Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, int(dim * mlp_ratio)), nn.GELU(), nn.Linear(int(dim * mlp_ratio), dim))

    @override
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class Tokens(nn.Module):
    """Images -> patch tokens with CLS and position embeddings."""

    def __init__(self, input_shape: tuple[int, int, int], patch: int, dim: int, positions: LearnedPositions) -> None:
        super().__init__()
        self.patch_embed = nn.Conv2d(input_shape[0], dim, patch, stride=patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.positions = positions

    @override
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        patches = self.patch_embed(x).flatten(2).transpose(1, 2)
        return self.positions(self.cls_token.expand(len(x), -1, -1), patches)


class ClassToken(nn.Module):
    """Final LayerNorm, then the CLS token's features."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)

    @override
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x)[:, 0]


class ViT(nn.Module):
    """A small Vision Transformer: patch tokens with a class token and a position embedding (plain or MJP)."""

    def __init__(
        self,
        input_shape: tuple[int, int, int],
        num_classes: int,
        patch: int = 4,
        dim: int = 96,
        depth: int = 4,
        heads: int = 3,
        mlp_ratio: float = 2.0,
        position_embedding: str = "learned",
        mjp_ratio: float = 0.1,
        mjp_prob: float = 0.5,
        mjp_aux_weight: float = 0.01,
    ) -> None:
        super().__init__()
        if input_shape[1] % patch or input_shape[2] % patch:
            raise ValueError(f"patch size {patch} does not divide the image size {input_shape[1]}x{input_shape[2]}")
        grid = (input_shape[1] // patch, input_shape[2] // patch)
        if position_embedding == "learned":
            positions = LearnedPositions(grid, dim)
        elif position_embedding == "mjp":
            positions = MJPPositions(grid, dim, mjp_ratio, mjp_prob, mjp_aux_weight)
        else:
            raise ValueError(f"position_embedding={position_embedding!r}: choose learned or mjp")
        self.features = nn.Sequential(
            Tokens(input_shape, patch, dim, positions),
            *(Block(dim, heads, mlp_ratio) for _ in range(depth)),
            ClassToken(dim),
        )
        self.classifier = nn.Linear(dim, num_classes)

    @property
    def positions(self) -> LearnedPositions:
        """The position embedding (MJP's where the defence is on)."""
        tokens = self.features[0]
        assert isinstance(tokens, Tokens)
        return tokens.positions

    @override
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))

    def auxiliary_loss(self) -> torch.Tensor | float:
        """MJP's localisation loss of the last training forward pass (0 otherwise)."""
        aux = getattr(self.positions, "last_aux", None)
        return aux if (self.training and aux is not None) else 0.0

    def assume_jigsawed(self, slots: torch.Tensor | None) -> None:
        """An adaptive attacker's replay: the jigsawed ``slots`` take the unknown embedding.

        An adaptive attacker's replay: ``slots`` take the unknown embedding (order unknown, so none is
        permuted); None: back to normal.
        """
        if not isinstance(self.positions, MJPPositions):
            raise ValueError("assume_jigsawed needs position_embedding=mjp")
        self.positions.known_slots = slots

    def jigsaw(self, ratio: float | None, generator: torch.Generator | None = None) -> None:
        """Force MJP to jigsaw ``ratio`` of the patches in every forward pass (None: back to normal)."""
        if not isinstance(self.positions, MJPPositions):
            raise ValueError("jigsaw needs position_embedding=mjp")
        self.positions.forced = None if ratio is None else (ratio, generator)


def mjp_options(defence: Any) -> dict[str, Any]:
    """The ViT options of ``defence=mjp``'s settings (configs/defence/mjp.yaml)."""
    return {
        "position_embedding": "mjp",
        "mjp_ratio": float(defence.ratio),
        "mjp_prob": float(defence.prob),
        "mjp_aux_weight": float(defence.aux_weight),
    }
