"""vision_rwkv.complexity: parameters and MACs as the papers count them (mmcv's counter + the original repo's WKV
formulas), on the meta device."""
import pytest
import timm
import torch

import vision_rwkv  # noqa: F401  (registers the models)
from vision_rwkv.complexity import count_complexity, v4_wkv_macs, v6_wkv_macs


@pytest.mark.parametrize("name,params_m,gmacs", [
    ("vrwkv_tiny_patch16_224", 6.2, 1.2), ("vrwkv_small_patch16_224", 23.8, 4.6),
    ("vrwkv_base_patch16_224", 93.7, 18.2), ("deit_tiny_patch16_224", 5.7, 1.3),
    ("deit_small_patch16_224", 22.1, 4.6), ("deit_base_patch16_224", 86.6, 17.6),
])
def test_the_papers_numbers_at_224(name, params_m, gmacs):
    """The Vision-RWKV paper's table (and DeiT's): parameters (with the 1000-class head) and FLOPs (MACs) to its
    one decimal (VRWKV-B's 93.645M is its 93.7M)."""
    c = count_complexity(name, 224)
    assert abs(c.params / 1e6 - params_m) < 0.06 and abs(c.total / 1e9 - gmacs) < 0.05
    assert c.tokens == (197 if name.startswith("deit") else 196)


def test_vrwkv_large_at_384_and_linear_growth():
    """VRWKV-L at 384: the paper's 334.9M / 189.5G; the RWKV backbones' MACs grow with the tokens (4x the pixels: 4x
    every term), DeiT's faster (attention's N^2)."""
    large = count_complexity("vrwkv_large_patch16_384", 384)
    assert round(large.params / 1e6, 1) == 334.9 and round(large.total / 1e9, 1) == 189.5
    for name in ("vrwkv_tiny_patch16_224", "vrwkv6_tiny_patch16_224"):
        small, big = count_complexity(name, 256), count_complexity(name, 512)
        assert (big.matmul_macs, big.norm_macs, big.wkv_macs) == \
            (4 * small.matmul_macs, 4 * small.norm_macs, 4 * small.wkv_macs)
    deit = [count_complexity("deit_tiny_patch16_224", s).total for s in (256, 512)]
    assert deit[1] > 5 * deit[0]


def _linear_macs(model, tokens):
    return sum(tokens * m.in_features * m.out_features for m in model.modules() if isinstance(m, torch.nn.Linear))


def test_a_small_v4_model_by_hand():
    """Every term of a 2-block VRWKV counted by hand: the patch convolution, each Linear once per token, the norms'
    elements x 2, and 29 C a token a block for the WKV (its own products are not counted)."""
    kw = dict(img_size=(16, 24), patch_size=4, embed_dim=32, depth=2, num_classes=0)
    c = count_complexity("vrwkv_tiny_patch16_224", (16, 24), **{k: v for k, v in kw.items() if k != "img_size"})
    model = timm.create_model("vrwkv_tiny_patch16_224", **kw)
    tokens = 4 * 6
    conv = tokens * 32 * 3 * 4 * 4
    norms = sum(2 * tokens * 32 for m in model.modules() if isinstance(m, torch.nn.LayerNorm))
    assert c.tokens == tokens and c.params == sum(p.numel() for p in model.parameters())
    assert c.matmul_macs == conv + _linear_macs(model, tokens)
    assert c.norm_macs == norms and c.wkv_macs == 2 * v4_wkv_macs(tokens, 32) == 2 * 29 * tokens * 32


def test_a_small_v6_model_by_hand():
    """RWKV-6: the LoRA products are counted as products (the original's formula has them as 448 C a token), the
    WKV by (7 N + 17) C + 5 r_mix + r_decay a token, the GroupNorm over the heads as a norm."""
    kw = dict(patch_size=8, embed_dim=128, depth=1, num_classes=0)
    c = count_complexity("vrwkv6_tiny_patch16_224", 32, **kw)
    model = timm.create_model("vrwkv6_tiny_patch16_224", img_size=32, **kw)
    tokens = 16
    mixer = next(m for m in model.modules() if hasattr(m, "time_maa_w1"))
    mix, decay = mixer.mix_rank, mixer.time_decay_w1.shape[1]
    lora = tokens * 128 * (10 * mix + 2 * decay)
    conv = tokens * 128 * 3 * 8 * 8
    assert c.matmul_macs == conv + _linear_macs(model, tokens) + lora
    assert c.wkv_macs == v6_wkv_macs(tokens, 128, 64, mix, decay) == tokens * 128 * (7 * 64 + 17) + tokens * (
        5 * mix + decay)
    norms = [m for m in model.modules() if isinstance(m, (torch.nn.LayerNorm, torch.nn.GroupNorm))]
    assert c.norm_macs == sum(2 * tokens * 128 for _ in norms)


def test_batch_and_a_built_model_and_errors():
    """MACs are per image whatever the batch; a built model on the meta device is counted as it is; an unknown
    name is a ValueError naming it."""
    one = count_complexity("vrwkv6_tiny_patch16_224", 64)
    assert count_complexity("vrwkv6_tiny_patch16_224", 64, batch=3).total == one.total
    with torch.device("meta"):
        model = timm.create_model("vrwkv6_tiny_patch16_224", img_size=64)
    assert count_complexity(model, 64).total == one.total
    assert model.blocks[0] is not None  # (the hooks are removed: the model still runs)
    with pytest.raises(ValueError, match="unknown model 'vrwkv_tiyn'"):
        count_complexity("vrwkv_tiyn", 224)


def test_a_given_model_is_left_as_it_was_and_cnns_count():
    """A model passed in keeps its fused attention and its train mode (counting switched them off); a timm model
    without an img_size argument (a CNN) is built without one."""
    model = timm.create_model("deit_tiny_patch16_224", img_size=64, depth=2).train()
    count_complexity(model, 64)
    assert model.training and all(m.fused_attn for m in model.modules() if hasattr(m, "fused_attn"))
    assert abs(count_complexity("resnet18", 224).total / 1e9 - 1.82) < 0.01
