"""Small building blocks shared by the neck and the decode heads."""
from __future__ import annotations

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
