"""Shared helpers of the model tests (a plain module: `conftest` is ambiguous with several conftest.py files)."""
import timm
import torch

import vision_rwkv  # noqa: F401  (registers the models)

V4_NAMES = ['vrwkv_tiny_patch16_224', 'vrwkv_small_patch16_224', 'vrwkv_base_patch16_224', 'vrwkv_large_patch16_384']
V6_NAMES = ['vrwkv6_tiny_patch16_224', 'vrwkv6_small_patch16_224', 'vrwkv6_base_patch16_224']
ALL_NAMES = V4_NAMES + V6_NAMES  # the Vision-RWKV classifiers (one hub file each)
CLIP_TOWER_NAMES = ['vrwkv6_clip_patch32_224', 'vrwkv6_clip_patch16_224']  # RWKV-CLIP image towers

# width / depth small enough for CPU tests, every other setting of the registered config kept
TINY_KW = {
    'vrwkv': dict(embed_dim=32, depth=3),
    'vrwkv6': dict(embed_dim=32, depth=3, head_size=16),
}


def family_of(name: str) -> str:
    return 'vrwkv6' if name.startswith('vrwkv6') else 'vrwkv'


def tiny_model(name: str, **kwargs) -> torch.nn.Module:
    """``timm.create_model(name)`` with a tiny width / depth (plus ``kwargs``)."""
    kw = dict(TINY_KW[family_of(name)], num_classes=7)
    if name == 'vrwkv_large_patch16_384':
        kw['head_hidden_size'] = 48
    kw.update(kwargs)
    return timm.create_model(name, **kw)
