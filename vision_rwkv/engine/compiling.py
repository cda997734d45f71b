"""``torch.compile`` for the training forward (timm's ``--torchcompile``), one switch for every training tool.

The compiled module wraps the (DDP-wrapped) training model; checkpoints, EMA and evaluation keep using the plain
module (:func:`~vision_rwkv.engine.unwrap_model` strips both wrappers), so a run can be resumed with or without
compilation. On the GPU path the WKV and fused kernels are torch custom ops: the compiled graph keeps them whole
and inductor fuses the plain elementwise code around them (and, with ``mode="reduce-overhead"``, replays the step
as CUDA graphs: no per-launch host cost).
"""
from __future__ import annotations

import warnings
from typing import Optional

import torch
from torch import nn

from ..ops._cache_tag import ops_cache_tag, tag_compile_caches
from .config import ConfigError

__all__ = ["COMPILE_MODES", "compile_for_training", "ops_cache_tag"]

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def compile_for_training(model: nn.Module, enabled: bool, backend: str = "inductor", mode: Optional[str] = None,
                         where: str = "train") -> nn.Module:
    """``torch.compile(model, backend=backend, mode=mode)`` when ``enabled``, else ``model`` unchanged.

    ``where`` names the config section in errors (``train.compile_backend=...``). Unknown backends and modes, and a
    mode with a backend other than inductor (torch ignores it there), raise :class:`ConfigError` (a ValueError)
    before anything compiles; a CUDA-graph mode for a model off CUDA is a warning."""
    if not enabled:
        return model
    if mode is not None and mode not in COMPILE_MODES:
        raise ConfigError(f"{where}.compile_mode={mode!r} is not a torch.compile mode; expected one of "
                          f"{COMPILE_MODES} or null")
    from torch._dynamo import list_backends

    backends = list_backends(exclude_tags=())
    if backend not in backends:
        raise ConfigError(f"{where}.compile_backend={backend!r} is not a torch.compile backend; available: "
                          f"{sorted(backends)}")
    if mode is not None and backend != "inductor":
        raise ConfigError(f"{where}.compile_mode={mode!r} applies to the inductor backend only, not {backend!r}")
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    if mode == "reduce-overhead" and device.type != "cuda":
        warnings.warn(f"{where}.compile_mode={mode!r} replays CUDA graphs, which need a CUDA device: on {device.type} "
                      f"it compiles as the default mode (and takes longer to); set {where}.compile_mode=null",
                      stacklevel=2)
    tag_compile_caches()  # (done at import of vision_rwkv.ops; again here in case the tag was reset since)
    return torch.compile(model, backend=backend, mode=mode)
