"""Poly + warm-up schedule, layer-wise lr decay groups, AdamW construction."""
import pytest
import torch

from vision_rwkv.seg.optim import PolyWarmupLR, build_optimizer, poly_warmup_factor
from vision_rwkv.seg.segmentor import create_segmentor, seg_param_groups


def test_poly_warmup_matches_mmseg_formula():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    sched = PolyWarmupLR(opt, max_iters=100, warmup_iters=10, warmup_ratio=1e-6, power=1.0)
    lrs = [opt.param_groups[0]["lr"]]
    for _ in range(100):
        sched.step()
        lrs.append(opt.param_groups[0]["lr"])
    for it in (0, 5, 9, 10, 50, 99, 100):
        poly = 0.1 * (1 - it / 100)
        expected = poly * (1 - (1 - it / 10) * (1 - 1e-6)) if it < 10 else poly
        assert lrs[it] == pytest.approx(expected, rel=1e-12, abs=1e-15)
    assert lrs[0] == pytest.approx(0.1 * 1e-6)
    assert poly_warmup_factor(10, 100, 10) == pytest.approx(0.9)
    # resume: a fresh scheduler loaded from the state dict continues identically
    opt2 = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    sched2 = PolyWarmupLR(opt2, max_iters=100, warmup_iters=10)
    state = {"last_step": 37}
    sched2.load_state_dict({**sched.state_dict(), **state})
    assert opt2.param_groups[0]["lr"] == pytest.approx(lrs[37])
    with pytest.raises(ValueError):
        PolyWarmupLR(opt, max_iters=10, warmup_iters=20)


def test_layer_decay_groups_follow_group_matcher(tiny_model_cfg):
    model = create_segmentor(tiny_model_cfg(depth=3))
    groups = seg_param_groups(model, weight_decay=0.05, layer_decay=0.5)
    names = {id(p): n for n, p in model.named_parameters()}
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    scale_of = {names[id(p)]: (g["lr_scale"], g["weight_decay"]) for g in groups for p in g["params"]}
    # stem 0, blocks 1..3, heads 4: scale 0.5 ** (4 - layer)
    assert scale_of["backbone.patch_embed.proj.weight"] == (0.5 ** 4, 0.05)
    assert scale_of["backbone.pos_embed"][1] == 0.0  # no_weight_decay() of the backbone
    assert scale_of["backbone.blocks.0.norm1.weight"] == (0.5 ** 3, 0.0)
    assert scale_of["backbone.blocks.2.channel_mix.key.weight"] == (0.5, 0.05)
    assert scale_of["decode_head.conv_seg.weight"] == (1.0, 0.05)
    assert scale_of["decode_head.conv_seg.bias"] == (1.0, 0.0)
    assert scale_of["neck.lateral.0.1.weight"] == (1.0, 0.0)  # BN weight: 1-D, no decay
    opt = build_optimizer(model, lr=1e-3, weight_decay=0.05, layer_decay=0.5)
    for g in opt.param_groups:
        assert g["lr"] == pytest.approx(1e-3 * g["lr_scale"])
    flat = seg_param_groups(model, weight_decay=0.05, layer_decay=None)
    assert {g["lr_scale"] for g in flat} == {1.0}


def test_decay_exempt_rules(tiny_model_cfg):
    """optim.decay_exempt: timm (1-D parameters, biases, no_weight_decay()), norm_bias (norm layers' parameters and
    biases only: mmcv's norm / bias_decay_mult=0) and none (every parameter decays: mmcv without paramwise_cfg)."""
    model = create_segmentor(tiny_model_cfg(depth=2))
    names = {id(p): n for n, p in model.named_parameters()}

    def decay_of(rule):
        groups = seg_param_groups(model, weight_decay=0.05, layer_decay=0.5, decay_exempt=rule)
        assert sum(len(g["params"]) for g in groups) == len(names)
        return {names[id(p)]: g["weight_decay"] for g in groups for p in g["params"]}

    timm_rule, norm_bias, none = decay_of("timm"), decay_of("norm_bias"), decay_of("none")
    assert set(none.values()) == {0.05}
    for name in ("backbone.pos_embed", "backbone.blocks.0.spatial_mix.spatial_decay"):
        assert timm_rule[name] == 0.0 and norm_bias[name] == 0.05
    for name in ("backbone.blocks.0.norm1.weight", "neck.lateral.0.1.weight", "decode_head.conv_seg.bias"):
        assert timm_rule[name] == norm_bias[name] == 0.0
    assert timm_rule["decode_head.conv_seg.weight"] == norm_bias["decode_head.conv_seg.weight"] == 0.05
    opt = build_optimizer(model, lr=1e-3, weight_decay=0.05, decay_exempt="none")
    assert {g["weight_decay"] for g in opt.param_groups} == {0.05}
    with pytest.raises(ValueError, match="decay_exempt must be one of timm, norm_bias, none"):
        seg_param_groups(model, 0.05, decay_exempt="all")


def test_final_norm_trains_at_the_heads_rate(tiny_model_cfg):
    """With model.norm_intermediates the backbone's final norm is used: the original's layer-decay constructor
    gives it the full rate (timm's group_matcher had merged it into the last block: x decay)."""
    model = create_segmentor(tiny_model_cfg(depth=3, norm_intermediates=True))
    groups = seg_param_groups(model, weight_decay=0.05, layer_decay=0.5)
    names = {id(p): n for n, p in model.named_parameters()}
    scale_of = {names[id(p)]: g["lr_scale"] for g in groups for p in g["params"]}
    assert scale_of["backbone.norm.weight"] == scale_of["backbone.norm.bias"] == 1.0
    assert scale_of["backbone.blocks.2.channel_mix.key.weight"] == 0.5
