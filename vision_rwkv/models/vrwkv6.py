"""Vision-RWKV v6 backbones (RWKV-6 token mixing), timm-registered.

Written from the paper's description and the released checkpoints (no code from the original repository). Differences from v4: the Q-Shift quarters are
taken inside each head, the token mix uses RWKV-6 data-dependent interpolation ("ddlerp") and per-token decay,
a multi-head bidirectional WKV without normaliser, a GroupNorm over heads (``ln_x``) and a SiLU gate. The token
and channel mixers are the ones of :mod:`vision_rwkv.models.mixing` (shared with the RWKV-CLIP text tower).

The same class is the RWKV-CLIP image tower (embed 640, ``head_size=80``, ``mlp_ratio=5``, patch 32, pre-norm).
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Tuple, Union

import torch
import torch.nn as nn
from timm.data import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from timm.models import generate_default_cfgs, register_model

from ._base import VisionRWKVBase
from ._factory import build_backbone, hub_cfg
from .mixing import ChannelMix, TimeMixV6

__all__ = ['VRWKV6', 'SpatialMixV6', 'VARIANT_ARGS']


# The VRWKV6 token mix is the shared RWKV-6 time mix with its defaults: per-head 2-D Q-Shift, (C,) vectors and the
# Vision-RWKV init, GroupNorm eps 1e-5, WKV in the activations' dtype.
SpatialMixV6 = TimeMixV6


class VRWKV6(VisionRWKVBase):
    """Vision-RWKV v6 with a global-average-pool classifier.

    Args (beyond :class:`~vision_rwkv.models._base.VisionRWKVBase`):
        head_size: channels per head N (64; 80 in the RWKV-CLIP image tower); embed_dim must be a multiple.
        mlp_ratio: channel-mix hidden width / C (the original ``hidden_rate``; 5 in the RWKV-CLIP image tower).
        key_norm: LayerNorm on the WKV output and on the channel-mix hidden.
        ln_x_eps: eps of the per-head GroupNorm on the WKV output.
    """

    def __init__(
            self,
            img_size: Union[int, Tuple[int, int]] = 224,
            patch_size: Union[int, Tuple[int, int]] = 16,
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: str = 'avg',
            embed_dim: int = 192,
            depth: int = 12,
            head_size: int = 64,
            mlp_ratio: float = 4.0,
            post_norm: bool = False,
            init_values: Optional[float] = None,
            key_norm: bool = False,
            ln_x_eps: float = 1e-5,
            final_norm: bool = True,
            drop_rate: float = 0.0,
            pos_drop_rate: float = 0.0,
            drop_path_rate: float = 0.0,
            head_hidden_size: Optional[int] = None,
            pos_embed_grid: Optional[Union[int, Tuple[int, int]]] = None,
            dynamic_img_size: bool = True,
            dynamic_img_pad: bool = True,
            device: Optional[Union[str, torch.device]] = None,
            dtype: Optional[torch.dtype] = None,
    ):
        if embed_dim % head_size:
            raise ValueError(f'embed_dim {embed_dim} is not a multiple of head_size {head_size}')
        hidden_dim = int(embed_dim * mlp_ratio)

        def mixers(layer_id: int, num_layers: int) -> Tuple[nn.Module, nn.Module]:
            return (
                TimeMixV6(embed_dim, layer_id, num_layers, head_size, key_norm=key_norm, ln_x_eps=ln_x_eps,
                          token_shift='q_shift', param_style='vrwkv6'),
                ChannelMix(embed_dim, layer_id, num_layers, hidden_dim, key_norm, head_size=head_size,
                           token_shift='q_shift', param_style='vrwkv'),
            )

        super().__init__(
            mixers, img_size=img_size, patch_size=patch_size, in_chans=in_chans, num_classes=num_classes,
            global_pool=global_pool, embed_dim=embed_dim, depth=depth, post_norm=post_norm,
            init_values=init_values, final_norm=final_norm, drop_rate=drop_rate, pos_drop_rate=pos_drop_rate,
            drop_path_rate=drop_path_rate, head_hidden_size=head_hidden_size, pos_embed_grid=pos_embed_grid,
            dynamic_img_size=dynamic_img_size, dynamic_img_pad=dynamic_img_pad, device=device, dtype=dtype)
        self.family = 'vrwkv6'
        self.head_size = head_size


def _clip_tower_cfg(**kwargs: Any) -> dict:
    """Pretrained-cfg of an RWKV-CLIP image tower: no classifier, OpenAI CLIP normalisation. Its weights come
    with a whole RWKV-CLIP checkpoint (``rwkv_clip.create_model(..., pretrained=PATH)``), not a timm hub file."""
    return {
        'num_classes': 0, 'input_size': (3, 224, 224), 'pool_size': None, 'crop_pct': 1.0,
        'interpolation': 'bicubic', 'mean': OPENAI_CLIP_MEAN, 'std': OPENAI_CLIP_STD,
        'first_conv': 'patch_embed.proj', 'classifier': 'head',
        'paper_ids': 'arXiv:2406.06973',
        'paper_name': 'RWKV-CLIP: A Robust Vision-Language Representation Learner',
        'origin_url': 'https://github.com/deepglint/RWKV-CLIP', 'license': 'apache-2.0',
        **kwargs,
    }


default_cfgs = generate_default_cfgs({
    'vrwkv6_tiny_patch16_224.in1k': hub_cfg('vrwkv6_t_in1k_224.pth'),
    'vrwkv6_small_patch16_224.in1k': hub_cfg('vrwkv6_s_in1k_224.pth'),
    'vrwkv6_base_patch16_224.in1k': hub_cfg('vrwkv6_b_in1k_224.pth'),
    'vrwkv6_clip_patch32_224': _clip_tower_cfg(),
    'vrwkv6_clip_patch16_224': _clip_tower_cfg(),
})


def _create_vrwkv6(variant: str, pretrained: bool = False, **kwargs: Any) -> VRWKV6:
    return build_backbone(VRWKV6, variant, pretrained, **kwargs)


# the registered models' constructor arguments (their entry points below; the mmcv config converters match them)
VARIANT_ARGS: Dict[str, Dict[str, Any]] = {
    'vrwkv6_tiny_patch16_224': dict(patch_size=16, embed_dim=192, depth=12, head_size=64),
    'vrwkv6_small_patch16_224': dict(
        patch_size=16, embed_dim=384, depth=12, head_size=64, post_norm=True, init_values=1e-5, drop_path_rate=0.3),
    'vrwkv6_base_patch16_224': dict(
        patch_size=16, embed_dim=768, depth=12, head_size=64, post_norm=True, init_values=1e-5, drop_path_rate=0.5),
    'vrwkv6_clip_patch32_224': dict(patch_size=32, embed_dim=640, depth=12, head_size=80, mlp_ratio=5.0),
    'vrwkv6_clip_patch16_224': dict(patch_size=16, embed_dim=640, depth=12, head_size=80, mlp_ratio=5.0),
}


@register_model
def vrwkv6_tiny_patch16_224(pretrained: bool = False, **kwargs: Any) -> VRWKV6:
    """VRWKV6-T: C 192 (3 heads of 64), 12 blocks, pre-norm, no layer scale."""
    model_args = VARIANT_ARGS['vrwkv6_tiny_patch16_224']
    return _create_vrwkv6('vrwkv6_tiny_patch16_224', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def vrwkv6_small_patch16_224(pretrained: bool = False, **kwargs: Any) -> VRWKV6:
    """VRWKV6-S: C 384 (6 heads of 64), 12 blocks, post-norm, layer scale 1e-5, drop path 0.3."""
    model_args = VARIANT_ARGS['vrwkv6_small_patch16_224']
    return _create_vrwkv6('vrwkv6_small_patch16_224', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def vrwkv6_base_patch16_224(pretrained: bool = False, **kwargs: Any) -> VRWKV6:
    """VRWKV6-B: C 768 (12 heads of 64), 12 blocks, post-norm, layer scale 1e-5, drop path 0.5."""
    model_args = VARIANT_ARGS['vrwkv6_base_patch16_224']
    return _create_vrwkv6('vrwkv6_base_patch16_224', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def vrwkv6_clip_patch32_224(pretrained: bool = False, **kwargs: Any) -> VRWKV6:
    """RWKV-CLIP-B/32 image tower: C 640 (8 heads of 80), 12 blocks, hidden 3200, pre-norm, no layer scale,
    patch 32, no classifier (``num_classes=0``: pooled features)."""
    model_args = VARIANT_ARGS['vrwkv6_clip_patch32_224']
    return _create_vrwkv6('vrwkv6_clip_patch32_224', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def vrwkv6_clip_patch16_224(pretrained: bool = False, **kwargs: Any) -> VRWKV6:
    """RWKV-CLIP-B/16 image tower: as ``vrwkv6_clip_patch32_224`` with patch 16."""
    model_args = VARIANT_ARGS['vrwkv6_clip_patch16_224']
    return _create_vrwkv6('vrwkv6_clip_patch16_224', pretrained=pretrained, **dict(model_args, **kwargs))
