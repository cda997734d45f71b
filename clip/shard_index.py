"""A tar shard's samples (its members grouped by key) as flat arrays, and an on-disk cache of them.

Reading a shard's headers and grouping its members takes ~20 us a sample in Python: for a web corpus of 15M samples
that is over five minutes at every start and resume, in every process. The cache keeps each shard's arrays in an
``.npz`` file (no pickles: ``np.load(allow_pickle=False)``) named by a hash of the shard's real path, size and
modification time, so a rewritten shard is indexed anew; a cache file that cannot be read is rebuilt, and a cache
folder that cannot be written only costs the time. Files are written to a temporary name and renamed, so processes
indexing the same shards at once (the ranks of a node) never read a partial file.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import warnings
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from .tar_index import tar_files

__all__ = ["ShardSamples", "shard_samples", "default_index_cache", "index_order"]

_CACHE_VERSION = 1


@dataclass(frozen=True)
class ShardSamples:
    """The samples of one shard: the members of sample i are rows ``starts[i]:starts[i + 1]`` of ``ext`` (an index
    into ``exts``), ``offset`` and ``size`` (of the member's data in the shard). ``incomplete`` counts keys left out
    (no image or no caption); ``problem`` says what was wrong with a damaged shard (None if nothing)."""

    exts: list[str]
    ext: np.ndarray
    offset: np.ndarray
    size: np.ndarray
    starts: np.ndarray
    incomplete: int
    problem: Optional[str]

    def __len__(self) -> int:
        return len(self.starts) - 1


def group_members(files: Sequence[tuple[str, int, int]], problem: Optional[str],
                  image_extensions: Sequence[str]) -> ShardSamples:
    """Group a shard's files by key (the basename up to its first dot, within its folder), in order of each key's
    first member; a key is a sample when it has an image (one of ``image_extensions``) and a caption (an extension
    ending in ``txt``, or ``json``). A repeated extension of a key keeps the last member."""
    groups: dict[str, dict[str, tuple[int, int]]] = {}  # key -> extension -> (offset, size), in file order
    for name, offset, size in files:
        folder, base = os.path.split(name)
        if "." not in base:
            continue
        stem, ext = base.split(".", 1)
        groups.setdefault(f"{folder}/{stem}", {})[ext.lower()] = (offset, size)
    ext_ids: dict[str, int] = {}
    ext, offsets, sizes, starts = [], [], [], [0]
    incomplete = 0
    for g in groups.values():
        if not (any(e in g for e in image_extensions) and (any(e.endswith("txt") for e in g) or "json" in g)):
            incomplete += 1
            continue
        for e, (offset, size) in g.items():
            ext.append(ext_ids.setdefault(e, len(ext_ids)))
            offsets.append(offset)
            sizes.append(size)
        starts.append(len(ext))
    return ShardSamples(list(ext_ids), np.array(ext, dtype=np.int32), np.array(offsets, dtype=np.int64),
                        np.array(sizes, dtype=np.int64), np.array(starts, dtype=np.int64), incomplete, problem)


def default_index_cache() -> str:
    """``$XDG_CACHE_HOME/vision_rwkv/tar_index`` (``~/.cache/...`` when unset)."""
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(root, "vision_rwkv", "tar_index")


def shard_samples(shard: str, image_extensions: Sequence[str], cache_dir: Optional[str] = None) -> ShardSamples:
    """The samples of ``shard``, from ``cache_dir`` when it holds them for this version of the file (and written
    there when it does not); ``cache_dir=None`` always reads the shard."""
    path = _cache_path(shard, image_extensions, cache_dir) if cache_dir is not None else None
    samples = _load(path) if path is not None else None
    if samples is None:
        samples = group_members(*tar_files(shard), image_extensions)
        if path is not None:
            _save(samples, path, shard)
    return samples


def index_order(n: int, rank: int, world: int) -> list[int]:
    """The order in which a process indexes ``n`` shards: rank r of a node's ``world`` processes starts at shard
    ``r * n // world`` and wraps around, so that with a cache the ranks index disjoint shards first and then find
    the others' in the cache (no rank waits for another: a shard not cached yet is indexed again)."""
    start = rank * n // world if 0 <= rank < world else 0
    return [(start + i) % n for i in range(n)]


def _cache_path(shard: str, image_extensions: Sequence[str], cache_dir: str) -> str:
    st = os.stat(shard)
    key = "\0".join((str(_CACHE_VERSION), os.path.realpath(shard), str(st.st_size), str(st.st_mtime_ns),
                     ",".join(image_extensions)))
    name = hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()[:32]
    return os.path.join(os.path.expanduser(cache_dir), f"{name}.npz")


def _load(path: str) -> Optional[ShardSamples]:
    """The cached samples at ``path``; None when there are none, or (with a warning) when the file is unreadable."""
    if not os.path.isfile(path):
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            starts = z["starts"]
            s = ShardSamples([str(e) for e in z["exts"]], z["ext"], z["offset"], z["size"], starts,
                             int(z["incomplete"]), str(z["problem"]) if bool(z["has_problem"]) else None)
        rows = len(s.ext)
        if not (len(s.offset) == len(s.size) == rows and len(starts) >= 1 and starts[0] == 0 and starts[-1] == rows
                and np.all(np.diff(starts) > 0) and (rows == 0 or 0 <= s.ext.min() <= s.ext.max() < len(s.exts))):
            raise ValueError("inconsistent arrays")
        return s
    except Exception as err:  # (a truncated or foreign file: zipfile, KeyError, ValueError, ...)
        warnings.warn(f"tar index cache file {path} is unreadable ({type(err).__name__}: {err}); indexing the shard "
                      f"again", stacklevel=3)
        return None


_unwritable: set[str] = set()  # cache folders already warned about


def _save(s: ShardSamples, path: str, shard: str) -> None:
    folder = os.path.dirname(path)
    tmp = None
    try:
        os.makedirs(folder, exist_ok=True)
        tmp = os.path.join(folder, f".tmp-{os.getpid()}-{secrets.token_hex(4)}.npz")
        with open(tmp, "xb") as f:  # (the umask's permissions, so that a shared cache is readable)
            np.savez_compressed(  # (~2 bytes a member: offsets and sizes compress well)
                f, exts=np.array(s.exts, dtype=str), ext=s.ext, offset=s.offset, size=s.size, starts=s.starts,
                incomplete=np.int64(s.incomplete), has_problem=np.bool_(s.problem is not None),
                problem=np.array(s.problem or ""), shard=np.array(os.path.realpath(shard)))
        os.replace(tmp, path)
    except OSError as err:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        if folder not in _unwritable:
            _unwritable.add(folder)
            warnings.warn(f"cannot write the tar index cache in {folder} ({err}); shards are indexed at every "
                          f"start (set another folder, or none, with data.index_cache)", stacklevel=3)
