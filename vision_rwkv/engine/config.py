"""YAML configs with ``_base_`` inheritance, ``key=value`` overrides and unknown-key errors (omegaconf).

A config file may name one or more base files in ``_base_`` (a string or a list; paths relative to the file).
:func:`config_layers` flattens that chain, bases first (depth-first, in list order), and :func:`load_config`
merges, in this order: the ``schema`` defaults (a dataclass, when given) -> every file of the chain -> the
command-line overrides. Which keys exist is decided by

- the schema, when one is given: every file (root bases included) may set any schema key, and only those;
- otherwise the root files of the chain (files without ``_base_``, e.g. ``configs/classification/base.yaml``):
  they define the keys, every file that has a ``_base_`` may only set keys defined before it.

Setting an undefined key raises :class:`ConfigError` naming the key and the file; without a schema, a root
file's bool / integer / float / list values also type their keys (null allowed). Nodes whose key ends in
``kwargs`` (e.g. ``model.kwargs``) are open dictionaries, free to take any key (they are passed through as
``**kwargs``); such a node with ``_delete_: true`` (mmcv's marker) replaces the inherited one instead of merging
into it. A command-line override ``+key=value`` adds a new key on purpose; ``key=value`` must name an existing one.
``~key`` deletes a key; ``~model.kwargs`` (an open node) empties it, e.g. to build another model from a config
written for VRWKV (``model.name=resnet18 ~model.kwargs``).
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Iterable, Sequence

from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException, ValidationError

__all__ = ["ConfigError", "load_config", "config_layers", "apply_overrides", "override_key", "merge_strict",
           "save_config", "to_dict"]

BASE_KEY = "_base_"
OPEN_SUFFIX = "kwargs"


class ConfigError(ValueError):
    """A config file or override is invalid (unknown key, missing file, bad syntax)."""


def _open_kwargs_nodes(cfg: Any) -> None:
    """Struct mode everywhere except nodes named ``*kwargs`` (free-form keyword dictionaries).

    Walks the raw nodes: a ``None`` / missing container (e.g. a schema's ``Optional[List[int]] = None``) has no
    children, and interpolations are not resolved here."""
    if not isinstance(cfg, (DictConfig, ListConfig)) or cfg._is_none() or cfg._is_missing():
        return
    if isinstance(cfg, DictConfig):
        for key in list(cfg.keys()):
            node = cfg._get_node(key)
            if isinstance(node, DictConfig) and str(key).endswith(OPEN_SUFFIX):
                OmegaConf.set_struct(node, False)
            else:
                _open_kwargs_nodes(node)
    else:
        for index in range(len(cfg)):
            _open_kwargs_nodes(cfg._get_node(index))


def _strict(cfg: DictConfig) -> DictConfig:
    OmegaConf.set_struct(cfg, True)
    _open_kwargs_nodes(cfg)
    return cfg


def _unknown_key_message(err: OmegaConfBaseException, where: str) -> str:
    key = getattr(err, "full_key", None) or getattr(err, "key", None) or str(err)
    return f"unknown config key '{key}' in {where} (not defined by the base config/schema)"


DELETE_KEY = "_delete_"


def _apply_deletes(base: DictConfig, update: Any, where: str, prefix: str = "") -> None:
    """mmcv's ``_delete_: true`` in a ``*kwargs`` node of ``update``: that node replaces the inherited one instead
    of merging into it (e.g. another backbone's ``backbone_kwargs``); the marker is removed from ``update``."""
    if not isinstance(update, (DictConfig, dict)):
        return
    for key in list(update.keys()):
        value = update[key]
        if not isinstance(value, (DictConfig, dict)):
            continue
        name = f"{prefix}{key}"
        if value.get(DELETE_KEY, False):
            if not str(key).endswith(OPEN_SUFFIX):
                raise ConfigError(f"{DELETE_KEY} in '{name}' ({where}): only *kwargs nodes (free-form keyword "
                                  f"dictionaries) can be replaced; the others have a fixed set of keys")
            if isinstance(value, DictConfig):
                with open_dict(value):
                    del value[DELETE_KEY]
            else:
                del value[DELETE_KEY]
            if isinstance(base, DictConfig) and key in base:
                with open_dict(base):
                    base[key] = {}
        elif isinstance(base, DictConfig) and key in base:
            _apply_deletes(base[key], value, where, name + ".")


def merge_strict(base: DictConfig, update: DictConfig | dict, where: str = "config") -> DictConfig:
    """Merge ``update`` into ``base``; any key of ``update`` missing from ``base`` raises ConfigError. A ``*kwargs``
    node of ``update`` marked ``_delete_: true`` replaces the one in ``base``."""
    base = _strict(base)
    _apply_deletes(base, update, where)
    base = _strict(base)  # (a replaced *kwargs node is open again)
    try:
        merged = OmegaConf.merge(base, update)
    except (ConfigAttributeError, ConfigKeyError) as err:
        raise ConfigError(_unknown_key_message(err, where)) from None
    except ValidationError as err:  # a value of the wrong type for a typed (schema) key
        key = getattr(err, "full_key", None) or "?"
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ConfigError(f"invalid value for config key '{key}' in {where}: {reason}") from None
    return _strict(merged)


def _read_yaml(path: Path) -> DictConfig:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        cfg = OmegaConf.load(path)
    except Exception as err:  # yaml syntax errors come in several types
        raise ConfigError(f"cannot parse config {path}: {err}") from err
    if not isinstance(cfg, DictConfig):
        raise ConfigError(f"config {path} must be a mapping at top level")
    return cfg


def config_layers(path: str | os.PathLike) -> list[tuple[Path, DictConfig, bool]]:
    """The ``_base_`` chain of a YAML file as ``(file, its own keys, is_root)`` triples, bases first (depth-first,
    in ``_base_`` list order; paths relative to the including file). ``is_root``: the file has no ``_base_``."""
    return _layers(resolve_config_path(path), ())


def resolve_config_path(path: str | os.PathLike) -> Path:
    """``path``; or, when it does not exist and reads ``configs/...``, the copy installed with the package
    (`vision_rwkv.resources.configs_dir`): the README's config paths also work for a wheel, run outside a checkout."""
    p = Path(path)
    if not p.exists() and not p.is_absolute() and p.parts[:1] == ("configs",):
        from ..resources import configs_dir
        packaged = configs_dir().joinpath(*p.parts[1:])
        if packaged.is_file():
            return packaged
    return p


def _layers(path: Path, stack: tuple[Path, ...]) -> list[tuple[Path, DictConfig, bool]]:
    path = path.resolve()
    if path in stack:
        raise ConfigError(f"circular _base_ chain: {' -> '.join(str(p) for p in (*stack, path))}")
    cfg = _read_yaml(path)
    bases = cfg.pop(BASE_KEY, None)
    if isinstance(bases, str):
        bases = [bases]
    if bases is not None and not (isinstance(bases, (list, ListConfig)) and all(isinstance(b, str) for b in bases)):
        raise ConfigError(f"{BASE_KEY} in {path} must be a file name or a list of file names, got {bases!r}")
    if not bases:
        return [(path, cfg, True)]
    layers: list[tuple[Path, DictConfig, bool]] = []
    for base in bases:
        layers += _layers(path.parent / base, (*stack, path))
    return layers + [(path, cfg, False)]


def override_key(item: str) -> str:
    """The dotted key a ``key=value`` / ``+key=value`` / ``~key`` override names."""
    return item.strip().lstrip("+~").split("=", 1)[0]


def apply_overrides(cfg: DictConfig, overrides: Iterable[str] | None) -> DictConfig:
    """Apply ``key=value`` (existing key), ``+key=value`` (new key) and ``~key`` (delete; an open ``*kwargs`` node
    is emptied instead) overrides in order."""
    cfg = _strict(cfg)
    for item in overrides or ():
        item = item.strip()
        if not item:
            continue
        if item.startswith("~"):
            key = override_key(item)
            parent_key, _, leaf = key.rpartition(".")
            parent = OmegaConf.select(cfg, parent_key) if parent_key else cfg
            if not isinstance(parent, DictConfig) or leaf not in parent:
                raise ConfigError(f"cannot delete unknown config key '{key}'")
            with open_dict(parent):
                if leaf.endswith(OPEN_SUFFIX) and isinstance(parent[leaf], DictConfig):
                    parent[leaf] = {}  # an open **kwargs node is emptied: the tools read it
                else:
                    del parent[leaf]
            continue
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        add = item.startswith("+")
        key, value = item.lstrip("+").split("=", 1)
        try:
            parsed = OmegaConf.from_dotlist([f"{key}={value}"])
        except OmegaConfBaseException as err:
            raise ConfigError(f"cannot parse override {item!r}: {err}") from None
        except UnicodeError:  # (undecodable bytes of the command line: Python under LC_ALL=C with PYTHONUTF8=0)
            raise ConfigError(f"cannot parse override {item!r}: it holds bytes that are not text in this locale's "
                              "encoding; run under a UTF-8 locale (e.g. LC_ALL=C.UTF-8) or without PYTHONUTF8=0"
                              ) from None
        if add:
            _check_addable(cfg, key, item)
            try:
                with open_dict(cfg):
                    cfg = OmegaConf.merge(cfg, parsed)
            except OmegaConfBaseException as err:  # (a schema's node: its keys are fixed)
                raise ConfigError(f"cannot add config key '{key}' ({item!r}): the schema defines the keys of its "
                                  f"nodes, and only nodes named *{OPEN_SUFFIX} take new ones "
                                  f"({str(err).splitlines()[0]})") from None
            cfg = _strict(cfg)
        else:
            cfg = merge_strict(cfg, _bool_from_digit(cfg, key, parsed, item), where=f"override {item!r}")
    return cfg


def _bool_from_digit(cfg: DictConfig, key: str, parsed: DictConfig, item: str) -> DictConfig:
    """An override of a true / false key with 1 or 0 sets true / false (any other number is a ConfigError, where a
    schema would have taken 2 for true and the root file's typing would have refused 1)."""
    from omegaconf.nodes import BooleanNode, ValueNode

    node: Any = cfg
    for part in key.split("."):
        if not isinstance(node, DictConfig) or part not in node:
            return parsed  # (an unknown key: merge_strict names it)
        node = node._get_node(part)
    value = OmegaConf.select(parsed, key)
    is_bool = isinstance(node, BooleanNode) or (isinstance(node, ValueNode) and isinstance(node._value(), bool))
    if not is_bool or isinstance(value, bool) or not isinstance(value, (int, float)):
        return parsed
    if value not in (0, 1):
        raise ConfigError(f"config key '{key}' must be true / false (or 1 / 0), got {value!r} in override {item!r}")
    return OmegaConf.from_dotlist([f"{key}={'true' if value else 'false'}"])


def _check_addable(cfg: DictConfig, key: str, item: str) -> None:
    """``+key=value`` adds a key inside an open ``*kwargs`` node, or a new top-level section (for interpolations);
    a new key in a node the config defines (``+aug.aug_repeats=3``) is a ConfigError: no tool would read it, and
    the run would look configured."""
    parts = key.split(".")
    node: Any = cfg
    for depth, part in enumerate(parts[:-1]):
        if part.endswith(OPEN_SUFFIX):
            return
        if not isinstance(node, DictConfig) or part not in node:
            return  # (a new section from here on, top-level or under one that is new)
        node = node._get_node(part)
        if depth == len(parts) - 2 and isinstance(node, DictConfig) and parts[-1] not in node:
            raise ConfigError(f"unknown config key '{key}' ({item!r}): '{'.'.join(parts[:-1])}' has a fixed set of "
                              f"keys, so no tool would read a new one; only nodes named *{OPEN_SUFFIX} take new keys")


def load_config(path: str | os.PathLike | None, overrides: Sequence[str] | None = None, schema: Any = None,
                resolve: bool = True) -> DictConfig:
    """Load a config: ``schema`` defaults (a dataclass / dict / DictConfig; optional) -> every file of the YAML's
    ``_base_`` chain -> command-line ``overrides``, then resolve ``${...}`` interpolations. With a schema, every
    file may set any schema key; without one, the root files of the chain define the keys (module docstring).
    Unknown keys raise ConfigError naming the key and the file. ``path=None`` (schema only) gives the defaults."""
    if path is None and schema is None:
        raise ConfigError("load_config needs a config path, a schema, or both")
    cfg: DictConfig | None = None
    if schema is not None:
        cfg = _strict(schema.copy() if isinstance(schema, DictConfig) else OmegaConf.structured(schema))
    roots: list[tuple[Path, DictConfig]] = []  # (without a schema they type their keys: _check_types_like)
    for file, layer, is_root in (config_layers(path) if path is not None else ()):
        if is_root and schema is None:
            roots.append((file, layer.copy()))
        if cfg is None:
            cfg = layer
        elif is_root and schema is None:  # another root base (a sibling in a _base_ list) adds its keys
            OmegaConf.set_struct(cfg, False)
            cfg = OmegaConf.merge(cfg, layer)
        else:
            cfg = merge_strict(cfg, layer, where=str(file))
    assert cfg is not None
    cfg = apply_overrides(cfg, overrides)
    _check_open_keys(cfg)
    if resolve:
        OmegaConf.resolve(cfg)
        for file, root in roots:
            _check_types_like(root, cfg, file)
        _expand_home(cfg)
    return cfg


_HOME_PATH = re.compile(r"~[^/\\\s]*[/\\]")  # ~/... or ~user/... (a lone ~ is YAML's null)


def _expand_home(node: Any) -> None:
    """Expand a leading ``~/`` (``~user/``) of every string value, as the shell does for a word but not after
    ``key=`` (``data.train_dir=~/train``), and never in a YAML file or on Windows."""
    for key in list(node.keys() if isinstance(node, DictConfig) else range(len(node))):
        if OmegaConf.is_missing(node, key):
            continue
        value = node[key]
        if isinstance(value, (DictConfig, ListConfig)):
            _expand_home(value)
        elif isinstance(value, str) and _HOME_PATH.match(value):
            node[key] = os.path.expanduser(value)


def _check_open_keys(cfg: Any, prefix: str = "") -> None:
    """An open ``*kwargs`` node's key like ``'embed_dim:32'`` with no value is YAML's reading of ``{embed_dim:32}``
    (no space after the colon): a ConfigError instead of a keyword that is silently dropped as None."""
    if not isinstance(cfg, DictConfig) or cfg._is_none() or cfg._is_missing():
        return
    for key, value in cfg.items_ex(resolve=False):
        name = f"{prefix}{key}"
        if not isinstance(value, DictConfig) or value._is_none() or value._is_missing():
            continue
        if str(key).endswith(OPEN_SUFFIX):
            _check_no_colon_keys(value, name)
        else:
            _check_open_keys(value, name + ".")


def _check_no_colon_keys(node: DictConfig, name: str) -> None:
    """Inside an open node, at any depth (``pretrained_cfg_overlay={file:/path}``): a key ``'a:b'`` with no value."""
    for inner in node.keys():
        child = node._get_node(inner)
        if ":" in str(inner) and child._is_none():
            left, _, right = str(inner).partition(":")
            raise ConfigError(f"{name}.{inner!s} has no value: YAML needs a space after the colon ('{left}: {right}')")
        if isinstance(child, DictConfig) and not child._is_none() and not child._is_missing():
            _check_no_colon_keys(child, f"{name}.{inner}")


def _kind(value: Any) -> str | None:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number" if isinstance(value, float) else "int"
    if isinstance(value, (list, ListConfig)):
        return "list"
    return None


def _check_types_like(root: DictConfig, cfg: DictConfig, file: Path, prefix: str = "") -> None:
    """Without a schema the root file's values type its keys: a key it sets to a bool, an integer, a float or a
    list keeps that kind (null allowed; an integer where a float is), so ``train.epochs=abc`` is a ConfigError
    when the config loads instead of a TypeError deep inside training."""
    for key, default in root.items_ex(resolve=False) if isinstance(root, DictConfig) else ():
        name = f"{prefix}{key}"
        if str(key).endswith(OPEN_SUFFIX) or key not in cfg:
            continue
        value = cfg[key]
        if isinstance(default, DictConfig):
            if isinstance(value, DictConfig):
                _check_types_like(default, value, file, name + ".")
            continue
        want, got = _kind(default), _kind(value)
        if want is None or value is None or got == want or (want == "number" and got == "int"):
            continue
        expected = {"bool": "true / false", "int": "an integer", "number": "a number", "list": "a list"}[want]
        raise ConfigError(f"config key '{name}' must be {expected} (as in {file.name}), got {value!r}")


def save_config(cfg: DictConfig, path: str | os.PathLike) -> Path:
    """Write the resolved config as YAML (atomically) and return the path."""
    from .files import write_text_atomic
    return write_text_atomic(path, OmegaConf.to_yaml(cfg, resolve=True))


def to_dict(cfg: Any) -> Any:
    """Plain python containers (dict/list) of a config node, resolved; passes other values through."""
    if isinstance(cfg, (DictConfig, ListConfig)):
        return OmegaConf.to_container(cfg, resolve=True)
    return cfg
