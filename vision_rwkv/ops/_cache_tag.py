"""A salt for torch's compile caches: a hash of the operator sources.

torch keys a cached compiled graph (inductor's FX graph cache, AOTAutograd's cache) on the ops the graph calls, not
on how a custom op's backward is written: after this package's operators change (a backward formula, a backward
op's signature), a graph cached before could be replayed against the new code - loudly (a call with the old
arguments) or silently (old gradients). Importing :mod:`vision_rwkv.ops` therefore adds
``vision_rwkv-<hash of vision_rwkv/ops/**/*.py>`` to ``torch.compiler.config.cache_key_tag`` (after any tag already
set, e.g. by ``TORCH_COMPILE_CACHE_KEY_TAG``): caches compiled with other operator sources are not reused.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import torch

__all__ = ["ops_cache_tag", "tag_compile_caches"]

_TAG = None


def ops_cache_tag() -> str:
    """``vision_rwkv-<16 hex digits>``: a hash of every operator source file (path and contents)."""
    global _TAG
    if _TAG is None:
        root = Path(__file__).resolve().parent
        digest = hashlib.sha256()
        for path in sorted(root.rglob("*.py")):
            digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes())
        _TAG = f"vision_rwkv-{digest.hexdigest()[:16]}"
    return _TAG


def tag_compile_caches() -> str:
    """Add :func:`ops_cache_tag` to ``torch.compiler.config.cache_key_tag`` once (idempotent); returns the tag."""
    tag = ops_cache_tag()
    current = torch.compiler.config.cache_key_tag
    if tag not in current.split("+"):
        torch.compiler.config.cache_key_tag = f"{current}+{tag}" if current else tag
    return tag
