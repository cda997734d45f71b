"""Small building blocks shared by the necks and the decode heads."""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from vision_rwkv.ops._validate import is_symbolic

NormLayer = Callable[[int], nn.Module]


class ConvBNReLU(nn.Sequential):
    """Conv2d (no bias) -> norm -> ReLU, the conv module every mmseg head is built from."""

    def __init__(
            self,
            in_chs: int,
            out_chs: int,
            kernel_size: int = 1,
            stride: int = 1,
            norm_layer: NormLayer = nn.BatchNorm2d,
            act: bool = True,
    ):
        super().__init__(
            nn.Conv2d(in_chs, out_chs, kernel_size, stride=stride, padding=kernel_size // 2, bias=False),
            norm_layer(out_chs),
            nn.ReLU(inplace=True) if act else nn.Identity(),
        )


class CeilMaxPool2d(nn.MaxPool2d):
    """Non-overlapping ``kernel_size`` max pooling in ceil mode (a partial last window pools what it covers). With a
    symbolic height or width (torch.export of a dynamic image size), the map is padded with -inf to whole windows
    instead: the same values, without the ceil-mode output-size branch that would specialise the program."""

    def __init__(self, kernel_size: int):
        super().__init__(kernel_size=kernel_size, stride=kernel_size, ceil_mode=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        if not is_symbolic(h, w):
            return super().forward(x)
        k = self.kernel_size
        out_h, out_w = (h + k - 1) // k, (w + k - 1) // k
        x = F.pad(x, (0, out_w * k - w, 0, out_h * k - h), value=float("-inf"))
        return F.max_pool2d(x, k, k)


def _bin_means(n, bins: int, like: torch.Tensor) -> torch.Tensor:
    """(bins, n) matrix of adaptive average pooling over n positions: row i averages positions
    [floor(i n / bins), ceil((i + 1) n / bins)), as ``adaptive_avg_pool2d`` bins them."""
    i = torch.arange(bins, device=like.device)
    start = torch.div(i * n, bins, rounding_mode="floor")
    end = torch.div((i + 1) * n + bins - 1, bins, rounding_mode="floor")
    j = torch.arange(n, device=like.device)[None, :]
    inside = (j >= start[:, None]) & (j < end[:, None])
    return inside.to(like.dtype) / (end - start)[:, None].to(like.dtype)


class AdaptiveAvgPool2d(nn.AdaptiveAvgPool2d):
    """``nn.AdaptiveAvgPool2d``; with a symbolic height or width (torch.export of a dynamic image size) the same bins
    as two averaging matrix products, which trace without branching on the input size."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        if not is_symbolic(h, w):
            return super().forward(x)
        size = self.output_size
        bins_h, bins_w = (size, size) if isinstance(size, int) else size
        if bins_h is None or bins_w is None:
            raise ValueError("a dynamic-size AdaptiveAvgPool2d needs both output sizes")
        b, c = x.shape[:2]
        maps = x.reshape(b * c, h, w)  # (3-D bmms: a broadcast matmul's reshapes guarded the width at a fixed batch)
        rows = _bin_means(h, bins_h, x).expand(b * c, bins_h, h)
        cols = _bin_means(w, bins_w, x).transpose(0, 1).expand(b * c, w, bins_w)
        return torch.bmm(torch.bmm(rows, maps), cols).reshape(b, c, bins_h, bins_w)


def evenly_spaced_indices(num_blocks: int, n: int = 4) -> list[int]:
    """`n` block indices spread evenly over `num_blocks`, ending at the last block (12 blocks -> 2, 5, 8, 11)."""
    if num_blocks < 1:
        raise ValueError("backbone reports no blocks / stages")
    return [max(0, math.ceil((i + 1) * num_blocks / n) - 1) for i in range(n)]
