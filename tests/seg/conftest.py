"""Tiny segmentor configs shared by the segmentation tests (VRWKV backbones of depth 2-4, width 32)."""
import pytest


def _tiny_model_cfg(backbone: str = "vrwkv_tiny_patch16_224", depth: int = 2, width: int = 32, img: int = 32,
                    num_classes: int = 4, **extra):
    kwargs = dict(img_size=img, patch_size=8, depth=depth, embed_dim=width)
    if backbone.startswith("vrwkv6"):
        kwargs["head_size"] = 16
    if backbone.startswith("vit"):
        kwargs.update(num_heads=2, dynamic_img_size=True)
    cfg = dict(backbone=backbone, backbone_kwargs=kwargs, num_classes=num_classes, neck_channels=width,
               decode_channels=32, aux_channels=16)
    cfg.update(extra)
    return cfg


@pytest.fixture
def tiny_model_cfg():
    """Factory: tiny_model_cfg(backbone=..., depth=..., width=..., img=..., num_classes=..., **segmentor kwargs)."""
    return _tiny_model_cfg


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors gain nothing from intra-op threads, and on a shared 2-core machine OpenMP spin-waiting makes
    2 threads many times slower than 1; restore the session's setting afterwards."""
    import torch
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
