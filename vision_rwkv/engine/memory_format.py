"""Channels-last memory format for training and evaluation (timm's ``--channels-last``; config keys
``train.channels_last`` and ``eval.channels_last`` / ``test.channels_last``).

:func:`to_channels_last` stores a model's 4-D weights (the patch embedding's convolution, a segmentor's neck and
head convolutions) in channels-last order and makes the model take its 4-D image inputs in that order too, so every
call site (training, evaluation, sliding-window crops) feeds cuDNN's NHWC convolutions without a layout change. The
results are those of the contiguous model up to the convolutions' summation order. A VRWKV backbone's tokens need
no change: a channels-last patch embedding's output flattened to ``(B, H*W, C)`` is already contiguous.

The weights in checkpoint files (model and EMA) stay in the plain (contiguous) layout (:func:`plain_layout`): a
model without the option loads them, and safetensors, which refuses strided tensors, can write them (the optimizer's
moments keep their parameters' layout).
"""
from __future__ import annotations

from typing import Any, Mapping

import torch
import torch.nn as nn

__all__ = ["to_channels_last", "takes_channels_last", "plain_layout"]

_HOOK_ATTR = "_vrwkv_channels_last_hook"


def _channels_last_inputs(module: nn.Module, args: tuple) -> tuple:
    """Forward pre-hook: the 4-D floating-point positional inputs in channels-last order (others unchanged)."""
    return tuple(a.contiguous(memory_format=torch.channels_last)
                 if isinstance(a, torch.Tensor) and a.dim() == 4 and a.is_floating_point() else a for a in args)


def to_channels_last(model: nn.Module) -> nn.Module:
    """``model`` (in place, and returned) with its 4-D parameters and buffers in channels-last order, taking its 4-D
    image inputs in that order (a forward pre-hook, registered once). Call it before wrapping the model (DDP,
    torch.compile, an EMA copy): the wrappers see the converted weights."""
    model.to(memory_format=torch.channels_last)
    if getattr(model, _HOOK_ATTR, None) is None:
        setattr(model, _HOOK_ATTR, model.register_forward_pre_hook(_channels_last_inputs))
    return model


def takes_channels_last(model: nn.Module) -> bool:
    """Whether :func:`to_channels_last` converted ``model`` (its input hook is registered)."""
    return getattr(model, _HOOK_ATTR, None) is not None


def plain_layout(state: Mapping[str, Any]) -> dict[str, Any]:
    """A state dict with every tensor contiguous (a copy only of those that are not: channels-last weights)."""
    return {k: v.contiguous() if isinstance(v, torch.Tensor) else v for k, v in state.items()}
