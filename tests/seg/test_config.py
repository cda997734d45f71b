"""Segmentation configs: every shipped config loads against the schema, builds its model, and unknown keys
(in files or overrides) are errors naming the key."""
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from vision_rwkv.engine import ConfigError
from vision_rwkv.seg import SegConfig, load_seg_config
from vision_rwkv.seg.train import build_segmentor

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "segmentation"
TOP_LEVEL = sorted(p for p in CONFIGS.glob("*.yaml"))


def test_default_base_lists_every_schema_key_with_its_default():
    base = OmegaConf.load(CONFIGS / "_base_" / "default.yaml")
    schema = OmegaConf.structured(SegConfig)
    assert OmegaConf.to_container(base) == OmegaConf.to_container(schema)


@pytest.mark.parametrize("path", TOP_LEVEL, ids=lambda p: p.stem)
def test_config_loads_and_builds(path):
    cfg = load_seg_config(path)
    assert cfg.optim.max_iters > 0 and cfg.data.type in ("ade20k", "cityscapes", "folder", "shapes")
    # build the configured backbone family at a toy depth / width (full widths would cost seconds each)
    toy = ["model.backbone_kwargs.depth=2", "+model.backbone_kwargs.embed_dim=32", "model.neck_channels=32",
           "model.decode_channels=16", "model.aux_channels=8"]
    if cfg.model.backbone.startswith("vrwkv6"):
        toy.append("+model.backbone_kwargs.head_size=16")
    small = load_seg_config(path, toy)
    n = len(cfg.model.class_weight) if cfg.model.class_weight is not None else 5
    model = build_segmentor(small, num_classes=n)
    assert model.out_indices == [0, 0, 1, 1] and model.num_classes == n


def test_ade20k_recipe_values():
    t = load_seg_config(CONFIGS / "upernet_vrwkv_tiny_ade20k_512.yaml")
    s = load_seg_config(CONFIGS / "upernet_vrwkv_small_ade20k_512.yaml")
    b = load_seg_config(CONFIGS / "upernet_vrwkv_base_ade20k_512.yaml")
    assert (t.optim.lr, t.optim.layer_decay) == (1.2e-4, 0.95)
    assert (s.optim.lr, s.optim.layer_decay) == (6e-5, 0.85)
    assert (b.optim.lr, b.optim.layer_decay) == (6e-5, 0.8)
    for c in (t, s, b):
        assert c.optim.max_iters == 160000 and c.optim.warmup_iters == 1500 and c.optim.weight_decay == 0.01
        assert list(c.data.crop_size) == [512, 512] and list(c.data.scale) == [2048, 512]
        assert list(c.data.ratio_range) == [0.5, 2.0] and c.data.cat_max_ratio == 0.75
        assert c.test.mode == "slide" and list(c.test.stride) == [341, 341]
        assert c.model.decode_channels == 512 and c.model.aux_weight == 0.4
        assert list(c.model.pool_scales) == [1, 2, 3, 6]
        assert c.data.reduce_zero_label is False and c.data.type == "ade20k"  # ADE20KDataset reduces itself


def test_unknown_keys_are_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"_base_: {CONFIGS / '_base_' / 'default.yaml'}\noptim:\n  lr_typo: 0.1\n")
    with pytest.raises(ConfigError, match="optim.lr_typo"):
        load_seg_config(bad)
    with pytest.raises(ConfigError, match="data.crop"):
        load_seg_config(CONFIGS / "demo_shapes.yaml", ["data.crop=[4,4]"])
    with pytest.raises(ConfigError, match="not found"):
        load_seg_config(tmp_path / "missing.yaml")
    # the backbone's own kwargs are free-form (validated by timm when the model is built)
    cfg = load_seg_config(CONFIGS / "demo_shapes.yaml", ["+model.backbone_kwargs.mlp_ratio=2.0"])
    assert cfg.model.backbone_kwargs.mlp_ratio == 2.0
