"""Multi-level neck: a list of backbone feature maps -> a feature pyramid at chosen scales.

A plain ViT / VRWKV gives every block output at one stride (the patch size). The neck turns four of them into
strides 4/8/16/32: a 1x1 lateral conv per level, a resampling, then a 3x3 conv. Power-of-two scales resample as
ViTDet's simple feature pyramid does (2x2 stride-2 transposed convs to upsample, max pooling to downsample); other
scales (e.g. patch 14 -> stride 4 is x3.5) are resized bilinearly, as mmseg's MultiLevelNeck resizes every level.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .layers import CeilMaxPool2d, ConvBNReLU, NormLayer


class _Interpolate(nn.Module):
    """Bilinear resize by a fixed factor (output size floor(scale * input))."""

    def __init__(self, scale: float):
        super().__init__()
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, scale_factor=self.scale, mode="bilinear", align_corners=False)

    def extra_repr(self) -> str:
        return f"scale={self.scale}"


def _resample(chs: int, scale: float, norm_layer: NormLayer) -> nn.Module:
    """x`scale` resampling: stacked 2x2 stride-2 transposed convs (norm + GELU between them) or max pooling for
    powers of two, a bilinear resize for other factors."""
    if not scale > 0:
        raise ValueError(f"neck scales must be positive, got {scale}")
    if scale == 1:
        return nn.Identity()
    if not math.log2(scale).is_integer():
        return _Interpolate(scale)
    if scale < 1:
        k = int(round(1 / scale))
        return CeilMaxPool2d(k)
    layers = []
    for i in range(int(round(math.log2(scale)))):
        if i > 0:
            layers += [norm_layer(chs), nn.GELU()]
        layers.append(nn.ConvTranspose2d(chs, chs, kernel_size=2, stride=2))
    return nn.Sequential(*layers)


class MultiLevelNeck(nn.Module):
    """Resample each input level by its own scale after a 1x1 lateral conv, then refine with a 3x3 conv-BN-ReLU."""

    def __init__(
            self,
            in_channels: Sequence[int],
            out_channels: int,
            scales: Sequence[float] = (4, 2, 1, 0.5),
            norm_layer: NormLayer = nn.BatchNorm2d,
    ):
        super().__init__()
        if len(in_channels) != len(scales):
            raise ValueError(f"neck got {len(in_channels)} input levels but {len(scales)} scales")
        self.in_channels = list(in_channels)
        self.out_channels = out_channels
        self.scales = [float(s) for s in scales]
        self.lateral = nn.ModuleList(ConvBNReLU(c, out_channels, 1, norm_layer=norm_layer, act=False)
                                     for c in in_channels)
        self.resample = nn.ModuleList(_resample(out_channels, s, norm_layer) for s in self.scales)
        self.fuse = nn.ModuleList(ConvBNReLU(out_channels, out_channels, 3, norm_layer=norm_layer)
                                  for _ in in_channels)

    def min_tokens(self) -> int:
        """The smallest input side (in tokens) for which every output level has at least 2 rows and columns - the
        lower bound of a dynamic-size export, where a level of size 1 would be a special case of the program."""
        need = 2
        for s in self.scales:
            if s < 1:  # max pooling by k (ceil mode): ceil(n / k) >= 2; a bilinear resize: floor(n s) >= 2
                need = max(need, round(1 / s) + 1 if math.log2(s).is_integer() else math.ceil(2 / s))
        return need

    def forward(self, feats: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        if len(feats) != len(self.lateral):
            raise ValueError(f"neck expects {len(self.lateral)} feature maps, got {len(feats)}")
        out = []
        for x, lat, res, fuse in zip(feats, self.lateral, self.resample, self.fuse):
            out.append(fuse(res(lat(x))))
        return out
