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


# ------------------------------------------------------------------- schema-first merge (schema -> bases -> file)
from dataclasses import dataclass, field  # noqa: E402
from typing import Any, Dict, List, Optional  # noqa: E402


@dataclass
class _Model:
    name: str = "tiny"
    kwargs: Dict[str, Any] = field(default_factory=dict)
    out_indices: Optional[List[int]] = None
    weights: Optional[List[float]] = None


@dataclass
class _Train:
    lr: float = 0.1
    epochs: int = 1
    resume: Optional[str] = None


@dataclass
class _Schema:
    model: _Model = field(default_factory=_Model)
    train: _Train = field(default_factory=_Train)
    extra: Optional[_Train] = None


def test_schema_then_bases_then_file_then_overrides(tmp_path):
    """A child may set a schema key that its _base_ chain never mentions; later layers win."""
    (tmp_path / "root.yaml").write_text("train:\n  lr: 0.3\n")
    (tmp_path / "mid.yaml").write_text("_base_: root.yaml\ntrain:\n  lr: 0.4\nmodel:\n  name: mid\n")
    (tmp_path / "leaf.yaml").write_text("_base_: mid.yaml\ntrain:\n  epochs: 7\nmodel:\n  kwargs: {depth: 2}\n")
    cfg = load_config(tmp_path / "leaf.yaml", ["train.resume=latest", "+model.kwargs.width=8"], schema=_Schema)
    assert (cfg.train.lr, cfg.train.epochs, cfg.train.resume) == (0.4, 7, "latest")
    assert cfg.model.name == "mid" and dict(cfg.model.kwargs) == {"depth": 2, "width": 8}
    assert cfg.model.out_indices is None
    with pytest.raises(ConfigError, match=r"train\.epohcs.*leaf2\.yaml"):
        (tmp_path / "leaf2.yaml").write_text("_base_: mid.yaml\ntrain:\n  epohcs: 7\n")
        load_config(tmp_path / "leaf2.yaml", schema=_Schema)
    # the schema also checks the root of the chain, naming that file
    (tmp_path / "badroot.yaml").write_text("modle:\n  name: x\n")
    (tmp_path / "child.yaml").write_text("_base_: badroot.yaml\n")
    with pytest.raises(ConfigError, match=r"modle.*badroot\.yaml"):
        load_config(tmp_path / "child.yaml", schema=_Schema)
    # no file at all: the schema defaults (+ overrides)
    assert load_config(None, ["train.lr=0.5"], schema=_Schema).train.lr == 0.5
    with pytest.raises(ConfigError):
        load_config(None)


def test_null_optional_list_and_dict_in_schema(tmp_path):
    """Optional[List[...]] / Optional[dataclass] = None nodes: the strict-mode walk must not iterate them."""
    (tmp_path / "a.yaml").write_text("model:\n  out_indices: [1, 2]\n")
    cfg = load_config(tmp_path / "a.yaml", ["model.weights=[0.5, 1]"], schema=_Schema)
    assert list(cfg.model.out_indices) == [1, 2] and list(cfg.model.weights) == [0.5, 1.0] and cfg.extra is None
    cfg = load_config(tmp_path / "a.yaml", ["model.out_indices=null"], schema=_Schema)
    assert cfg.model.out_indices is None
    (tmp_path / "b.yaml").write_text("{}\n")
    assert load_config(tmp_path / "b.yaml", schema=_Schema).model.weights is None


def test_wrong_value_type_is_a_config_error(tmp_path):
    (tmp_path / "a.yaml").write_text("train:\n  epochs: many\n")
    with pytest.raises(ConfigError, match=r"train\.epochs.*a\.yaml"):
        load_config(tmp_path / "a.yaml", schema=_Schema)
    (tmp_path / "b.yaml").write_text("{}\n")
    with pytest.raises(ConfigError, match=r"model\.out_indices"):
        load_config(tmp_path / "b.yaml", ["model.out_indices=[x]"], schema=_Schema)


def test_sibling_root_bases_add_keys_after_an_inheriting_sibling(cfg_dir):
    """Without a schema the root files define the keys: a root listed after an inheriting base still adds its own."""
    (cfg_dir / "bases" / "opt.yaml").write_text("opt:\n  name: adamw\n")
    (cfg_dir / "combo.yaml").write_text("_base_: [base.yaml, bases/opt.yaml]\nopt:\n  name: sgd\n")
    cfg = load_config(cfg_dir / "combo.yaml")
    assert cfg.opt.name == "sgd" and cfg.train.epochs == 5 and cfg.model.name == "resnet10t"
    with pytest.raises(ConfigError, match=r"opt\.nmae"):
        load_config(cfg_dir / "combo.yaml", ["opt.nmae=x"])


def test_bad_base_value(tmp_path):
    (tmp_path / "a.yaml").write_text("_base_: {x: 1}\n")
    with pytest.raises(ConfigError, match="must be a file name or a list"):
        load_config(tmp_path / "a.yaml")


def test_root_file_values_type_their_keys(cfg_dir):
    """Without a schema the root file's bool / int / float / list values type their keys (null stays allowed, an
    integer is a number): a wrong value fails when the config loads, naming the key."""
    (cfg_dir / "typed.yaml").write_text("a:\n  n: 3\n  x: 0.5\n  flag: false\n  sizes: [1, 2]\n  opt: null\n"
                                        "  kwargs: {depth: 2}\n")
    ok = load_config(cfg_dir / "typed.yaml", ["a.x=2", "a.n=null", "a.opt=hello", "a.kwargs.depth=deep"])
    assert ok.a.x == 2 and ok.a.n is None and ok.a.opt == "hello"
    for override, message in (("a.n=abc", "'a.n' must be an integer"), ("a.n=1.5", "'a.n' must be an integer"),
                              ("a.x=fast", "'a.x' must be a number"), ("a.flag=3", "'a.flag' must be true / false"),
                              ("a.sizes=4", "'a.sizes' must be a list")):
        with pytest.raises(ConfigError, match=message):
            load_config(cfg_dir / "typed.yaml", [override])
    (cfg_dir / "child_typed.yaml").write_text("_base_: typed.yaml\na:\n  n: many\n")
    with pytest.raises(ConfigError, match=r"'a.n' must be an integer \(as in typed.yaml\)"):
        load_config(cfg_dir / "child_typed.yaml")


def test_delete_marker_replaces_an_inherited_kwargs_node(cfg_dir):
    """mmcv's `_delete_: true`: switching the backbone must not keep the old one's keyword arguments."""
    (cfg_dir / "swap.yaml").write_text("_base_: child.yaml\nmodel:\n  name: resnet\n"
                                       "  kwargs: {_delete_: true, width: 3}\n")
    cfg = load_config(cfg_dir / "swap.yaml")
    assert OmegaConf.to_container(cfg.model.kwargs) == {"width": 3} and cfg.model.name == "resnet"
    merged = load_config(cfg_dir / "child.yaml", ["model.kwargs={width: 3}"])  # without the marker: merged
    assert OmegaConf.to_container(merged.model.kwargs) == {"depth": 2, "width": 3}
    emptied = load_config(cfg_dir / "child.yaml", ["model.kwargs={_delete_: true}"])
    assert OmegaConf.to_container(emptied.model.kwargs) == {}
    with pytest.raises(ConfigError, match="only \\*kwargs nodes"):
        load_config(cfg_dir / "child.yaml", ["train={_delete_: true, lr: 0.1}"])


def test_deleting_an_open_kwargs_node_empties_it(cfg_dir):
    cfg = load_config(cfg_dir / "child.yaml", ["~model.kwargs", "model.name=resnet18"])
    assert dict(cfg.model.kwargs) == {} and cfg.model.name == "resnet18"
    cfg = load_config(cfg_dir / "child.yaml", ["~model.kwargs", "model.kwargs.depth=3"])
    assert dict(cfg.model.kwargs) == {"depth": 3}


def test_kwargs_key_without_a_space_after_the_colon_is_named(cfg_dir):
    with pytest.raises(ConfigError, match=r"model.kwargs.embed_dim:32 has no value.*'embed_dim: 32'"):
        load_config(cfg_dir / "child.yaml", ["model.kwargs={embed_dim:32}"])
    assert load_config(cfg_dir / "child.yaml", ["model.kwargs={embed_dim: 32}"]).model.kwargs.embed_dim == 32


def test_readme_config_paths_work_outside_a_checkout(tmp_path, monkeypatch):
    """`configs/...` run from a folder that has none (a wheel install) reads the configs installed with the package;
    a config that exists nowhere is still an error naming the path."""
    from vision_rwkv.engine.config import resolve_config_path
    from vision_rwkv.resources import configs_dir
    monkeypatch.chdir(tmp_path)
    path = "configs/classification/demo_shapes.yaml"
    assert resolve_config_path(path) == configs_dir() / "classification" / "demo_shapes.yaml"
    assert load_config(path).model.name == load_config(configs_dir() / "classification" / "demo_shapes.yaml").model.name
    (tmp_path / "configs" / "classification").mkdir(parents=True)  # a local file of that name comes first
    (tmp_path / path).write_text("a: 1\n")
    assert resolve_config_path(path).resolve() == tmp_path / path
    with pytest.raises(ConfigError, match="config file not found: .*/configs/classification/nope.yaml"):
        load_config("configs/classification/nope.yaml")


def test_home_folder_in_values_is_expanded(cfg_dir, monkeypatch):
    """``key=~/path`` reaches the tools unexpanded (the shell expands ``~`` only at the start of a word): the
    loader expands a leading ``~/`` in string values, lists included, and leaves other tildes alone."""
    monkeypatch.setenv("HOME", "/home/someone")
    cfg = load_config(cfg_dir / "child.yaml", ["train.run_dir=~/runs/a", "model.name=a~/b", "+extra.shards=[~/x.tar,y]",
                                                "model.drop=~"])
    assert cfg.train.run_dir == "/home/someone/runs/a" and cfg.model.name == "a~/b" and cfg.model.drop is None
    assert list(cfg.extra.shards) == ["/home/someone/x.tar", "y"]


def test_an_override_with_undecodable_bytes_is_one_config_error(cfg_dir):
    """Under LC_ALL=C with PYTHONUTF8=0 a non-ASCII argument arrives with surrogates, which the YAML parser cannot
    encode: a ConfigError naming the override and the way out, not a UnicodeEncodeError traceback."""
    item = "train.run_dir=/tmp/d" + b"\xc3\xa4".decode("ascii", "surrogateescape")
    with pytest.raises(ConfigError, match="not text in this locale.*UTF-8 locale"):
        load_config(cfg_dir / "child.yaml", [item])


@dataclass
class _Flags:
    compile: bool = False
    channels_last: Optional[bool] = None


@dataclass
class _FlagSchema:
    train: _Flags = field(default_factory=_Flags)


@pytest.mark.parametrize("schema", [None, _FlagSchema])
def test_true_false_keys_take_1_and_0_from_the_command_line(tmp_path, schema):
    """1 / 0 set a true / false key with or without a schema; 2 or 0.5 is an error naming the key (a schema's
    bool node would have taken 2 for true, the root file's typing refused 1)."""
    (tmp_path / "flags.yaml").write_text("train:\n  compile: false\n  channels_last: false\n")
    cfg = load_config(tmp_path / "flags.yaml", ["train.compile=1", "train.channels_last=0"], schema=schema)
    assert cfg.train.compile is True and cfg.train.channels_last is False
    for value in ("2", "0.5", "-1"):
        with pytest.raises(ConfigError, match=rf"'train.compile' must be true / false \(or 1 / 0\), got {value}"):
            load_config(tmp_path / "flags.yaml", [f"train.compile={value}"], schema=schema)
    cfg = load_config(tmp_path / "flags.yaml", ["train.compile=yes"], schema=schema)  # (YAML's words stay)
    assert cfg.train.compile is True
