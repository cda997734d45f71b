"""Parameter counts of the registered configs (built on the meta device) against an analytic count and the
published numbers, and the "fancy" initialisation against the formulas of DESIGN.md §3-§4."""
import math
from decimal import ROUND_HALF_UP, Decimal

import pytest
import timm
import torch

from model_helpers import tiny_model

# published sizes (README / paper): params of backbone + 1000-class head
PUBLISHED_M = {
    'vrwkv_tiny_patch16_224': '6.2', 'vrwkv_small_patch16_224': '23.8', 'vrwkv_base_patch16_224': '93.7',
    'vrwkv_large_patch16_384': '334.9',
    'vrwkv6_tiny_patch16_224': '7.6', 'vrwkv6_small_patch16_224': '27.7', 'vrwkv6_base_patch16_224': '104.9',
}


def analytic_count(name: str) -> int:
    """Parameter count from the architecture description alone (DESIGN.md §3-§4)."""
    v6 = name.startswith('vrwkv6')
    C = {'tiny': 192, 'small': 384, 'base': 768, 'large': 1024}[name.split('_')[1]]
    depth = 24 if 'large' in name else 12
    layer_scale = 'tiny' not in name
    key_norm = 'large' in name
    pos_tokens = 144 if 'large' in name else 196
    hidden = 4 * C
    att = 4 * C * C + 5 * C  # k, v, r, output; decay, first, 3 mixes
    if v6:
        att = 5 * C * C  # r, k, v, gate, output
        att += 6 * C + C * 160 + 5 * 32 * C + C + C * 64 + 64 * C + C  # maa x..g, W1, W2, decay, D1, D2, faaaa
        att += 2 * C  # ln_x
    ffn = 2 * C * hidden + C * C + 2 * C
    if key_norm:
        att += 2 * C
        ffn += 2 * hidden
    block = att + ffn + 4 * C + (2 * C if layer_scale else 0)
    total = depth * block + 2 * C  # + ln0 of block 0
    total += 3 * 16 * 16 * C + C + pos_tokens * C + 2 * C  # patch embed, pos embed, final norm
    if 'large' in name:
        total += C * 3 * C + 3 * C + 3 * C * 1000 + 1000
    else:
        total += C * 1000 + 1000
    return total


@pytest.mark.parametrize('name', list(PUBLISHED_M))
def test_param_counts(name):
    with torch.device('meta'):
        model = timm.create_model(name)
    count = sum(p.numel() for p in model.parameters())
    assert count == analytic_count(name)
    # the published figure is mmcv's params_to_string (2 decimals, in M) rounded again to 1 decimal
    two = Decimal(round(count / 1e6, 2)).quantize(Decimal('0.01'), rounding=ROUND_HALF_UP)
    assert str(two.quantize(Decimal('0.1'), rounding=ROUND_HALF_UP)) == PUBLISHED_M[name]


def test_registered_sizes():
    with torch.device('meta'):
        large = timm.create_model('vrwkv_large_patch16_384')
        small = timm.create_model('vrwkv_small_patch16_224')
        v6b = timm.create_model('vrwkv6_base_patch16_224')
    assert large.pos_grid == (12, 12) and large.pretrained_cfg['input_size'] == (3, 384, 384)
    assert large.pre_logits.fc.out_features == 3072 and isinstance(large.pre_logits.act, torch.nn.Tanh)
    assert large.blocks[5].spatial_mix.key_norm is not None and large.blocks[5].post_norm
    assert large.blocks[0].ls1.gamma.shape == (1024,)
    assert small.blocks[-1].drop_path1.drop_prob == pytest.approx(0.3) and small.blocks[0].post_norm
    assert v6b.blocks[0].spatial_mix.num_heads == 12 and v6b.blocks[-1].drop_path2.drop_prob == pytest.approx(0.5)


def test_clip_image_tower_config():
    """The RWKV-CLIP image tower: embed 640, 8 heads of 80, hidden 3200, patch 32, pre-norm, no layer scale."""
    with torch.device('meta'):
        model = timm.create_model('vrwkv6_base_patch16_224', embed_dim=640, head_size=80, mlp_ratio=5.0,
                                  patch_size=32, post_norm=False, init_values=False, num_classes=0)
    sm = model.blocks[0].spatial_mix
    assert sm.num_heads == 8 and sm.time_faaaa.shape == (8, 80) and sm.ln_x.num_groups == 8
    assert model.blocks[0].channel_mix.key.out_features == 3200
    assert model.pos_embed.shape == (1, 49, 640)
    assert isinstance(model.blocks[0].ls1, torch.nn.Identity) and not model.blocks[0].post_norm
    assert sm.ln_x.eps == 1e-5
    with torch.device('meta'):
        text_like = timm.create_model('vrwkv6_tiny_patch16_224', ln_x_eps=6.4e-4)
    assert text_like.blocks[0].spatial_mix.ln_x.eps == 6.4e-4
    with pytest.raises(ValueError, match='head_size'):
        timm.create_model('vrwkv6_tiny_patch16_224', embed_dim=100, head_size=64)


def test_v4_fancy_init():
    L, C = 4, 12
    model = tiny_model('vrwkv_tiny_patch16_224', embed_dim=C, depth=L)
    c = torch.arange(C, dtype=torch.float64)
    x = c / C
    for i, block in enumerate(model.blocks):
        sm, cm = block.spatial_mix, block.channel_mix
        r01, r10 = i / (L - 1), 1 - i / L
        expect = {
            sm.spatial_decay: -5 + 8 * (c / (C - 1)) ** (0.7 + 1.3 * r01),
            sm.spatial_first: math.log(0.3) + 0.5 * (((c + 1) % 3) - 1),
            sm.spatial_mix_k: x ** r10,
            sm.spatial_mix_v: x ** r10 + 0.3 * r01,
            sm.spatial_mix_r: x ** (0.5 * r10),
            cm.spatial_mix_k: x ** r10,
            cm.spatial_mix_r: x ** r10,
        }
        for param, ref in expect.items():
            assert torch.allclose(param.double(), ref, atol=1e-6), i
    assert torch.count_nonzero(model.pos_embed) == 0
    assert torch.equal(model.blocks[0].norm0.weight, torch.ones(C))
    assert torch.equal(model.norm.bias, torch.zeros(C))


def test_v6_fancy_init():
    L, C, N = 3, 32, 16
    model = tiny_model('vrwkv6_tiny_patch16_224', embed_dim=C, depth=L, head_size=N)
    n = torch.arange(C, dtype=torch.float64)
    x = n / C
    for i, block in enumerate(model.blocks):
        sm = block.spatial_mix
        r01, r10 = i / (L - 1), 1 - i / L
        expect = {
            sm.time_maa_x: 1 - x ** r10, sm.time_maa_w: 1 - x ** r10, sm.time_maa_k: 1 - x ** r10,
            sm.time_maa_v: 1 - (x ** r10 + 0.3 * r01),
            sm.time_maa_r: 1 - x ** (0.5 * r10), sm.time_maa_g: 1 - x ** (0.5 * r10),
            sm.time_decay: -6 + 5 * (n / (C - 1)) ** (0.7 + 1.3 * r01),
            sm.time_faaaa: (r01 * (1 - n / (C - 1)) + 0.1 * (((n + 1) % 3) - 1)).reshape(C // N, N),
        }
        for param, ref in expect.items():
            assert torch.allclose(param.double(), ref, atol=1e-6), i
        for lora in (sm.time_maa_w1, sm.time_maa_w2, sm.time_decay_w1, sm.time_decay_w2):
            assert lora.abs().max() <= 1e-4 and lora.abs().max() > 0
        assert sm.time_maa_w1.shape == (C, 160) and sm.time_maa_w2.shape == (5, 32, C)
        assert sm.time_decay_w1.shape == (C, 64) and sm.time_decay_w2.shape == (64, C)
        assert torch.equal(sm.ln_x.weight, torch.ones(C))


def test_linear_init_and_drop_path():
    torch.manual_seed(0)
    model = timm.create_model('vrwkv_base_patch16_224', embed_dim=256, depth=4)
    w = model.blocks[1].channel_mix.key.weight
    assert abs(w.std().item() - 0.02) < 0.002 and abs(w.mean().item()) < 0.002  # trunc normal std .02
    assert torch.count_nonzero(model.head.bias) == 0
    assert torch.equal(model.blocks[2].ls2.gamma, torch.full((256,), 1e-5))
    assert isinstance(model.blocks[0].drop_path1, torch.nn.Identity)  # linspace(0, rate, depth)[0] == 0
    assert [b.drop_path2.drop_prob for b in model.blocks[1:]] == pytest.approx([0.5 / 3, 1.0 / 3, 0.5])


def test_single_block_model():
    """depth 1 (the original divides by zero in its init there) still builds and runs."""
    model = tiny_model('vrwkv_tiny_patch16_224', depth=1)
    assert torch.isfinite(model.blocks[0].spatial_mix.spatial_decay).all()
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 7)
