"""Config loading: _base_ inheritance (str and list, relative paths), overrides, unknown-key errors, dump."""
import pytest
from omegaconf import OmegaConf

from vision_rwkv.engine.config import ConfigError, load_config, save_config


@pytest.fixture
def cfg_dir(tmp_path):
    (tmp_path / "bases").mkdir()
    (tmp_path / "bases" / "model.yaml").write_text("model:\n  name: resnet10t\n  kwargs: {}\n  drop: 0.0\n")
    (tmp_path / "bases" / "train.yaml").write_text(
        "train:\n  lr: 0.001\n  epochs: 3\n  run_dir: runs/${model.name}\n  betas: [0.9, 0.999]\n")
    (tmp_path / "base.yaml").write_text("_base_: [bases/model.yaml, bases/train.yaml]\ntrain:\n  epochs: 5\n")
    (tmp_path / "child.yaml").write_text("_base_: base.yaml\nmodel:\n  name: vit\n  kwargs:\n    depth: 2\n")
    return tmp_path


def test_inheritance_chain_and_interpolation(cfg_dir):
    cfg = load_config(cfg_dir / "child.yaml")
    assert cfg.model.name == "vit" and cfg.model.kwargs.depth == 2 and cfg.model.drop == 0.0
    assert cfg.train.epochs == 5 and cfg.train.lr == 0.001
    assert cfg.train.run_dir == "runs/vit"
    assert "_base_" not in cfg


def test_overrides(cfg_dir):
    cfg = load_config(cfg_dir / "child.yaml", ["train.lr=0.5", "model.kwargs.embed_dim=64", "+extra.note=hi",
                                                "train.betas=[0.8,0.9]", "~model.drop"])
    assert cfg.train.lr == 0.5 and cfg.model.kwargs.embed_dim == 64 and cfg.extra.note == "hi"
    assert list(cfg.train.betas) == [0.8, 0.9] and "drop" not in cfg.model


@pytest.mark.parametrize("override,key", [("train.lrr=1", "train.lrr"), ("modle.name=x", "modle")])
def test_unknown_override_key_is_named(cfg_dir, override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(cfg_dir / "child.yaml", [override])


def test_unknown_key_in_child_file_is_named(cfg_dir):
    (cfg_dir / "bad.yaml").write_text("_base_: base.yaml\ntrain:\n  epochz: 2\n")
    with pytest.raises(ConfigError, match=r"train\.epochz"):
        load_config(cfg_dir / "bad.yaml")


def test_missing_files_and_bad_syntax(cfg_dir):
    with pytest.raises(ConfigError, match="not found"):
        load_config(cfg_dir / "nope.yaml")
    (cfg_dir / "orphan.yaml").write_text("_base_: missing_base.yaml\n")
    with pytest.raises(ConfigError, match="missing_base.yaml"):
        load_config(cfg_dir / "orphan.yaml")
    with pytest.raises(ConfigError, match="key=value"):
        load_config(cfg_dir / "child.yaml", ["train.lr"])
    (cfg_dir / "loop.yaml").write_text("_base_: loop.yaml\n")
    with pytest.raises(ConfigError, match="circular"):
        load_config(cfg_dir / "loop.yaml")


def test_schema_checks_root_file(tmp_path):
    from dataclasses import dataclass, field

    @dataclass
    class Train:
        lr: float = 0.1
        epochs: int = 1

    @dataclass
    class Schema:
        train: Train = field(default_factory=Train)

    (tmp_path / "a.yaml").write_text("train:\n  lr: 0.3\n")
    assert load_config(tmp_path / "a.yaml", schema=Schema).train.lr == 0.3
    (tmp_path / "b.yaml").write_text("train:\n  lr_typo: 0.3\n")
    with pytest.raises(ConfigError, match="lr_typo"):
        load_config(tmp_path / "b.yaml", schema=Schema)


def test_save_config_roundtrip(cfg_dir, tmp_path):
    cfg = load_config(cfg_dir / "child.yaml", ["train.lr=0.25"])
    out = save_config(cfg, tmp_path / "run" / "config.yaml")
    again = OmegaConf.load(out)
    assert again.train.lr == 0.25 and again.train.run_dir == "runs/vit"
    assert not list((tmp_path / "run").glob(".*tmp*"))
