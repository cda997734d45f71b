"""YAML configs with ``_base_`` inheritance, ``key=value`` overrides and unknown-key errors (omegaconf).

A config file may name one or more base files in ``_base_`` (a string or a list; paths relative to the file).
Bases are merged in order, then the file itself on top. Once a file has a base (or a ``schema`` is given), the
merged result is in *struct mode*: setting a key that the base/schema does not define raises
:class:`ConfigError` naming the key. Nodes whose key ends in ``kwargs`` (e.g. ``model.kwargs``) are open
dictionaries, free to take any key (they are passed through as ``**kwargs``). A command-line override
``+key=value`` adds a new key on purpose; ``key=value`` must name an existing one. ``~key`` deletes a key.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable, Sequence

from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

__all__ = ["ConfigError", "load_config", "apply_overrides", "merge_strict", "save_config", "to_dict"]

BASE_KEY = "_base_"
OPEN_SUFFIX = "kwargs"


class ConfigError(ValueError):
    """A config file or override is invalid (unknown key, missing file, bad syntax)."""


def _open_kwargs_nodes(cfg: Any) -> None:
    """Struct mode everywhere except nodes named ``*kwargs`` (free-form keyword dictionaries)."""
    if isinstance(cfg, DictConfig):
        for key in list(cfg.keys()):
            node = cfg._get_node(key)
            if isinstance(node, DictConfig):
                if str(key).endswith(OPEN_SUFFIX):
                    OmegaConf.set_struct(node, False)
                else:
                    _open_kwargs_nodes(node)
            elif isinstance(node, ListConfig):
                for item in node:
                    _open_kwargs_nodes(item)


def _strict(cfg: DictConfig) -> DictConfig:
    OmegaConf.set_struct(cfg, True)
    _open_kwargs_nodes(cfg)
    return cfg


def _unknown_key_message(err: OmegaConfBaseException, where: str) -> str:
    key = getattr(err, "full_key", None) or getattr(err, "key", None) or str(err)
    return f"unknown config key '{key}' in {where} (not defined by the base config/schema)"


def merge_strict(base: DictConfig, update: DictConfig | dict, where: str = "config") -> DictConfig:
    """Merge ``update`` into ``base``; any key of ``update`` missing from ``base`` raises ConfigError."""
    base = _strict(base)
    try:
        merged = OmegaConf.merge(base, update)
    except (ConfigAttributeError, ConfigKeyError) as err:
        raise ConfigError(_unknown_key_message(err, where)) from None
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


def _load_with_bases(path: Path, stack: tuple[Path, ...] = ()) -> tuple[DictConfig, bool]:
    """Returns (merged config, whether it inherited from a base)."""
    path = path.resolve()
    if path in stack:
        raise ConfigError(f"circular _base_ chain: {' -> '.join(str(p) for p in (*stack, path))}")
    cfg = _read_yaml(path)
    bases = cfg.pop(BASE_KEY, None)
    if bases is None:
        return cfg, False
    if isinstance(bases, str):
        bases = [bases]
    merged: DictConfig | None = None
    for base in bases:
        base_cfg, _ = _load_with_bases((path.parent / str(base)), (*stack, path))
        merged = base_cfg if merged is None else OmegaConf.merge(merged, base_cfg)
    assert merged is not None, f"empty _base_ list in {path}"
    return merge_strict(merged, cfg, where=str(path)), True


def apply_overrides(cfg: DictConfig, overrides: Iterable[str] | None) -> DictConfig:
    """Apply ``key=value`` (existing key), ``+key=value`` (new key) and ``~key`` (delete) overrides in order."""
    cfg = _strict(cfg)
    for item in overrides or ():
        item = item.strip()
        if not item:
            continue
        if item.startswith("~"):
            key = item[1:].split("=", 1)[0]
            parent_key, _, leaf = key.rpartition(".")
            parent = OmegaConf.select(cfg, parent_key) if parent_key else cfg
            if not isinstance(parent, DictConfig) or leaf not in parent:
                raise ConfigError(f"cannot delete unknown config key '{key}'")
            with open_dict(parent):
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
        if add:
            with open_dict(cfg):
                cfg = OmegaConf.merge(cfg, parsed)
            cfg = _strict(cfg)
        else:
            cfg = merge_strict(cfg, parsed, where=f"override {item!r}")
    return cfg


def load_config(path: str | os.PathLike, overrides: Sequence[str] | None = None, schema: Any = None,
                resolve: bool = True) -> DictConfig:
    """Load a YAML config with its ``_base_`` chain, check it against ``schema`` (a dataclass or dict; optional),
    apply command-line ``overrides`` and resolve ``${...}`` interpolations. Unknown keys raise ConfigError."""
    cfg, _ = _load_with_bases(Path(path))
    if schema is not None:
        cfg = merge_strict(OmegaConf.structured(schema) if not isinstance(schema, DictConfig) else schema, cfg,
                           where=str(path))
    cfg = apply_overrides(cfg, overrides)
    if resolve:
        OmegaConf.resolve(cfg)
    return cfg


def save_config(cfg: DictConfig, path: str | os.PathLike) -> Path:
    """Write the resolved config as YAML (atomically) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(OmegaConf.to_yaml(cfg, resolve=True))
    os.replace(tmp, path)
    return path


def to_dict(cfg: Any) -> Any:
    """Plain python containers (dict/list) of a config node, resolved; passes other values through."""
    if isinstance(cfg, (DictConfig, ListConfig)):
        return OmegaConf.to_container(cfg, resolve=True)
    return cfg
