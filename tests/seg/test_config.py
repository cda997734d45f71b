"""Segmentation configs: every shipped config loads against the schema, builds its model, and unknown keys
(in files or overrides) are errors naming the key."""
import re
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from vision_rwkv.engine import ConfigError
from vision_rwkv.seg import SegConfig, load_seg_config
from vision_rwkv.seg.train import build_segmentor

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "segmentation"
TOP_LEVEL = sorted(p for p in CONFIGS.glob("*.yaml"))


def test_schema_defaults_under_every_file_of_the_chain(tmp_path):
    """Schema defaults -> bases -> file -> overrides: a file may set any schema key, even one its bases never
    mention (no base has to repeat the schema)."""
    (tmp_path / "base.yaml").write_text("data:\n  batch_size: 4\noptim:\n  lr: 0.5\n")
    (tmp_path / "child.yaml").write_text("_base_: base.yaml\noptim:\n  lr: 0.25\ntrain:\n  keep_last: 7\n"
                                         "model:\n  out_indices: [1, 3]\n")
    cfg = load_seg_config(tmp_path / "child.yaml", ["train.keep_last=9", "model.class_weight=[1, 0.5]"])
    defaults = OmegaConf.structured(SegConfig)
    assert cfg.data.batch_size == 4 and cfg.optim.lr == 0.25 and cfg.train.keep_last == 9
    assert list(cfg.model.out_indices) == [1, 3] and list(cfg.model.class_weight) == [1.0, 0.5]
    assert cfg.optim.max_iters == defaults.optim.max_iters and cfg.test == defaults.test
    # list-typed Optional keys are null by default and can be set back to null
    assert load_seg_config(tmp_path / "child.yaml", ["model.out_indices=null"]).model.out_indices is None
    with pytest.raises(ConfigError, match="train.keep_lats"):
        load_seg_config(tmp_path / "child.yaml", ["train.keep_lats=1"])


def test_root_config_files_list_only_what_differs_from_the_schema():
    """No shipped file restates the whole schema (the old _base_/default.yaml did)."""
    n_schema = len(OmegaConf.to_container(OmegaConf.structured(SegConfig))["data"])
    for path in CONFIGS.rglob("*.yaml"):
        raw = OmegaConf.load(path)
        assert len(raw.get("data", {})) < n_schema, path


@pytest.mark.parametrize("path", TOP_LEVEL, ids=lambda p: p.stem)
def test_config_loads_and_builds(path):
    cfg = load_seg_config(path)
    assert cfg.optim.max_iters > 0 and cfg.data.type in ("ade20k", "cityscapes", "folder", "shapes")
    # build the configured backbone family at a toy depth / width (full widths would cost seconds each)
    toy = ["+model.backbone_kwargs.embed_dim=32", "model.neck_channels=32", "model.decode_channels=16",
           "model.aux_channels=8"]
    if cfg.model.neck == "adapter":  # 4 blocks in 4 groups; heads that divide the toy width
        toy += ["+model.backbone_kwargs.depth=4", "model.adapter.interaction_indexes=[[0,0],[1,1],[2,2],[3,3]]",
                "model.adapter.deform_num_heads=4", "model.adapter.conv_inplane=8"]
    else:
        toy.append("model.backbone_kwargs.depth=2")
    if cfg.model.backbone.startswith("vrwkv6"):
        toy.append("+model.backbone_kwargs.head_size=16")
    small = load_seg_config(path, toy)
    n = len(cfg.model.class_weight) if cfg.model.class_weight is not None else 5
    model = build_segmentor(small, num_classes=n)
    assert model.out_indices == ([0, 1, 2, 3] if cfg.model.neck == "adapter" else [0, 0, 1, 1])
    assert model.num_classes == n


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
    bad.write_text(f"_base_: {CONFIGS / '_base_' / 'ade20k.yaml'}\noptim:\n  lr_typo: 0.1\n")
    with pytest.raises(ConfigError, match=r"optim\.lr_typo.*bad\.yaml"):
        load_seg_config(bad)
    # a root file (no _base_) is checked against the schema too, and the error names that file
    (tmp_path / "root.yaml").write_text("data:\n  batch_sise: 3\n")
    (tmp_path / "leaf.yaml").write_text("_base_: root.yaml\n")
    with pytest.raises(ConfigError, match=r"data\.batch_sise.*root\.yaml"):
        load_seg_config(tmp_path / "leaf.yaml")
    with pytest.raises(ConfigError, match="model.out_indices"):  # typed: a list of ints
        load_seg_config(CONFIGS / "demo_shapes.yaml", ["model.out_indices=[a,b]"])
    with pytest.raises(ConfigError, match="data.crop"):
        load_seg_config(CONFIGS / "demo_shapes.yaml", ["data.crop=[4,4]"])
    with pytest.raises(ConfigError, match="not found"):
        load_seg_config(tmp_path / "missing.yaml")
    # the backbone's own kwargs are free-form (validated by timm when the model is built)
    cfg = load_seg_config(CONFIGS / "demo_shapes.yaml", ["+model.backbone_kwargs.mlp_ratio=2.0"])
    assert cfg.model.backbone_kwargs.mlp_ratio == 2.0


@pytest.mark.parametrize("override, key", [
    (["test.mode=sliding"], "test.mode"),
    (["test.mode=slide", "test.crop_size=[32,32]", "test.stride=[64,64]"], "test.stride"),
    (["test.stride=[0,4]"], "test.stride"),
    (["test.crop_size=[32]"], "test.crop_size"),
    (["test.scales=[]"], "test.scales"),
    (["test.scales=[1.0,-0.5]"], "test.scales"),
    (["test.scale=[512]"], "test.scale"),
    (["data.type=ade"], "data.type"),
    (["data.crop_size=[0,512]"], "data.crop_size"),
    (["model.neck=fpn"], "model.neck"),
    (["model.neck=adapter", "test.size_divisor=32", "data.crop_size=[48,48]"], "data.crop_size=[48"),
    (["model.neck=adapter"], "test.size_divisor=None"),
    (["model.neck=adapter", "test.size_divisor=16"], "test.size_divisor=16"),
    (["model.neck=adapter", "test.size_divisor=32", "test.mode=slide", "test.crop_size=[40,40]", "test.stride=[8,8]"],
     "test.crop_size=[40"),
    (["test.size_divisor=0"], "test.size_divisor"),
    (["optim.max_iters=-3"], "optim.max_iters"),
    (["optim.max_iters=10", "optim.warmup_iters=20"], "optim.warmup_iters"),
    (["optim.lr=0"], "optim.lr"),
    (["data.batch_size=0"], "data.batch_size"),
    (["train.ckpt_every=0"], "train.ckpt_every must be a positive integer or null"),
    (["train.log_every=0"], "train.log_every"),
    (["train.keep_last=-1"], "train.keep_last"),
])
def test_bad_values_fail_when_loaded(override, key):
    """Settings read only by the first evaluation (hours into a run) are checked when the config loads."""
    with pytest.raises(ConfigError, match=re.escape(key)):
        load_seg_config(CONFIGS / "demo_shapes.yaml", override)


def test_adding_a_key_to_a_schema_node_names_the_key_not_a_missing_value():
    """+data.palettex=... said "the config has no value for 'data.palettex' (deleted with ~...?)": the opposite."""
    from vision_rwkv.engine import ConfigError
    with pytest.raises(ConfigError, match=r"unknown config key 'data.palettex'.*only nodes named \*kwargs take new"):
        load_seg_config(CONFIGS / "demo_shapes.yaml", ["+data.palettex=[[0,0,0]]"])
