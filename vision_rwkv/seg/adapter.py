"""ViT-Adapter neck for the VRWKV / VRWKV6 backbones: the dense-prediction neck of the released ADE20K models.

A convolutional stem (the spatial prior module) gives features at strides 4/8/16/32; the stride 8/16/32 ones, as
one token list ``c``, talk to the backbone's stride-16 tokens ``x`` through deformable attention around each group
of blocks: an injector adds ``c`` into ``x`` before the group, an extractor (with a depthwise-conv FFN) pulls ``x``
into ``c`` after it (two extra extractors after the last group). The outputs are ``c`` split back into its levels
(stride 4 = upsampled stride 8 + the stem's stride-4 map), plus the groups' ``x`` resized to each stride, each
through BatchNorm. Module and parameter names follow the original (``spm``, ``interactions.{i}.injector``, ...)
so released checkpoints convert by renaming prefixes only (:mod:`vision_rwkv.seg.convert`).

Input sides must be multiples of 32 (the test pipeline's ``test.size_divisor``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath

from vision_rwkv.models._base import VisionRWKVBase

from .deform_attn import MSDeformAttn, Shapes
from .layers import ConvBNReLU, evenly_spaced_indices

__all__ = ["ViTAdapter", "SpatialPriorModule", "InteractionBlock", "Injector", "Extractor", "ConvFFN",
           "reference_points", "even_groups"]


def reference_points(shapes: Shapes, device: torch.device) -> torch.Tensor:
    """Pixel centres of every level, normalised to [0, 1] as (x, y): (1, sum H W, 2), levels in order."""
    pts = []
    for h, w in shapes:
        y = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) / h
        x = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) / w
        yy, xx = torch.meshgrid(y, x, indexing="ij")
        pts.append(torch.stack([xx.reshape(-1), yy.reshape(-1)], -1))
    return torch.cat(pts, 0)[None]


def even_groups(depth: int, n: int = 4) -> list[list[int]]:
    """``n`` consecutive block groups as [first, last] pairs (12 blocks -> [0, 2], [3, 5], [6, 8], [9, 11])."""
    if not 1 <= n <= depth:
        raise ValueError(f"cannot split {depth} blocks into {n} interaction groups")
    ends = evenly_spaced_indices(depth, n)
    return [[0 if i == 0 else ends[i - 1] + 1, e] for i, e in enumerate(ends)]


def _layer_norm(dim: int) -> nn.LayerNorm:
    return nn.LayerNorm(dim, eps=1e-6)


class SpatialPriorModule(nn.Module):
    """Conv stem: strides 4 (``c1``, a map) and 8 / 16 / 32 (``c2``-``c4``, tokens), each projected to ``dim``."""

    def __init__(self, inplanes: int = 64, dim: int = 384):
        super().__init__()
        # one flat Sequential (stem.0 conv, stem.1 norm, ..., stem.9 max pool) as in the original checkpoints
        self.stem = nn.Sequential(*ConvBNReLU(3, inplanes, 3, stride=2), *ConvBNReLU(inplanes, inplanes, 3),
                                  *ConvBNReLU(inplanes, inplanes, 3), nn.MaxPool2d(kernel_size=3, stride=2, padding=1))
        self.conv2 = ConvBNReLU(inplanes, 2 * inplanes, 3, stride=2)
        self.conv3 = ConvBNReLU(2 * inplanes, 4 * inplanes, 3, stride=2)
        self.conv4 = ConvBNReLU(4 * inplanes, 4 * inplanes, 3, stride=2)
        self.fc1 = nn.Conv2d(inplanes, dim, 1)
        self.fc2 = nn.Conv2d(2 * inplanes, dim, 1)
        self.fc3 = nn.Conv2d(4 * inplanes, dim, 1)
        self.fc4 = nn.Conv2d(4 * inplanes, dim, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        c1 = self.stem(x)
        c2 = self.conv2(c1)
        c3 = self.conv3(c2)
        c4 = self.conv4(c3)
        tokens = [fc(c).flatten(2).transpose(1, 2) for fc, c in ((self.fc2, c2), (self.fc3, c3), (self.fc4, c4))]
        return self.fc1(c1), tokens[0], tokens[1], tokens[2]


class _LevelDWConv(nn.Module):
    """One 3x3 depthwise conv applied to each level's tokens as a map."""

    def __init__(self, dim: int):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 3, 1, 1, groups=dim)

    def forward(self, x: torch.Tensor, shapes: Shapes) -> torch.Tensor:
        batch, _, chs = x.shape
        parts = x.split([h * w for h, w in shapes], dim=1)
        return torch.cat([self.dwconv(p.transpose(1, 2).reshape(batch, chs, h, w)).flatten(2).transpose(1, 2)
                          for p, (h, w) in zip(parts, shapes)], dim=1)


class ConvFFN(nn.Module):
    """Linear -> per-level 3x3 depthwise conv -> GELU -> Linear on multi-level tokens."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = _LevelDWConv(hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor, shapes: Shapes) -> torch.Tensor:
        return self.fc2(self.act(self.dwconv(self.fc1(x), shapes)))


class Injector(nn.Module):
    """Backbone tokens += gamma * deformable attention over the multi-level features."""

    def __init__(self, dim: int, num_heads: int, n_points: int, n_levels: int = 3, ratio: float = 1.0,
                 init_values: float = 0.0):
        super().__init__()
        self.query_norm = _layer_norm(dim)
        self.feat_norm = _layer_norm(dim)
        self.attn = MSDeformAttn(dim, n_levels, num_heads, n_points, ratio)
        self.gamma = nn.Parameter(torch.full((dim,), float(init_values)))

    def forward(self, query: torch.Tensor, ref: torch.Tensor, feat: torch.Tensor, shapes: Shapes) -> torch.Tensor:
        return query + self.gamma * self.attn(self.query_norm(query), ref, self.feat_norm(feat), shapes)


class Extractor(nn.Module):
    """Multi-level features += deformable attention over the backbone tokens, then += ConvFFN (with drop path)."""

    def __init__(self, dim: int, num_heads: int, n_points: int, ratio: float = 1.0, with_cffn: bool = True,
                 cffn_ratio: float = 0.25, drop_path: float = 0.0):
        super().__init__()
        self.query_norm = _layer_norm(dim)
        self.feat_norm = _layer_norm(dim)
        self.attn = MSDeformAttn(dim, 1, num_heads, n_points, ratio)
        self.with_cffn = with_cffn
        if with_cffn:
            self.ffn = ConvFFN(dim, int(dim * cffn_ratio))
            self.ffn_norm = _layer_norm(dim)
            self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, query: torch.Tensor, ref: torch.Tensor, feat: torch.Tensor, feat_shape: tuple[int, int],
                query_shapes: Shapes) -> torch.Tensor:
        query = query + self.attn(self.query_norm(query), ref, self.feat_norm(feat), [feat_shape])
        if self.with_cffn:
            query = query + self.drop_path(self.ffn(self.ffn_norm(query), query_shapes))
        return query


@dataclass
class _Geometry:
    """Where the tokens of one input size sit: the three feature levels (strides 8/16/32) and the backbone grid."""
    levels: list[tuple[int, int]]
    grid: tuple[int, int]
    grid_ref: torch.Tensor    # reference points of the backbone tokens (queries of the injectors)
    levels_ref: torch.Tensor  # reference points of the multi-level tokens (queries of the extractors)


class InteractionBlock(nn.Module):
    """Injector -> a group of backbone blocks -> extractor (-> two extra extractors after the last group)."""

    def __init__(self, dim: int, num_heads: int, n_points: int, ratio: float, init_values: float, with_cffn: bool,
                 cffn_ratio: float, drop_path: float, extra_extractor: bool):
        super().__init__()
        self.injector = Injector(dim, num_heads, n_points, 3, ratio, init_values)

        def extractor() -> Extractor:
            return Extractor(dim, num_heads, n_points, ratio, with_cffn, cffn_ratio, drop_path)

        self.extractor = extractor()
        self.extra_extractors = nn.Sequential(extractor(), extractor()) if extra_extractor else None

    def forward(self, x: torch.Tensor, c: torch.Tensor, run_blocks: Callable[[torch.Tensor], torch.Tensor],
                geo: _Geometry) -> tuple[torch.Tensor, torch.Tensor]:
        x = run_blocks(self.injector(x, geo.grid_ref, c, geo.levels))
        for extractor in [self.extractor, *(self.extra_extractors or ())]:
            c = extractor(c, geo.levels_ref, x, geo.grid, geo.levels)
        return x, c


class ViTAdapter(nn.Module):
    """The adapter around a :class:`~vision_rwkv.models._base.VisionRWKVBase` backbone with 16-pixel patches.

    ``forward(backbone, img)`` runs the backbone's embedding and blocks (its ``_embed`` / ``_run_block``, so
    activation checkpointing and the fused kernels apply) interleaved with the interactions and returns four
    (B, dim, H/s, W/s) maps for s = 4, 8, 16, 32. The backbone is not a submodule: the segmentor owns it.

    Args (the original's names where they differ): dim (``embed_dims``), depth (backbone blocks), conv_inplane,
    n_points, deform_num_heads, init_values (``init_values_inject``, the injectors' gamma), interaction_indexes
    ([first, last] block of each group; None: four even groups), with_cffn, cffn_ratio, deform_ratio,
    add_vit_feature (``add_rwkv_feature``), use_extra_extractor, drop_path_rate (the extractors' drop path).
    """

    def __init__(
            self,
            dim: int,
            depth: int,
            conv_inplane: int = 64,
            n_points: int = 4,
            deform_num_heads: int = 6,
            init_values: float = 0.0,
            interaction_indexes: Optional[Sequence[Sequence[int]]] = None,
            with_cffn: bool = True,
            cffn_ratio: float = 0.25,
            deform_ratio: float = 1.0,
            add_vit_feature: bool = True,
            use_extra_extractor: bool = True,
            drop_path_rate: float = 0.0,
    ):
        super().__init__()
        groups = [list(g) for g in interaction_indexes] if interaction_indexes is not None else even_groups(depth)
        if any(len(g) != 2 for g in groups) or not groups:
            raise ValueError(f"interaction_indexes must be [first, last] block pairs, got {interaction_indexes}")
        flat = [i for g in groups for i in g]
        if flat[0] != 0 or flat[-1] != depth - 1 or any(
                g[0] > g[1] or (k and g[0] != groups[k - 1][1] + 1) for k, g in enumerate(groups)):
            raise ValueError(f"interaction_indexes {groups} must cover blocks 0..{depth - 1} in consecutive groups")
        self.interaction_indexes = groups
        self.add_vit_feature = add_vit_feature
        self.level_embed = nn.Parameter(torch.zeros(3, dim))
        self.spm = SpatialPriorModule(conv_inplane, dim)
        self.interactions = nn.Sequential(*[
            InteractionBlock(dim, deform_num_heads, n_points, deform_ratio, init_values, with_cffn, cffn_ratio,
                             drop_path_rate, extra_extractor=use_extra_extractor and i == len(groups) - 1)
            for i in range(len(groups))])
        self.up = nn.ConvTranspose2d(dim, dim, 2, 2)
        self.norm1, self.norm2, self.norm3, self.norm4 = (nn.BatchNorm2d(dim) for _ in range(4))
        self.apply(self._init_weights)
        for m in self.modules():
            if isinstance(m, MSDeformAttn):
                m.reset_parameters()
        nn.init.normal_(self.level_embed)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        """The original's: Linear and LayerNorm as the backbone's, BatchNorm 1 / 0, convs normal(0,
        sqrt(2 / fan_out)) with zero bias."""
        VisionRWKVBase._init_weights(m)
        if isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
            nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    @staticmethod
    def geometry(height: int, width: int, device: torch.device) -> _Geometry:
        """Token layout for an input of (height, width), both multiples of 32."""
        levels = [(height // s, width // s) for s in (8, 16, 32)]
        return _Geometry(levels, levels[1], reference_points([levels[1]], device), reference_points(levels, device))

    def forward(self, backbone: nn.Module, img: torch.Tensor) -> list[torch.Tensor]:
        height, width = img.shape[-2:]
        if height % 32 or width % 32:
            raise ValueError(f"the ViT-Adapter neck needs image sides that are multiples of 32, got {height}x{width} "
                             f"(resize with test.size_divisor=32, and crop sizes that are multiples of 32)")
        geo = self.geometry(height, width, img.device)
        c1, c2, c3, c4 = self.spm(img)
        c = torch.cat([c2 + self.level_embed[0], c3 + self.level_embed[1], c4 + self.level_embed[2]], dim=1)
        x, grid = backbone._embed(img)
        if tuple(grid) != geo.grid:
            raise ValueError(f"the ViT-Adapter neck needs a stride-16 backbone; its token grid is {tuple(grid)} "
                             f"for a {height}x{width} input, not {geo.grid}")
        blocks = backbone.blocks
        batch, dim = x.shape[0], x.shape[-1]
        vit_maps = []
        for (first, last), interaction in zip(self.interaction_indexes, self.interactions):
            def run_blocks(t: torch.Tensor, group=blocks[first:last + 1]) -> torch.Tensor:
                for block in group:
                    t = backbone._run_block(block, t, grid)
                return t

            x, c = interaction(x, c, run_blocks, geo)
            vit_maps.append(x.transpose(1, 2).reshape(batch, dim, *grid))
        c2, c3, c4 = (t.transpose(1, 2).reshape(batch, dim, h, w)
                      for t, (h, w) in zip(c.split([h * w for h, w in geo.levels], dim=1), geo.levels))
        feats = [self.up(c2) + c1, c2, c3, c4]
        if self.add_vit_feature:
            scales = (4.0, 2.0, 1.0, 0.5)
            feats = [f + (v if s == 1.0 else F.interpolate(v, scale_factor=s, mode="bilinear", align_corners=False))
                     for f, v, s in zip(feats, vit_maps, scales)]
        return [norm(f) for norm, f in zip((self.norm1, self.norm2, self.norm3, self.norm4), feats)]
