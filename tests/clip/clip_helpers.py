"""Helpers shared by the CLIP tests (imported as `clip_helpers`; pytest puts this folder on sys.path)."""
from __future__ import annotations

import io
import tarfile

import numpy as np
import torch
from PIL import Image

TINY_MODEL_KW = dict(
    embed_dim=32,
    vision_cfg=dict(embed_dim=32, depth=1, image_size=16, patch_size=4, head_size=16, mlp_ratio=2.0),
    text_cfg=dict(width=32, layers=1, head_size=16, hidden_dim=64, context_length=16),
)


def tiny_model(**overrides):
    """A random RWKV-CLIP small enough for CPU unit tests (16x16 images, 16 text tokens, width 32)."""
    import rwkv_clip
    kw = {k: (dict(v) if isinstance(v, dict) else v) for k, v in TINY_MODEL_KW.items()}
    for k, v in overrides.items():
        if isinstance(v, dict) and isinstance(kw.get(k), dict):
            kw[k].update(v)
        else:
            kw[k] = v
    return rwkv_clip.create_model("RWKV-CLIP-Tiny-demo", **kw)


def rebuild_fixture_state_dict(fx: dict) -> dict:
    """The rwkvclip fixture's original state dict with the sparse text embedding made dense again."""
    sd = dict(fx["state_dict"])
    for name, sp in fx["sparse_params"].items():
        dense = torch.zeros(list(sp["shape"]), dtype=sp["rows"].dtype)
        dense[sp["indices"]] = sp["rows"]
        sd[name] = dense
    return sd


def png_bytes(value: int, size: int = 8) -> bytes:
    """A size x size PNG of one grey value."""
    buf = io.BytesIO()
    Image.fromarray(np.full((size, size, 3), value, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def write_tar(path, samples) -> None:
    """A tar shard of (member name, bytes) in order."""
    with tarfile.open(path, "w") as tar:
        for name, data in samples:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
