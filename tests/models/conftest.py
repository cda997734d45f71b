"""Helpers for the model tests: tiny registered models (the "tiny" configs with width / depth overridden)."""
import pytest
import timm
import torch

import vision_rwkv  # noqa: F401  (registers the models)

V4_NAMES = ['vrwkv_tiny_patch16_224', 'vrwkv_small_patch16_224', 'vrwkv_base_patch16_224', 'vrwkv_large_patch16_384']
V6_NAMES = ['vrwkv6_tiny_patch16_224', 'vrwkv6_small_patch16_224', 'vrwkv6_base_patch16_224']
ALL_NAMES = V4_NAMES + V6_NAMES

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


@pytest.fixture
def perturb():
    """Add seeded noise to every parameter so nothing sits at an init value (zeros, ones, tiny uniform)."""

    def _perturb(model: torch.nn.Module, scale: float = 0.05, seed: int = 1) -> torch.nn.Module:
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn(p.shape, generator=gen) * scale)
        return model

    return _perturb


@pytest.fixture(autouse=True)
def _single_thread():
    """These tests run tiny ops where intra-op threads only add contention (2 shared cores): use one thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
