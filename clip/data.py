"""Image-text data for RWKV-CLIP: CSV/TSV tables and webdataset-style tar shards, several captions per image.

Every dataset here is map-style (index -> sample), so DistributedSampler sharding and exact resume work the same
for all of them. A sample is `{"image": Tensor, "captions": [str, ...], "skipped": int}`; `skipped` counts the
unreadable (missing or corrupt) images that were passed over to produce it: an unreadable image is replaced by
the next readable one (so every batch keeps its size, which DDP's feature gather needs) and counted.

* `CsvCaptionDataset`: a CSV/TSV with an image-path column and one or more caption columns
  (empty cells ignored); relative paths are resolved against `root` (default: the table's folder).
* `TarCaptionDataset`: webdataset-style tar shards (`key.jpg` + `key.txt`, extra caption files such as
  `key.syn.txt`, or `key.json` with a "caption"/"captions" field). The member index is read once from the tar
  headers (`tar_index`: ~6 us a member for plain ustar headers, tarfile for other formats and damaged shards) and
  held in flat arrays (~30 bytes a member), cached per shard with `index_cache` (`shard_index`); samples are then
  read by offset. Shard specs expand as webdataset's:
  `data/shard-{000..009}.tar`, `{a,b}`, `::`-separated lists.
* `ShapesCaptionSamples`: the embedded procedural Shapes captions in the same sample format.
* `RandomCaptionDataset`: per sample, each time it is read, one caption drawn uniformly (the diverse-description
  recipe); under the engine's seeded loader the draw is deterministic in (seed, epoch, sample index).
"""
from __future__ import annotations

import csv
import io
import json
import os
import random
import re
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from vision_rwkv.data.folder import to_rgb
from vision_rwkv.engine.distributed import launch_local_rank, launch_rank, warn_rank0
from vision_rwkv.engine.logger import progress

from .shard_index import ShardSamples, index_order, shard_samples

__all__ = [
    "CsvCaptionDataset", "TarCaptionDataset", "ShapesCaptionSamples", "RandomCaptionDataset", "expand_shards",
    "load_image", "UnreadableImage", "IMAGE_EXTENSIONS",
]

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp", "ppm")
_MAX_FALLBACKS = 64


class UnreadableImage(Exception):
    """An image file that is missing or cannot be decoded."""


def load_image(source: Union[str, Path, bytes], name: str = "") -> Image.Image:
    """Open an image from a path or bytes and convert to RGB; `UnreadableImage` naming it on any failure."""
    try:
        if isinstance(source, (bytes, bytearray)):
            img = Image.open(io.BytesIO(source))
        else:
            img = Image.open(source)
        img.load()
        return to_rgb(img)
    except Exception as e:  # missing file, truncated data, not an image ...
        raise UnreadableImage(f"cannot read image {name or source}: {type(e).__name__}: {e}") from e


class _FallbackDataset(Dataset, ABC):
    """Shared __getitem__: read sample idx; if its image is unreadable, try idx+1, idx+2, ... and count."""

    transform: Optional[Callable]
    skip_unreadable: bool = True

    @abstractmethod
    def __len__(self) -> int:
        """Number of samples."""

    @abstractmethod
    def _read(self, idx: int) -> tuple[Image.Image, list[str]]:
        """Return (image, captions) of sample `idx`; raise UnreadableImage if the image cannot be read."""

    def __getitem__(self, idx: int) -> dict:
        n = len(self)
        for skipped in range(min(_MAX_FALLBACKS, n)):
            try:
                img, captions = self._read((idx + skipped) % n)
            except UnreadableImage:
                if not self.skip_unreadable:
                    raise
                continue
            image = self.transform(img) if self.transform is not None else img
            return {"image": image, "captions": captions, "skipped": skipped, "index": idx}
        raise RuntimeError(f"{type(self).__name__}: {min(_MAX_FALLBACKS, n)} consecutive unreadable images "
                           f"starting at index {idx}; check the data")


def _parse_caption_keys(caption_keys: Union[str, Sequence[str]]) -> list[str]:
    if isinstance(caption_keys, str):
        caption_keys = [k.strip() for k in caption_keys.split(",") if k.strip()]
    keys = list(caption_keys)
    if not keys:
        raise ValueError("at least one caption column is needed")
    return keys


class CsvCaptionDataset(_FallbackDataset):
    """Image-text pairs from a CSV (`sep=","`) or TSV (`sep="\\t"`, default for .tsv files).

    Args:
        path: the table.
        img_key: column with image paths.
        caption_keys: caption column(s): a list or a comma-separated string; empty cells are ignored, a row
            with no caption is an error.
        transform: image transform (e.g. preprocess_train).
        root: folder for relative image paths (default: the table's folder).
        sep: field separator (default from the extension).
        skip_unreadable: replace an unreadable image by the next readable sample and count it (training);
            False raises `UnreadableImage` naming the file (evaluation, where a substitute would skew metrics).
    """

    def __init__(
            self,
            path: Union[str, Path],
            img_key: str = "filepath",
            caption_keys: Union[str, Sequence[str]] = "title",
            transform: Optional[Callable] = None,
            root: Optional[Union[str, Path]] = None,
            sep: Optional[str] = None,
            skip_unreadable: bool = True,
    ):
        path = Path(path)
        self.skip_unreadable = skip_unreadable
        if not path.is_file():
            raise FileNotFoundError(f"caption table not found: {path}")
        if sep is None:
            sep = "\t" if path.suffix.lower() in (".tsv", ".tab") else ","
        self.root = Path(root) if root is not None else path.parent
        self.transform = transform
        keys = _parse_caption_keys(caption_keys)
        # (a BOM, as spreadsheets write it, is not part of the first column's name; in a TSV a quote is an ordinary
        # character, as in CC3M-style tables: an unbalanced one must not swallow the rows after it)
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f, delimiter=sep, quoting=csv.QUOTE_NONE if sep == "\t" else csv.QUOTE_MINIMAL)
            columns = reader.fieldnames or []
            missing = [k for k in [img_key, *keys] if k not in columns]
            if missing:
                raise KeyError(f"{path}: column(s) {missing} not found; columns are {columns}")
            self.images: list[str] = []
            self.captions: list[list[str]] = []
            for row in reader:
                line = reader.line_num
                if row[img_key] is None or not row[img_key].strip():
                    raise ValueError(f"{path} line {line}: no image path in column {img_key!r} (a short row?)")
                caps = [row[k].strip() for k in keys if row[k] is not None and row[k].strip()]
                if not caps:
                    raise ValueError(f"{path} line {line}: no caption in columns {keys}")
                self.images.append(row[img_key].strip())
                self.captions.append(caps)
        if not self.images:
            raise ValueError(f"{path}: no rows")

    def __len__(self) -> int:
        return len(self.images)

    def image_path(self, idx: int) -> Path:
        p = Path(self.images[idx])
        return p if p.is_absolute() else self.root / p

    def _read(self, idx: int) -> tuple[Image.Image, list[str]]:
        return load_image(self.image_path(idx)), self.captions[idx]


def expand_shards(spec: Union[str, Sequence[str]]) -> list[str]:
    """Expand brace patterns as webdataset (braceexpand) does: ranges `a-{000..003}.tar` (zero padded to the wider
    bound when either has a leading zero; descending when the first bound is larger), lists `{a,b}`, several
    braces in one name; `::`-separated specs; lists of such specs."""
    if not isinstance(spec, str):
        return [s for item in spec for s in expand_shards(item)]
    out: list[str] = []
    for part in spec.split("::"):
        m = re.search(r"\{([^{}]*)\}", part)
        if m is None:
            out.append(part)
            continue
        rng = re.fullmatch(r"(\d+)\.\.(\d+)", m.group(1))
        if rng is not None:
            lo, hi = rng.groups()
            width = max(len(lo), len(hi)) if any(b.startswith("0") and b != "0" for b in (lo, hi)) else 0
            step = 1 if int(hi) >= int(lo) else -1
            items = [str(i).zfill(width) for i in range(int(lo), int(hi) + step, step)]
        elif "," in m.group(1):
            items = m.group(1).split(",")
        else:  # a brace that is no pattern ("{abc}") is part of the name
            out.extend(part[: m.end()] + rest for rest in expand_shards(part[m.end():]) or [""])
            continue
        for item in items:
            out.extend(expand_shards(part[: m.start()] + item + part[m.end():]))
    return out


class TarCaptionDataset(_FallbackDataset):
    """webdataset-style tar shards read as a map-style dataset.

    Members are grouped by key (the basename up to its first dot, within the same folder); a sample needs one
    image (`jpg/jpeg/png/webp/bmp/ppm`) and at least one caption: every member whose extension ends with
    `txt` (in order of extension: `key.llm.txt`, `key.syn.txt`, then `key.txt`) and the "caption"/"captions"
    field of a `json` member; training draws one of them uniformly, so the order only fixes `captions[i]`.
    Samples without an image or caption are ignored (and counted in `incomplete`). A damaged shard (a corrupt
    header, truncated, empty, not a tar) is read as far as it can be, with a warning, and listed in `damaged`.
    `index_cache`: a folder where each shard's index is kept for the next start (see `shard_index`; None: none).
    """

    def __init__(self, shards: Union[str, Sequence[str]], transform: Optional[Callable] = None,
                 skip_unreadable: bool = True, index_cache: Optional[str] = None):
        self.skip_unreadable = skip_unreadable
        self.shards = expand_shards(shards)
        if not self.shards:
            raise ValueError("no tar shards given")
        self.transform = transform
        self.damaged: list[str] = []  # "shard: what was wrong" for shards read only in part (or not at all)
        for shard in self.shards:
            if not os.path.isfile(shard):
                raise FileNotFoundError(f"tar shard not found: {shard}")
        # with a cache, the processes of a node index disjoint shards first (`index_order`)
        rank, world = launch_local_rank() if index_cache else (0, 1)
        per_shard: list[Optional[ShardSamples]] = [None] * len(self.shards)
        for si in progress(index_order(len(self.shards), rank, world), desc="indexing tar shards",
                           enabled=len(self.shards) > 1 and rank == 0 and launch_rank() == 0):
            per_shard[si] = shard_samples(self.shards[si], IMAGE_EXTENSIONS, index_cache)
        # the index in flat arrays (~30 bytes a member; dicts of objects took ~750 bytes a sample, and forked data
        # workers copied them page by page as reference counts changed): the members of sample i are
        # [starts[i], starts[i + 1]), each with its shard, extension (an index into `exts`), data offset and size
        ext_ids: dict[str, int] = {}
        shard_col, ext_col, starts, rows = [], [], [np.zeros(1, dtype=np.int64)], 0
        for si, (shard, s) in enumerate(zip(self.shards, per_shard)):
            if s.problem is not None:
                self.damaged.append(f"{shard}: {s.problem}")
                warn_rank0(f"tar shard {shard}: {s.problem}")  # (every rank reads every shard's index)
            shard_col.append(np.full(len(s.ext), si, dtype=np.int32))
            ext_col.append(np.array([ext_ids.setdefault(e, len(ext_ids)) for e in s.exts], dtype=np.int32)[s.ext])
            starts.append(s.starts[1:] + rows)
            rows += len(s.ext)
        self.incomplete = sum(s.incomplete for s in per_shard)
        self._starts = np.concatenate(starts)
        if len(self._starts) == 1:
            raise ValueError(f"no image+caption samples in shards {self.shards[:3]}...")
        self.exts = list(ext_ids)
        self._shard, self._ext = np.concatenate(shard_col), np.concatenate(ext_col)
        self._offset, self._size = (np.concatenate([getattr(s, k) for s in per_shard]) for k in ("offset", "size"))

    def __len__(self) -> int:
        return len(self._starts) - 1

    def members(self, idx: int) -> tuple[str, dict[str, tuple[int, int]]]:
        """Sample `idx`'s shard and its members: extension -> (data offset, size) in the shard."""
        lo, hi = int(self._starts[idx]), int(self._starts[idx + 1])
        rows = zip(self._ext[lo:hi].tolist(), self._offset[lo:hi].tolist(), self._size[lo:hi].tolist())
        return self.shards[int(self._shard[lo])], {self.exts[e]: (o, n) for e, o, n in rows}

    def _read(self, idx: int) -> tuple[Image.Image, list[str]]:
        shard, g = self.members(idx)
        ext = next(e for e in IMAGE_EXTENSIONS if e in g)
        where = f"sample {idx} of {shard}"
        with open(shard, "rb") as f:
            def read(e: str) -> bytes:
                f.seek(g[e][0])
                return f.read(g[e][1])

            try:  # a caption that cannot be read makes the sample unreadable: skipped and counted, as a bad image is
                captions = [read(e).decode("utf-8").strip() for e in sorted(g) if e.endswith("txt")]
                if "json" in g:
                    meta = json.loads(read("json").decode("utf-8"))
                    extra = meta.get("captions", meta.get("caption", [])) if isinstance(meta, dict) else None
                    if not (isinstance(extra, str)
                            or (isinstance(extra, list) and all(isinstance(c, str) for c in extra))):
                        raise ValueError(f"its json 'caption(s)' is not text or a list of text: {extra!r:.80}")
                    captions += [extra] if isinstance(extra, str) else extra
            except (UnicodeDecodeError, ValueError) as err:  # (json.JSONDecodeError is a ValueError)
                raise UnreadableImage(f"{where}: unreadable caption: {err}") from err
            image_bytes = read(ext)
        captions = [c.strip() for c in captions if c.strip()]
        img = load_image(image_bytes, name=f"{shard}:{idx}.{ext}")
        if not captions:
            raise UnreadableImage(f"{where} has only empty captions")
        return img, captions


class ShapesCaptionSamples(Dataset):
    """The embedded Shapes captions (`vision_rwkv.data.shapes.ShapesCaptions`) in this module's sample format.

    `group_by` (one of `vision_rwkv.data.shapes.DRAWN_ATTRIBUTES`, e.g. "color") with `group_size` G re-orders the
    samples so that every run of G consecutive indices shares that attribute (samples left over per attribute value
    are dropped, so the length shrinks a little). Sampled with `EpochLoader(..., group_size=G)`, each batch is then
    made of groups that cannot be told apart by that attribute: hard negatives for the contrastive loss, which
    otherwise learns the easy attribute (colour) long before the shape.
    """

    def __init__(self, split: str = "train", length: Optional[int] = None, seed: int = 0, image_size: int = 64,
                 num_captions: int = 5, transform: Optional[Callable] = None, group_by: Optional[str] = None,
                 group_size: int = 1):
        from vision_rwkv.data.shapes import DRAWN_ATTRIBUTES, ShapesCaptions, drawn_attributes
        self.base = ShapesCaptions(split, length, seed, image_size, num_captions, transform=transform)
        self.classes = list(self.base.classes)
        self.group_size = 1
        self.order: Optional[list[int]] = None  # position -> Shapes index (None = identity)
        if group_by is None:
            return
        if group_by not in DRAWN_ATTRIBUTES:
            raise ValueError(f"unknown Shapes group_by {group_by!r}; expected one of {DRAWN_ATTRIBUTES}")
        if group_size < 1:
            raise ValueError(f"group_size must be >= 1, got {group_size}")
        by_value: dict[str, list[int]] = {}
        for i in range(len(self.base)):
            by_value.setdefault(drawn_attributes(i, split, seed)[group_by], []).append(i)
        groups = [ids[j:j + group_size] for ids in by_value.values()
                  for j in range(0, len(ids) - group_size + 1, group_size)]
        if not groups:
            raise ValueError(f"Shapes length {len(self.base)} gives no group of {group_size} samples with one "
                             f"{group_by}")
        groups.sort(key=lambda g: g[0])  # deterministic interleaving of the attribute values
        self.order = [i for g in groups for i in g]
        self.group_size = int(group_size)

    def __len__(self) -> int:
        return len(self.base) if self.order is None else len(self.order)

    def __getitem__(self, idx: int) -> dict:
        index = idx if self.order is None else self.order[idx]
        image, captions = self.base[index]
        return {"image": image, "captions": captions, "skipped": 0, "index": index}

    @property
    def targets(self) -> list[int]:
        targets = self.base.targets
        return targets if self.order is None else [targets[i] for i in self.order]


class RandomCaptionDataset(Dataset):
    """Training view of a caption dataset: `(image, tokens, skipped)` with ONE caption drawn uniformly from the
    sample's captions every time the sample is read (the diverse-description recipe).

    The draw uses python's `random`; under `vision_rwkv.engine.EpochLoader` (seeded per (seed, epoch, index)) it
    is therefore a fresh draw each epoch that is identical for any number of workers or ranks and after a resume.
    """

    def __init__(self, dataset: Dataset, tokenizer: Callable):
        self.dataset = dataset
        self.tokenizer = tokenizer

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, idx: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        s = self.dataset[idx]
        caption = s["captions"][random.randrange(len(s["captions"]))]
        return s["image"], self.tokenizer([caption])[0], s["skipped"]
