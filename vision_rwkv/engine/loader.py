"""Resumable, deterministic data loading shared by the training tools.

- :class:`ResumableSampler` shuffles like ``DistributedSampler`` (``randperm`` seeded by ``seed + epoch``, padded to
  a multiple of the world size, rank ``r`` takes ``indices[r::world]``), or with repeated augmentation like timm's
  ``RepeatAugSampler``; it can start in the middle of an epoch, and yields ``(index, epoch, copy)`` keys.
- :class:`SeededSamples` runs ``dataset[index]`` with python/numpy/torch RNGs seeded from ``(seed, epoch, index)``
  (and the copy number of a repeated sample; the caller's RNG is restored afterwards), so random augmentation
  depends only on which sample of which epoch it is: not on worker count, worker order, or on whether the run was
  resumed.
- :class:`EpochLoader` puts both around a ``DataLoader`` (its own generator: it never consumes the global torch RNG)
  and drops samples the dataset returned as ``None`` (corrupt images), counting them in ``num_skipped``.
- :func:`seed_everything` seeds python/numpy/torch (offset by rank) and optionally enables deterministic kernels.
"""
from __future__ import annotations

import contextlib
import math
import os
import random
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate

from .config import ConfigError
from .distributed import DistInfo
from .stopping import ignore_stop_signals

__all__ = ["seed_everything", "sample_seed", "seeded_rng", "SeededSamples", "ResumableSampler", "ShardSampler",
           "EpochLoader", "build_train_loader", "collate_drop_none"]


def seed_everything(seed: int, rank: int = 0, deterministic: bool = False) -> None:
    """Seed python, numpy and torch with ``seed + rank``; ``deterministic`` also asks torch for deterministic
    kernels (``use_deterministic_algorithms(warn_only=True)``, cuDNN deterministic, no benchmark)."""
    s = int(seed) + int(rank)
    random.seed(s)
    np.random.seed(s % (2 ** 32))
    torch.manual_seed(s)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False


def sample_seed(seed: int, epoch: int, index: int, copy: int = 0) -> int:
    """A 32-bit seed that depends only on (seed, epoch, index, copy); ``copy`` numbers the repeats of one sample in
    one epoch (repeated augmentation), and copy 0 is the seed of an epoch without repeats."""
    entropy = [int(seed) % (2 ** 32), int(epoch), int(index)] + ([int(copy)] if copy else [])
    return int(np.random.SeedSequence(entropy).generate_state(1)[0])


@contextlib.contextmanager
def seeded_rng(seed: int):
    """Run a block with python/numpy/torch-CPU RNGs seeded by ``seed``; the previous states come back after."""
    py_state, np_state, torch_state = random.getstate(), np.random.get_state(), torch.get_rng_state()
    random.seed(seed)
    np.random.seed(seed)
    torch.default_generator.manual_seed(seed)  # CPU generator only (torch.manual_seed is ~100x slower)
    try:
        yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
        torch.set_rng_state(torch_state)


class SeededSamples(Dataset):
    """``self[(index, epoch, copy)]`` = ``dataset[index]`` computed under :func:`seeded_rng` of
    :func:`sample_seed` ``(seed, epoch, index, copy)``; keys ``(index, epoch)`` and ``index`` have copy 0 (and
    epoch 0)."""

    def __init__(self, dataset: Dataset, seed: int = 0):
        self.dataset = dataset
        self.seed = int(seed)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: int | tuple[int, ...]) -> Any:
        index, epoch, copy = (key, 0, 0) if isinstance(key, (int, np.integer)) else (tuple(key) + (0,))[:3]
        with seeded_rng(sample_seed(self.seed, epoch, index, copy)):
            return self.dataset[int(index)]


class ResumableSampler(Sampler):
    """Distributed-aware sampler yielding ``(index, epoch)``; ``set_epoch`` and ``set_start`` (samples to skip on
    this rank) position it, so a resumed run sees exactly the batches an uninterrupted run would.

    ``group_size > 1`` samples whole groups: indices ``[g*G, (g+1)*G)`` stay together and in order, the groups are
    shuffled and dealt to the ranks (rank ``r`` takes groups ``r::world``). With a per-rank batch that is a multiple
    of G, every batch is made of whole groups (e.g. hard-negative batches from a dataset that puts similar samples
    next to each other), and the global batch is the same for any world size. ``length`` must be a multiple of G.

    ``repeats >= 1`` is repeated augmentation as timm's ``RepeatAugSampler`` (``--aug-repeats``) does it: each index
    of the shuffled order ``repeats`` times in a row (a fractional count: position ``i`` holds ``order[i //
    repeats]``), padded cyclically to a multiple of the world size and dealt ``r::world``, so the copies of one image
    go to different ranks; each rank keeps the first ``length // repeats_round * repeats_round / world`` (rounded
    down; with fewer samples than ``repeats_round``, or ``repeats_round=0``: ``ceil(length / world)``), so an epoch
    takes as many steps as one without repeats.
    It yields ``(index, epoch, copy)``: ``copy`` numbers the repeats of an index within the epoch, so that each copy
    is augmented differently (see :class:`SeededSamples`).
    """

    def __init__(self, length: int, num_replicas: int = 1, rank: int = 0, shuffle: bool = True, seed: int = 0,
                 drop_last: bool = False, group_size: int = 1, repeats: float = 0, repeats_round: int = 256):
        if length <= 0:
            raise ValueError("cannot sample from an empty dataset")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} out of range for {num_replicas} replicas")
        if group_size < 1 or length % group_size:
            raise ValueError(f"group_size {group_size} must be >= 1 and divide the dataset length {length}")
        if repeats and not float(repeats) >= 1:
            raise ValueError(f"repeats must be 0 (no repeated augmentation) or >= 1, got {repeats}")
        if repeats and group_size > 1:
            raise ValueError("repeated augmentation samples single images: it takes no group_size")
        if repeats_round < 0:
            raise ValueError(f"repeats_round must be >= 0, got {repeats_round}")
        self.length, self.num_replicas, self.rank = int(length), int(num_replicas), int(rank)
        self.shuffle, self.seed, self.drop_last = bool(shuffle), int(seed), bool(drop_last)
        self.group_size = int(group_size)
        self.repeats, self.repeats_round = float(repeats), int(repeats_round)
        self.epoch, self.start = 0, 0
        groups = self.length // self.group_size
        if self.repeats:  # (timm's: whole rounds when the data has one, never more than the padded share)
            if self.repeats_round and self.length >= self.repeats_round:
                self.per_rank = self.length // self.repeats_round * self.repeats_round // self.num_replicas
            else:
                self.per_rank = math.ceil(self.length / self.num_replicas)
            self.per_rank = min(self.per_rank, math.ceil(math.ceil(self.repeats * self.length) / self.num_replicas))
            if self.per_rank == 0:
                raise ValueError(f"repeated augmentation keeps {self.length} // {self.repeats_round} * "
                                 f"{self.repeats_round} / {self.num_replicas} = 0 samples per process of an epoch "
                                 f"(timm's rounding to whole {self.repeats_round}s): the dataset needs at least "
                                 f"{self.repeats_round * self.num_replicas} samples, or a smaller repeats_round")
        elif self.drop_last:
            self.per_rank = groups // self.num_replicas * self.group_size
        else:
            self.per_rank = math.ceil(groups / self.num_replicas) * self.group_size

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def set_start(self, start: int) -> None:
        self.start = int(start)

    def _order(self, n: int) -> list[int]:
        if not self.shuffle:
            return list(range(n))
        g = torch.Generator()
        g.manual_seed(self.seed + self.epoch)
        return torch.randperm(n, generator=g).tolist()

    def indices(self) -> list[int]:
        """This rank's indices of the epoch (before ``set_start`` skips any)."""
        return self.keys()[0]

    def keys(self) -> tuple[list[int], list[int]]:
        """This rank's indices of the epoch and each one's copy number (all 0 without repeats)."""
        if self.repeats:
            return self._repeated()
        order = self._order(self.length // self.group_size)
        total = self.per_rank // self.group_size * self.num_replicas
        if total > len(order):
            pad = total - len(order)
            order += (order * math.ceil(pad / len(order)))[:pad]
        else:
            order = order[:total]
        mine = order[self.rank:total:self.num_replicas]
        gs = self.group_size
        mine = mine if gs == 1 else [g * gs + j for g in mine for j in range(gs)]
        return mine, [0] * len(mine)

    def _repeated(self) -> tuple[list[int], list[int]]:
        order, r = self._order(self.length), self.repeats
        if r.is_integer():
            seq = [i for i in order for _ in range(int(r))]
            first_copies = [c for _ in order for c in range(int(r))]
        else:
            seq = [order[int(i // r)] for i in range(math.ceil(r * self.length))]
            first_copies = [0] * len(seq)
            for i in range(1, len(seq)):  # the copies of an index are consecutive
                if seq[i] == seq[i - 1]:
                    first_copies[i] = first_copies[i - 1] + 1
        total = math.ceil(len(seq) / self.num_replicas) * self.num_replicas
        passes = math.ceil(total / len(seq))  # the padding repeats the sequence from its start: later copies
        seq, copies = seq * passes, [c + k * math.ceil(r) for k in range(passes) for c in first_copies]
        picked = range(self.rank, total, self.num_replicas)[:self.per_rank]
        return [seq[i] for i in picked], [copies[i] for i in picked]

    def __iter__(self) -> Iterator[tuple[int, ...]]:
        indices, copies = self.keys()
        if not self.repeats:
            for i in indices[self.start:]:
                yield (i, self.epoch)
            return
        for i, c in zip(indices[self.start:], copies[self.start:]):
            yield (i, self.epoch, c)

    def __len__(self) -> int:
        return max(self.per_rank - self.start, 0)


class ShardSampler(Sampler):
    """Evaluation sampler: rank ``r`` takes ``range(r, n, world)`` (no padding, no duplicates; shards may differ in
    size by one, so reduce sums, not means)."""

    def __init__(self, length: int, num_replicas: int = 1, rank: int = 0):
        self.length, self.num_replicas, self.rank = int(length), int(num_replicas), int(rank)

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.length, self.num_replicas))

    def __len__(self) -> int:
        return len(range(self.rank, self.length, self.num_replicas))


def collate_drop_none(batch: Sequence[Any], collate: Callable = default_collate) -> tuple[Any, int]:
    """Drop ``None`` samples (unreadable images), collate the rest; returns ``(batch or None, dropped count)``."""
    kept = [b for b in batch if b is not None]
    dropped = len(batch) - len(kept)
    return (collate(kept) if kept else None), dropped


class _DropNoneCollate:
    """Picklable wrapper (for worker processes) around a user collate function."""

    def __init__(self, collate: Callable | None):
        self.collate = collate or default_collate

    def __call__(self, batch):
        return collate_drop_none(batch, self.collate)


class EpochLoader:
    """Batches of one epoch for this rank, resumable mid-epoch, with deterministic per-sample augmentation.

    ``batch_size`` is per process. ``iter_epoch(epoch, start_batch)`` yields ``(batch_index, batch)`` for every
    batch of the epoch from ``start_batch``: unreadable samples are dropped from their batch, and a batch whose
    samples were all unreadable is replaced by this process's previous batch (or, before any, by the next readable
    one), so that every process takes the same number of steps (under DDP a missing step would leave the processes'
    collectives mismatched) and an epoch has ``len(loader)`` batches. ``num_skipped`` counts dropped samples since
    construction. ``group_size``: see
    :class:`ResumableSampler` (batches of whole groups; ``batch_size`` must be a multiple of it), as for
    ``repeats`` / ``repeats_round`` (repeated augmentation).
    """

    def __init__(self, dataset: Dataset, batch_size: int, *, shuffle: bool = True, drop_last: bool = True,
                 seed: int = 0, num_workers: int = 0, collate_fn: Callable | None = None, pin_memory: bool = False,
                 info: DistInfo | None = None, seeded: bool = True, persistent_workers: bool = False,
                 prefetch_factor: int | None = None, group_size: int = 1, repeats: float = 0,
                 repeats_round: int = 256):
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if len(dataset) == 0:
            raise ValueError("dataset is empty")
        if group_size > 1 and batch_size % group_size:
            raise ValueError(f"batch_size {batch_size} (per process) must be a multiple of group_size {group_size}")
        self.info = info or DistInfo()
        self.dataset = dataset
        self.batch_size = int(batch_size)
        self.shuffle, self.drop_last, self.seed = shuffle, drop_last, int(seed)
        self.num_workers, self.pin_memory = int(num_workers), pin_memory
        self.persistent_workers = persistent_workers and num_workers > 0
        self.prefetch_factor = prefetch_factor
        self.collate = _DropNoneCollate(collate_fn)
        self.samples = SeededSamples(dataset, seed) if seeded else _KeyIndex(dataset)
        self.sampler = ResumableSampler(len(dataset), self.info.world_size, self.info.rank, shuffle, seed,
                                        group_size=group_size, repeats=repeats, repeats_round=repeats_round)
        self.num_skipped = 0
        self._last_batch: Any = None  # the stand-in for a batch whose every sample is unreadable
        if len(self) == 0:
            raise ValueError(f"dataset of {len(dataset)} samples gives no batch of {batch_size} per process "
                             f"(world size {self.info.world_size}, drop_last={drop_last})")

    def __len__(self) -> int:
        n = self.sampler.per_rank
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def iter_epoch(self, epoch: int, start_batch: int = 0) -> Iterator[tuple[int, Any]]:
        n_batches = len(self)
        self.sampler.set_epoch(epoch)
        self.sampler.set_start(start_batch * self.batch_size)
        g = torch.Generator()
        g.manual_seed(self.seed * 1000003 + epoch)
        kwargs: dict[str, Any] = {}
        if self.num_workers > 0 and self.prefetch_factor is not None:
            kwargs["prefetch_factor"] = self.prefetch_factor
        dl = DataLoader(self.samples, batch_size=self.batch_size, sampler=self.sampler, num_workers=self.num_workers,
                        collate_fn=self.collate, pin_memory=self.pin_memory, drop_last=self.drop_last, generator=g,
                        persistent_workers=False, worker_init_fn=ignore_stop_signals, **kwargs)
        waiting: list[int] = []  # unreadable batches before any readable one: they take the next readable batch
        for pos, (batch, dropped) in enumerate(dl, start=start_batch):
            if pos >= n_batches:
                break
            self.num_skipped += dropped
            if batch is None:
                if self._last_batch is None:
                    waiting.append(pos)
                    continue
                batch = self._last_batch
            else:
                self._last_batch = batch
                for early in waiting:
                    yield early, batch
                waiting = []
            yield pos, batch
        if waiting:
            raise RuntimeError(f"every sample of this process's batches {waiting[0]}-{waiting[-1]} of epoch {epoch} "
                               "was unreadable, and no readable batch came before or after them: check the data")


def build_train_loader(keys: str, dataset: Dataset, batch_size: int, **kwargs: Any) -> EpochLoader:
    """``EpochLoader(dataset, batch_size, **kwargs)`` for a training tool: a batch size (or repeated augmentation)
    the data cannot fill is a :class:`ConfigError` that names the config ``keys`` setting it."""
    try:
        return EpochLoader(dataset, batch_size, **kwargs)
    except ValueError as err:
        raise ConfigError(f"{keys}: {err}") from None


class _KeyIndex(Dataset):
    """Unseeded counterpart of SeededSamples: accepts ``(index, epoch)`` keys."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        index = key if isinstance(key, (int, np.integer)) else key[0]
        return self.dataset[int(index)]
