"""Test-time inference: whole image or sliding window, optional horizontal flip and multi-scale, outputs resized
to the original image size."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["whole_inference", "slide_inference", "inference", "predict"]


def _pair(v: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(v, int):
        return v, v
    h, w = v
    return int(h), int(w)


def _resize(x: torch.Tensor, size: Sequence[int], align_corners: bool = False) -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=align_corners)


@torch.no_grad()
def whole_inference(model: nn.Module, img: torch.Tensor) -> torch.Tensor:
    """Logits (B, K, H, W) for the whole normalised image batch (B, 3, H, W) in one forward pass."""
    return model(img)


@torch.no_grad()
def slide_inference(model: nn.Module, img: torch.Tensor, crop_size: int | Sequence[int],
                    stride: int | Sequence[int]) -> torch.Tensor:
    """Sliding-window logits (B, K, H, W), as mmseg's ``slide_inference``: windows of `crop_size` every `stride`
    pixels (the last window of a row / column is shifted back to end at the border), each pixel's logits averaged
    over the windows covering it (count-normalised accumulation). Where the image is smaller than the crop, the
    window is clamped to the image (``min(crop, image)`` in that dimension) and the model runs at that smaller size:
    no padding (a size constraint of the model is the test pipeline's ``test.size_divisor``)."""
    ch, cw = _pair(crop_size)
    sh, sw = _pair(stride)
    if sh < 1 or sw < 1 or sh > ch or sw > cw:
        raise ValueError(f"stride {stride} must be in [1, crop size {crop_size}]")
    b, _, h, w = img.shape
    rows = max(h - ch + sh - 1, 0) // sh + 1
    cols = max(w - cw + sw - 1, 0) // sw + 1
    logits = None
    count = img.new_zeros((1, 1, h, w))
    for r in range(rows):
        for c in range(cols):
            y2, x2 = min(r * sh + ch, h), min(c * sw + cw, w)
            y1, x1 = max(y2 - ch, 0), max(x2 - cw, 0)
            out = model(img[:, :, y1:y2, x1:x2]).float()
            if logits is None:
                logits = img.new_zeros((b, out.shape[1], h, w), dtype=torch.float32)
            logits[:, :, y1:y2, x1:x2] += out
            count[:, :, y1:y2, x1:x2] += 1
    assert (count > 0).all(), "sliding windows left pixels uncovered"
    return logits / count


@torch.no_grad()
def inference(
        model: nn.Module,
        img: torch.Tensor,
        out_size: Sequence[int] | None = None,
        mode: str = "whole",
        crop_size: int | Sequence[int] | None = None,
        stride: int | Sequence[int] | None = None,
        flip: bool = False,
        scales: Sequence[float] = (1.0,),
        align_corners: bool = False,
        scaled: Sequence[torch.Tensor] | None = None,
) -> torch.Tensor:
    """Class probabilities (B, K, *out_size): softmax averaged over `scales` x (identity, horizontal flip).

    `img` is the normalised (test-resized) batch; each scale resizes it by that factor - or takes the matching
    batch of `scaled` (one per scale, e.g. :class:`SegTestTransform`'s resizes of the original image, as mmseg's
    multi-scale test) -, runs whole or sliding inference, undoes the flip, and resizes the logits to `out_size`
    (the original image size; default the input size) before the softmax.
    """
    if mode not in ("whole", "slide"):
        raise ValueError(f"inference mode must be 'whole' or 'slide', got {mode!r}")
    if mode == "slide" and (crop_size is None or stride is None):
        raise ValueError("slide inference needs crop_size and stride")
    out_size = tuple(out_size) if out_size is not None else tuple(img.shape[-2:])
    h, w = img.shape[-2:]
    probs = None
    n = 0
    if scaled is not None and len(scaled) != len(scales):
        raise ValueError(f"inference got {len(scaled)} scaled images for {len(scales)} scales")
    for i, s in enumerate(scales):
        if scaled is not None:
            x = scaled[i].to(img.device, img.dtype)
        else:
            x = img if s == 1.0 else _resize(img, (max(1, round(h * s)), max(1, round(w * s))), align_corners)
        for flipped in ((False, True) if flip else (False,)):
            xi = x.flip(-1) if flipped else x
            if mode == "slide":
                logits = slide_inference(model, xi, crop_size, stride)
            else:
                logits = whole_inference(model, xi).float()
            if flipped:
                logits = logits.flip(-1)
            p = _resize(logits, out_size, align_corners).softmax(dim=1)
            probs = p if probs is None else probs + p
            n += 1
    return probs / n


def predict(model: nn.Module, img: torch.Tensor, **kwargs) -> torch.Tensor:
    """Label maps (B, *out_size) int64: argmax of `inference(model, img, **kwargs)`."""
    return inference(model, img, **kwargs).argmax(dim=1)
