"""Multi-scale deformable attention (Deformable DETR), with ViT-Adapter's value-width ratio, in plain PyTorch.

Each query looks at ``n_points`` locations per head and per feature level, placed around its reference point by
learned offsets, and sums the bilinearly sampled values with softmax weights (over levels and points). The sampling
is ``F.grid_sample`` (bilinear, zero padding, ``align_corners=False``): a location (x, y) in [0, 1] reads pixel
coordinates (x W - 0.5, y H - 0.5) and outside pixels count as zero, which is what the compiled CUDA op of the
original computes, so this runs on any device without a build step.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["ms_deform_attn", "MSDeformAttn", "Shapes"]

Shapes = Sequence[tuple[int, int]]  # (H, W) of each level, in the order the levels are concatenated


def ms_deform_attn(value: torch.Tensor, shapes: Shapes, locations: torch.Tensor,
                   weights: torch.Tensor) -> torch.Tensor:
    """Sample and combine: value (B, S, M, D) holds the levels' tokens one after another (S = sum H_l W_l, row
    major), locations (B, Q, M, L, P, 2) are (x, y) in [0, 1] per query / head / level / point, weights
    (B, Q, M, L, P). Returns (B, Q, M * D)."""
    batch, tokens, heads, dim = value.shape
    queries, levels, points = locations.shape[1], locations.shape[3], locations.shape[4]
    if len(shapes) != levels:
        raise ValueError(f"{len(shapes)} level shapes for locations over {levels} levels")
    if sum(h * w for h, w in shapes) != tokens:
        raise ValueError(f"level shapes {list(shapes)} cover {sum(h * w for h, w in shapes)} tokens, "
                         f"value has {tokens}")
    grids = 2 * locations - 1
    out = None
    for level, ((h, w), v) in enumerate(zip(shapes, value.split([h * w for h, w in shapes], dim=1))):
        v = v.permute(0, 2, 3, 1).reshape(batch * heads, dim, h, w)
        grid = grids[:, :, :, level].transpose(1, 2).reshape(batch * heads, queries, points, 2)
        sampled = F.grid_sample(v, grid.to(v.dtype), mode="bilinear", padding_mode="zeros", align_corners=False)
        wl = weights[:, :, :, level].transpose(1, 2).reshape(batch * heads, 1, queries, points)
        term = (sampled * wl.to(sampled.dtype)).sum(-1)  # (B*M, D, Q)
        out = term if out is None else out + term
    return out.view(batch, heads, dim, queries).permute(0, 3, 1, 2).reshape(batch, queries, heads * dim)


class MSDeformAttn(nn.Module):
    """Deformable attention of queries (B, Q, C) over multi-level features (B, S, C).

    Args:
        dim: query / feature width C.
        n_levels: feature levels L.
        n_heads: heads M; ``int(dim * ratio)`` must be a multiple of it.
        n_points: sampling points per head and level.
        ratio: width of the values relative to ``dim`` (ViT-Adapter's ``deform_ratio``).

    Parameter names follow the original (``sampling_offsets``, ``attention_weights``, ``value_proj``,
    ``output_proj``), so converted checkpoints load unchanged.
    """

    def __init__(self, dim: int = 256, n_levels: int = 4, n_heads: int = 8, n_points: int = 4, ratio: float = 1.0):
        super().__init__()
        value_dim = int(dim * ratio)
        if value_dim < n_heads or value_dim % n_heads:
            raise ValueError(f"deformable attention: value width int({dim} * {ratio}) = {value_dim} is not a "
                             f"positive multiple of n_heads={n_heads}")
        self.n_levels, self.n_heads, self.n_points = n_levels, n_heads, n_points
        self.head_dim = value_dim // n_heads
        self.sampling_offsets = nn.Linear(dim, n_heads * n_levels * n_points * 2)
        self.attention_weights = nn.Linear(dim, n_heads * n_levels * n_points)
        self.value_proj = nn.Linear(dim, value_dim)
        self.output_proj = nn.Linear(value_dim, dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Deformable DETR's init: zero offset weights with a bias that starts head m's points on a ray at angle
        2 pi m / M (point p at distance p + 1, in pixels of each level), uniform attention, Xavier projections."""
        nn.init.zeros_(self.sampling_offsets.weight)
        angles = torch.arange(self.n_heads, dtype=torch.float32) * (2.0 * math.pi / self.n_heads)
        rays = torch.stack([angles.cos(), angles.sin()], -1)
        rays = rays / rays.abs().max(-1, keepdim=True).values
        steps = torch.arange(1, self.n_points + 1, dtype=torch.float32)
        bias = rays[:, None, None, :] * steps[None, None, :, None]  # (M, 1, P, 2)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(bias.expand(-1, self.n_levels, -1, -1).reshape(-1))
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        for proj in (self.value_proj, self.output_proj):
            nn.init.xavier_uniform_(proj.weight)
            nn.init.zeros_(proj.bias)

    def forward(self, query: torch.Tensor, reference_points: torch.Tensor, feat: torch.Tensor,
                shapes: Shapes) -> torch.Tensor:
        """query (B, Q, C); reference_points (B or 1, Q, 2) as (x, y) in [0, 1], shared by the levels; feat
        (B, S, C) with the levels of ``shapes`` concatenated. Returns (B, Q, C)."""
        if len(shapes) != self.n_levels:
            raise ValueError(f"deformable attention built for {self.n_levels} levels got {len(shapes)} level shapes")
        batch, queries, _ = query.shape
        m, lv, p = self.n_heads, self.n_levels, self.n_points
        value = self.value_proj(feat).view(batch, feat.shape[1], m, self.head_dim)
        offsets = self.sampling_offsets(query).view(batch, queries, m, lv, p, 2)
        weights = self.attention_weights(query).view(batch, queries, m, lv * p).softmax(-1).view(
            batch, queries, m, lv, p)
        # offsets are in pixels of each level: divide by its (W, H); locations in fp32 at least (in bf16 a location
        # on a 128-pixel map would be off by up to half a pixel)
        dtype = torch.promote_types(offsets.dtype, torch.float32)
        size = torch.tensor([[w, h] for h, w in shapes], dtype=dtype, device=offsets.device)
        locations = (reference_points.to(dtype)[:, :, None, None, None, :]
                     + offsets.to(dtype) / size[None, None, None, :, None, :])
        if torch.is_autocast_enabled(value.device.type):  # as the original's op (cast_inputs=float32): the
            with torch.autocast(value.device.type, enabled=False):  # sampling and weighting in fp32
                out = ms_deform_attn(value.float(), shapes, locations, weights.float())
        else:
            out = ms_deform_attn(value, shapes, locations, weights)
        return self.output_proj(out)

    def extra_repr(self) -> str:
        return f"n_levels={self.n_levels}, n_heads={self.n_heads}, n_points={self.n_points}"
