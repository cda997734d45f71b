"""Weight decay in the three trainers' optimizers (classification, segmentation, CLIP) follows timm's rule: none on
1-D parameters (norms, layer scales), biases and the model's ``no_weight_decay()`` names (pos_embed and every
VRWKV decay / bonus / token-mix parameter, including VRWKV6's 2-D low-rank ``time_*_w1/w2``); decay on the rest."""
from pathlib import Path

import pytest
import timm
import torch

import vision_rwkv  # noqa: F401

DEMO = Path(__file__).resolve().parents[2] / "configs" / "classification" / "demo_shapes.yaml"
BACKBONES = {"vrwkv_tiny_patch16_224": {}, "vrwkv6_tiny_patch16_224": {"head_size": 16}}


def wrong_decay(model: torch.nn.Module, optimizer: torch.optim.Optimizer, no_wd: set[str]) -> list[str]:
    """Names of parameters whose weight decay breaks the rule (or that the optimizer does not hold)."""
    wd_of = {id(p): g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}
    bad = []
    for name, p in model.named_parameters():
        exempt = p.ndim <= 1 or name.endswith(".bias") or name in no_wd
        wd = wd_of.get(id(p))
        if wd is None or (exempt and wd != 0.0) or (not exempt and wd <= 0.0):
            bad.append(name)
    return bad


def _exempt_2d(no_wd: set[str], model: torch.nn.Module) -> set[str]:
    return {n for n, p in model.named_parameters() if n in no_wd and p.ndim >= 2}


def test_the_check_catches_a_naive_optimizer():
    model = timm.create_model("vrwkv6_tiny_patch16_224", img_size=16, patch_size=4, embed_dim=32, depth=1,
                              head_size=16, num_classes=3)
    naive = torch.optim.AdamW(model.parameters(), weight_decay=0.05)
    bad = set(wrong_decay(model, naive, model.no_weight_decay()))
    assert {"pos_embed", "blocks.0.spatial_mix.time_maa_w1", "norm.weight", "head.bias"} <= bad


@pytest.mark.parametrize("layer_decay", [None, 0.8])
@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_classification_optimizer(name, layer_decay):
    from vision_rwkv.engine import load_config
    from vision_rwkv.engine.classification import build_optimizer
    cfg = load_config(DEMO, [f"optim.layer_decay={'null' if layer_decay is None else layer_decay}",
                             "optim.weight_decay=0.05"])
    model = timm.create_model(name, img_size=16, patch_size=4, embed_dim=32, depth=2, num_classes=3,
                              init_values=1e-5, **BACKBONES[name])
    no_wd = set(model.no_weight_decay())
    assert "pos_embed" in no_wd and _exempt_2d(no_wd, model) >= {"pos_embed"}
    if name.startswith("vrwkv6"):
        assert {"blocks.0.spatial_mix.time_maa_w1", "blocks.0.spatial_mix.time_decay_w1"} <= no_wd
    assert wrong_decay(model, build_optimizer(cfg, model, lr=1e-3), no_wd) == []


@pytest.mark.parametrize("layer_decay", [None, 0.8])
@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_segmentation_optimizer(name, layer_decay):
    from vision_rwkv.seg import create_segmentor
    from vision_rwkv.seg.optim import build_optimizer
    backbone_kwargs = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, **BACKBONES[name])
    model = create_segmentor(dict(backbone=name, backbone_kwargs=backbone_kwargs, neck_channels=16, decode_channels=8,
                                  aux_channels=8), num_classes=3)
    no_wd = {"backbone." + n for n in model.backbone.no_weight_decay()}
    opt = build_optimizer(model, lr=1e-3, weight_decay=0.05, layer_decay=layer_decay)
    assert wrong_decay(model, opt, no_wd) == []


def test_clip_optimizer():
    import rwkv_clip
    from rwkv_clip.train import build_optimizer, load_clip_config
    model = rwkv_clip.create_model(
        "RWKV-CLIP-Tiny-demo", embed_dim=32,
        vision_cfg=dict(embed_dim=32, depth=1, image_size=16, patch_size=4, head_size=16, mlp_ratio=2.0),
        text_cfg=dict(width=32, layers=1, head_size=16, hidden_dim=64, context_length=16))
    no_wd = set(model.no_weight_decay())
    assert "logit_scale" in no_wd and "visual.trunk.pos_embed" in no_wd
    assert any(n.startswith("text.") for n in _exempt_2d(no_wd, model))  # the text tower's 2-D time_* params
    assert wrong_decay(model, build_optimizer(model, load_clip_config(None).optim), no_wd) == []
