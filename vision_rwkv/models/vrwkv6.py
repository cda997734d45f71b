"""Vision-RWKV v6 backbones (RWKV-6 token mixing), timm-registered.

Written from DESIGN.md §4 (no code from the original repository). Differences from v4: the Q-Shift quarters are
taken inside each head, the token mix uses RWKV-6 data-dependent interpolation ("ddlerp") and per-token decay,
a multi-head bidirectional WKV without normaliser, a GroupNorm over heads (``ln_x``) and a SiLU gate.

The same class is the RWKV-CLIP image tower (embed 640, ``head_size=80``, ``mlp_ratio=5``, patch 32, pre-norm).
"""
from __future__ import annotations

from typing import Any, Optional, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model

from vision_rwkv.ops import bi_wkv6, fused, q_shift

from ._base import VisionRWKVBase
from ._layers import ChannelMix, GridSize, channel_position, channel_ratio, layer_ratios
from .convert import checkpoint_filter_fn

__all__ = ['VRWKV6', 'SpatialMixV6']


class SpatialMixV6(nn.Module):
    """RWKV-6 token mix over a 2-D token grid.

    ``xx = shift(x) - x``; five data-dependent interpolations (w, k, v, r, g) through a rank-``mix_rank`` tanh
    bottleneck; per-token decay ``w = time_decay + tanh(x_w D1) D2`` with per-step ``d = exp(-exp(w))``;
    ``y = BiWKV6(r, k, v, d, u=time_faaaa)``; ``out = W_o(GroupNorm_H(y) * silu(W_g x_g))``.
    """

    def __init__(
            self,
            dim: int,
            layer_id: int,
            num_layers: int,
            head_size: int = 64,
            key_norm: bool = False,
            ln_x_eps: float = 1e-5,
            mix_rank: int = 32,
            decay_rank: int = 64,
    ):
        super().__init__()
        if dim % head_size:
            raise ValueError(f'embed_dim {dim} is not a multiple of head_size {head_size}')
        self.head_size = head_size
        self.num_heads = dim // head_size
        self.mix_rank = mix_rank
        ratio_0_to_1, ratio_1_to_almost0 = layer_ratios(layer_id, num_layers)
        base = channel_ratio(dim)
        self.time_maa_x = nn.Parameter(1.0 - base.pow(ratio_1_to_almost0))
        self.time_maa_w = nn.Parameter(1.0 - base.pow(ratio_1_to_almost0))
        self.time_maa_k = nn.Parameter(1.0 - base.pow(ratio_1_to_almost0))
        self.time_maa_v = nn.Parameter(1.0 - (base.pow(ratio_1_to_almost0) + 0.3 * ratio_0_to_1))
        self.time_maa_r = nn.Parameter(1.0 - base.pow(0.5 * ratio_1_to_almost0))
        self.time_maa_g = nn.Parameter(1.0 - base.pow(0.5 * ratio_1_to_almost0))
        self.time_maa_w1 = nn.Parameter(torch.empty(dim, 5 * mix_rank).uniform_(-1e-4, 1e-4))
        self.time_maa_w2 = nn.Parameter(torch.empty(5, mix_rank, dim).uniform_(-1e-4, 1e-4))
        pos = channel_position(dim)
        self.time_decay = nn.Parameter((-6 + 5 * pos.pow(0.7 + 1.3 * ratio_0_to_1)).float())
        self.time_decay_w1 = nn.Parameter(torch.empty(dim, decay_rank).uniform_(-1e-4, 1e-4))
        self.time_decay_w2 = nn.Parameter(torch.empty(decay_rank, dim).uniform_(-1e-4, 1e-4))
        zigzag = 0.1 * (((torch.arange(dim) + 1) % 3) - 1).double()
        bonus = ratio_0_to_1 * (1 - pos) + zigzag
        self.time_faaaa = nn.Parameter(bonus.float().reshape(self.num_heads, head_size))
        self.receptance = nn.Linear(dim, dim, bias=False)
        self.key = nn.Linear(dim, dim, bias=False)
        self.value = nn.Linear(dim, dim, bias=False)
        self.gate = nn.Linear(dim, dim, bias=False)
        self.key_norm = nn.LayerNorm(dim) if key_norm else None
        self.output = nn.Linear(dim, dim, bias=False)
        self.ln_x = nn.GroupNorm(self.num_heads, dim, eps=ln_x_eps)

    def forward(self, x: torch.Tensor, grid_size: GridSize) -> torch.Tensor:
        if fused.fused_enabled(x):
            return self._forward_fused(x, grid_size)
        batch, num_tokens, dim = x.shape
        heads, head_size = self.num_heads, self.head_size
        xx = q_shift(x, grid_size, head_size) - x
        xxx = x + xx * self.time_maa_x
        m = torch.tanh(xxx @ self.time_maa_w1).view(batch * num_tokens, 5, self.mix_rank).transpose(0, 1)
        m = torch.bmm(m, self.time_maa_w2).view(5, batch, num_tokens, dim)
        mw, mk, mv, mr, mg = m.unbind(dim=0)
        xw = x + xx * (self.time_maa_w + mw)
        xk = x + xx * (self.time_maa_k + mk)
        xv = x + xx * (self.time_maa_v + mv)
        xr = x + xx * (self.time_maa_r + mr)
        xg = x + xx * (self.time_maa_g + mg)
        r = self.receptance(xr)
        k = self.key(xk)
        v = self.value(xv)
        g = F.silu(self.gate(xg))
        w = self.time_decay.float() + (torch.tanh(xw @ self.time_decay_w1) @ self.time_decay_w2).float()
        shape = (batch, num_tokens, heads, head_size)
        y = bi_wkv6(r.view(shape), k.view(shape), v.view(shape), (-torch.exp(w)).view(shape), self.time_faaaa)
        y = y.reshape(batch, num_tokens, dim)
        if self.key_norm is not None:
            y = self.key_norm(y)
        y = self.ln_x(y.reshape(batch * num_tokens, dim)).view(batch, num_tokens, dim)
        return self.output(y * g)

    def _forward_fused(self, x: torch.Tensor, grid_size: GridSize) -> torch.Tensor:
        """Same function with fused kernels: shift + first interpolation in one pass, the five data-dependent
        interpolations with their LoRA up-projection in one pass (x read once, the (5, B, N, C) offsets never
        stored, outputs in the compute dtype), the log decay in one pass and GroupNorm * SiLU(gate) in one pass."""
        batch, num_tokens, dim = x.shape
        heads, head_size = self.num_heads, self.head_size
        dtype = fused.compute_dtype(x)
        xxx = fused.token_shift_mix(x, grid_size, self.time_maa_x[None], None, head_size, out_dtype=dtype)[0]
        lora = torch.tanh(xxx @ self.time_maa_w1)  # (B, N, 5 * mix_rank); its W2 product stays in the kernel
        maa = torch.stack((self.time_maa_w, self.time_maa_k, self.time_maa_v, self.time_maa_r, self.time_maa_g))
        xw, xk, xv, xr, xg = fused.token_shift_mix_lora(x, grid_size, maa, lora, self.time_maa_w2, head_size,
                                                        out_dtype=dtype)
        r = self.receptance(xr)
        k = self.key(xk)
        v = self.value(xv)
        logd = fused.decay_logd(self.time_decay, torch.tanh(xw @ self.time_decay_w1) @ self.time_decay_w2)
        shape = (batch, num_tokens, heads, head_size)
        y = bi_wkv6(r.view(shape), k.view(shape), v.view(shape), logd.view(shape), self.time_faaaa)
        y = y.reshape(batch, num_tokens, dim)
        if self.key_norm is not None:
            y = self.key_norm(y)
        y = fused.group_norm_mul(y, self.gate(xg), heads, self.ln_x.weight, self.ln_x.bias, self.ln_x.eps,
                                 gate_act='silu', out_dtype=dtype)
        return self.output(y)


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
    ):
        if embed_dim % head_size:
            raise ValueError(f'embed_dim {embed_dim} is not a multiple of head_size {head_size}')
        hidden_dim = int(embed_dim * mlp_ratio)

        def mixers(layer_id: int, num_layers: int) -> Tuple[nn.Module, nn.Module]:
            return (
                SpatialMixV6(embed_dim, layer_id, num_layers, head_size, key_norm, ln_x_eps),
                ChannelMix(embed_dim, layer_id, num_layers, hidden_dim, key_norm, head_size=head_size),
            )

        super().__init__(
            mixers, img_size=img_size, patch_size=patch_size, in_chans=in_chans, num_classes=num_classes,
            global_pool=global_pool, embed_dim=embed_dim, depth=depth, post_norm=post_norm,
            init_values=init_values, final_norm=final_norm, drop_rate=drop_rate, pos_drop_rate=pos_drop_rate,
            drop_path_rate=drop_path_rate, head_hidden_size=head_hidden_size, pos_embed_grid=pos_embed_grid)
        self.family = 'vrwkv6'
        self.head_size = head_size


def _cfg(file: str = '', **kwargs: Any) -> dict:
    return {
        'hf_hub_id': 'OpenGVLab/Vision-RWKV', 'hf_hub_filename': file,
        'num_classes': 1000, 'input_size': (3, 224, 224), 'pool_size': None,
        'crop_pct': 0.875, 'interpolation': 'bicubic',
        'mean': IMAGENET_DEFAULT_MEAN, 'std': IMAGENET_DEFAULT_STD,
        'first_conv': 'patch_embed.proj', 'classifier': 'head',
        'paper_ids': 'arXiv:2403.02308',
        'paper_name': 'Vision-RWKV: Efficient and Scalable Visual Perception with RWKV-Like Architectures',
        'origin_url': 'https://github.com/OpenGVLab/Vision-RWKV', 'license': 'apache-2.0',
        **kwargs,
    }


default_cfgs = generate_default_cfgs({
    'vrwkv6_tiny_patch16_224.in1k': _cfg('vrwkv6_t_in1k_224.pth'),
    'vrwkv6_small_patch16_224.in1k': _cfg('vrwkv6_s_in1k_224.pth'),
    'vrwkv6_base_patch16_224.in1k': _cfg('vrwkv6_b_in1k_224.pth'),
})


def _create_vrwkv6(variant: str, pretrained: bool = False, **kwargs: Any) -> VRWKV6:
    out_indices = kwargs.pop('out_indices', 3)
    return build_model_with_cfg(
        VRWKV6, variant, pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=out_indices, feature_cls='getter'),
        **kwargs,
    )


@register_model
def vrwkv6_tiny_patch16_224(pretrained: bool = False, **kwargs: Any) -> VRWKV6:
    """VRWKV6-T: C 192 (3 heads of 64), 12 blocks, pre-norm, no layer scale."""
    model_args = dict(patch_size=16, embed_dim=192, depth=12, head_size=64)
    return _create_vrwkv6('vrwkv6_tiny_patch16_224', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def vrwkv6_small_patch16_224(pretrained: bool = False, **kwargs: Any) -> VRWKV6:
    """VRWKV6-S: C 384 (6 heads of 64), 12 blocks, post-norm, layer scale 1e-5, drop path 0.3."""
    model_args = dict(
        patch_size=16, embed_dim=384, depth=12, head_size=64, post_norm=True, init_values=1e-5, drop_path_rate=0.3)
    return _create_vrwkv6('vrwkv6_small_patch16_224', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def vrwkv6_base_patch16_224(pretrained: bool = False, **kwargs: Any) -> VRWKV6:
    """VRWKV6-B: C 768 (12 heads of 64), 12 blocks, post-norm, layer scale 1e-5, drop path 0.5."""
    model_args = dict(
        patch_size=16, embed_dim=768, depth=12, head_size=64, post_norm=True, init_values=1e-5, drop_path_rate=0.5)
    return _create_vrwkv6('vrwkv6_base_patch16_224', pretrained=pretrained, **dict(model_args, **kwargs))
