"""``torch.compile`` for the training forward (timm's ``--torchcompile``), one switch for every training tool.

The compiled module wraps the (DDP-wrapped) training model; checkpoints, EMA and evaluation keep using the plain
module (:func:`~vision_rwkv.engine.unwrap_model` strips both wrappers), so a run can be resumed with or without
compilation. On the GPU path the WKV and fused kernels are torch custom ops: the compiled graph keeps them whole
and inductor fuses the plain elementwise code around them (and, with ``mode="reduce-overhead"``, replays the step
as CUDA graphs: no per-launch host cost).
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Optional

import torch
from torch import nn

__all__ = ["COMPILE_MODES", "compile_for_training", "ops_cache_tag"]

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def compile_for_training(model: nn.Module, enabled: bool, backend: str = "inductor", mode: Optional[str] = None,
                         where: str = "train") -> nn.Module:
    """``torch.compile(model, backend=backend, mode=mode)`` when ``enabled``, else ``model`` unchanged.

    ``where`` names the config section in errors (``train.compile_backend=...``). Unknown backends and modes, and a
    mode with a backend other than inductor (torch ignores it there), raise ValueError before anything compiles."""
    if not enabled:
        return model
    if mode is not None and mode not in COMPILE_MODES:
        raise ValueError(f"{where}.compile_mode={mode!r} is not a torch.compile mode; expected one of "
                         f"{COMPILE_MODES} or null")
    from torch._dynamo import list_backends

    backends = list_backends(exclude_tags=())
    if backend not in backends:
        raise ValueError(f"{where}.compile_backend={backend!r} is not a torch.compile backend; available: "
                         f"{sorted(backends)}")
    if mode is not None and backend != "inductor":
        raise ValueError(f"{where}.compile_mode={mode!r} applies to the inductor backend only, not {backend!r}")
    tag = ops_cache_tag()
    current = torch.compiler.config.cache_key_tag
    if tag not in current.split("+"):
        torch.compiler.config.cache_key_tag = f"{current}+{tag}" if current else tag
    return torch.compile(model, backend=backend, mode=mode)


def ops_cache_tag() -> str:
    """``vision_rwkv-<hash of the operator sources>``, added to ``torch.compiler.config.cache_key_tag`` by
    :func:`compile_for_training`: torch's compile caches key a graph on the ops it calls, not on how a custom op's
    backward is written, so a graph cached before an update of ``vision_rwkv/ops`` could be replayed against the new
    ops (e.g. a changed backward signature). Direct ``torch.compile`` users can set the same tag themselves."""
    root = Path(__file__).resolve().parents[1] / "ops"
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes())
    return f"vision_rwkv-{digest.hexdigest()[:16]}"
