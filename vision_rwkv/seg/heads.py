"""Decode heads: UperNet (pyramid pooling + FPN) and the FCN auxiliary head, mmseg conventions."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from vision_rwkv.ops._validate import is_symbolic

from .layers import AdaptiveAvgPool2d, ConvBNReLU, NormLayer


def resize(x: torch.Tensor, size: Sequence[int], align_corners: bool = False) -> torch.Tensor:
    """Bilinear resize of an NCHW map to `size` (a no-op when the size already matches; with symbolic sizes - a
    dynamic-size export - always the resize, which is then the identity, so the program takes every size)."""
    if not is_symbolic(*x.shape[-2:], *size) and tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=align_corners)


class PyramidPooling(nn.Module):
    """PSPNet pooling module: adaptive average pools at several grid sizes, 1x1 conv each, upsampled back."""

    def __init__(self, in_chs: int, chs: int, pool_scales: Sequence[int], norm_layer: NormLayer,
                 align_corners: bool = False):
        super().__init__()
        self.align_corners = align_corners
        self.stages = nn.ModuleList(
            nn.Sequential(AdaptiveAvgPool2d(s), ConvBNReLU(in_chs, chs, 1, norm_layer=norm_layer))
            for s in pool_scales)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [resize(stage(x), x.shape[-2:], self.align_corners) for stage in self.stages]


class _SegHead(nn.Module):
    """Shared tail of a decode head: dropout then a 1x1 conv to class logits."""

    def __init__(self, chs: int, num_classes: int, dropout: float):
        super().__init__()
        self.num_classes = num_classes
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.conv_seg = nn.Conv2d(chs, num_classes, kernel_size=1)
        nn.init.normal_(self.conv_seg.weight, std=0.01)
        nn.init.zeros_(self.conv_seg.bias)

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_seg(self.dropout(x))


class UperNetHead(_SegHead):
    """UperNet: PPM on the coarsest level, top-down FPN over all levels, fused at the finest level's resolution.

    Input: a list of NCHW maps from fine to coarse. Output: logits at the finest level's resolution.
    """

    def __init__(
            self,
            in_channels: Sequence[int],
            num_classes: int,
            channels: int = 512,
            pool_scales: Sequence[int] = (1, 2, 3, 6),
            dropout: float = 0.1,
            norm_layer: NormLayer = nn.BatchNorm2d,
            align_corners: bool = False,
    ):
        super().__init__(channels, num_classes, dropout)
        self.align_corners = align_corners
        self.in_channels = list(in_channels)
        self.ppm = PyramidPooling(in_channels[-1], channels, pool_scales, norm_layer, align_corners)
        self.ppm_bottleneck = ConvBNReLU(in_channels[-1] + len(pool_scales) * channels, channels, 3,
                                         norm_layer=norm_layer)
        self.lateral_convs = nn.ModuleList(ConvBNReLU(c, channels, 1, norm_layer=norm_layer)
                                           for c in in_channels[:-1])
        self.fpn_convs = nn.ModuleList(ConvBNReLU(channels, channels, 3, norm_layer=norm_layer)
                                       for _ in in_channels[:-1])
        self.fpn_bottleneck = ConvBNReLU(len(in_channels) * channels, channels, 3, norm_layer=norm_layer)

    def forward(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        if len(feats) != len(self.in_channels):
            raise ValueError(f"UperNet head expects {len(self.in_channels)} levels, got {len(feats)}")
        top = feats[-1]
        laterals = [conv(f) for conv, f in zip(self.lateral_convs, feats[:-1])]
        laterals.append(self.ppm_bottleneck(torch.cat([top, *self.ppm(top)], dim=1)))
        for i in range(len(laterals) - 1, 0, -1):  # top-down pathway
            laterals[i - 1] = laterals[i - 1] + resize(laterals[i], laterals[i - 1].shape[-2:], self.align_corners)
        outs = [conv(lat) for conv, lat in zip(self.fpn_convs, laterals[:-1])]
        outs.append(laterals[-1])
        size = outs[0].shape[-2:]
        fused = self.fpn_bottleneck(torch.cat([resize(o, size, self.align_corners) for o in outs], dim=1))
        return self.classify(fused)


class FCNHead(_SegHead):
    """FCN head on one level: `num_convs` 3x3 conv-BN-ReLU then dropout and a 1x1 classifier (the auxiliary head)."""

    def __init__(
            self,
            in_chs: int,
            num_classes: int,
            channels: int = 256,
            num_convs: int = 1,
            dropout: float = 0.1,
            norm_layer: NormLayer = nn.BatchNorm2d,
    ):
        super().__init__(channels, num_classes, dropout)
        if num_convs < 1:
            raise ValueError("FCN head needs at least one conv")
        self.convs = nn.Sequential(*[ConvBNReLU(in_chs if i == 0 else channels, channels, 3, norm_layer=norm_layer)
                                     for i in range(num_convs)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classify(self.convs(x))
