"""Small building blocks shared by the necks and the decode heads."""
from __future__ import annotations

import math
from typing import Callable

import torch.nn as nn

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


def evenly_spaced_indices(num_blocks: int, n: int = 4) -> list[int]:
    """`n` block indices spread evenly over `num_blocks`, ending at the last block (12 blocks -> 2, 5, 8, 11)."""
    if num_blocks < 1:
        raise ValueError("backbone reports no blocks / stages")
    return [max(0, math.ceil((i + 1) * num_blocks / n) - 1) for i in range(n)]
