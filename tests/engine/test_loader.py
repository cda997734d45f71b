"""Loader: DistributedSampler-compatible shards, mid-epoch start, augmentation independent of workers/resume."""
import math
import random

import pytest
import torch
from torch.utils.data import Dataset, DistributedSampler

from vision_rwkv.engine import DistInfo, EpochLoader, ResumableSampler, ShardSampler


class _Rand(Dataset):
    def __len__(self):
        return 20

    def __getitem__(self, i):
        return torch.tensor([float(i), random.random(), float(torch.rand(()))])


def test_sampler_matches_distributed_sampler():
    for world in (1, 2, 3):
        for rank in range(world):
            ours = ResumableSampler(23, world, rank, shuffle=True, seed=7)
            ref = DistributedSampler(range(23), num_replicas=world, rank=rank, shuffle=True, seed=7)
            for epoch in (0, 3):
                ours.set_epoch(epoch), ref.set_epoch(epoch)
                assert [i for i, _ in ours] == list(ref)


def test_grouped_sampler_keeps_groups_whole_and_shards_them():
    def groups_of(idx):
        return [tuple(idx[j:j + 4]) for j in range(0, len(idx), 4)]

    single = ResumableSampler(24, 1, 0, shuffle=True, seed=3, group_size=4)
    for epoch in (0, 1):
        single.set_epoch(epoch)
        idx = [i for i, _ in single]
        assert sorted(idx) == list(range(24))
        assert all(g == tuple(range(g[0], g[0] + 4)) and g[0] % 4 == 0 for g in groups_of(idx))
    single.set_epoch(0)
    e0 = single.indices()
    single.set_epoch(1)
    assert single.indices() != e0 and groups_of(single.indices()) != groups_of(e0)
    # two ranks: rank r takes groups r::2, so each global batch (2 groups) is the single-process batch
    ranks = [ResumableSampler(24, 2, r, shuffle=True, seed=3, group_size=4) for r in range(2)]
    per_rank = [groups_of(s.indices()) for s in ranks]
    assert [g for pair in zip(*per_rank) for g in pair] == groups_of(e0)
    assert ranks[0].per_rank == 12
    # mid-epoch start skips whole samples of this rank's list
    ranks[1].set_start(4)
    assert [i for i, _ in ranks[1]] == ranks[1].indices()[4:]
    # padding with whole groups when the groups do not split evenly; errors name the problem
    assert len(ResumableSampler(20, 3, 2, group_size=4).indices()) == 8
    with pytest.raises(ValueError, match="divide the dataset length"):
        ResumableSampler(22, group_size=4)


def test_shard_sampler_covers_once():
    seen = sorted(i for r in range(3) for i in ShardSampler(10, 3, r))
    assert seen == list(range(10))


def test_samples_depend_only_on_seed_epoch_index():
    full = EpochLoader(_Rand(), 4, seed=3)
    a = torch.cat([b for _, b in full.iter_epoch(2)])
    # mid-epoch start gives the tail of the same epoch; workers give the same values
    b = torch.cat([b for _, b in EpochLoader(_Rand(), 4, seed=3).iter_epoch(2, start_batch=2)])
    assert torch.equal(a[8:], b)
    c = torch.cat([b for _, b in EpochLoader(_Rand(), 4, seed=3, num_workers=2).iter_epoch(2)])
    assert torch.equal(a, c)
    # another epoch: other order and other random values for the same index
    d = torch.cat([b for _, b in full.iter_epoch(3)])
    a_by_idx = {int(r[0]): r for r in a}
    d_by_idx = {int(r[0]): r for r in d}
    assert not torch.equal(a[:, 0], d[:, 0])
    assert all(not torch.equal(a_by_idx[i][1:], d_by_idx[i][1:]) for i in a_by_idx)
    # the caller's RNG is untouched
    torch.manual_seed(0)
    x = torch.rand(1)
    torch.manual_seed(0)
    list(full.iter_epoch(0))
    assert torch.equal(torch.rand(1), x)


def test_global_batch_is_union_of_rank_batches():
    single = [b for _, b in EpochLoader(_Rand(), 4, seed=1).iter_epoch(0)]
    r0 = [b for _, b in EpochLoader(_Rand(), 2, seed=1, info=DistInfo(0, 2)).iter_epoch(0)]
    r1 = [b for _, b in EpochLoader(_Rand(), 2, seed=1, info=DistInfo(1, 2)).iter_epoch(0)]
    for s, a, b in zip(single, r0, r1):
        assert sorted(s[:, 0].tolist()) == sorted(torch.cat([a, b])[:, 0].tolist())
        assert torch.equal(s[s[:, 0].argsort()], torch.cat([a, b])[torch.cat([a, b])[:, 0].argsort()])


def test_errors():
    import pytest
    with pytest.raises(ValueError, match="empty"):
        EpochLoader(torch.utils.data.TensorDataset(torch.zeros(0)), 2)
    with pytest.raises(ValueError, match="no batch"):
        EpochLoader(_Rand(), 64)


class _Unreadable(Dataset):
    """Sample i is ``[i]``, or None (an unreadable image) for i in ``bad``."""

    def __init__(self, bad, n=12):
        self.bad, self.n = set(bad), n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return None if i in self.bad else torch.tensor([float(i)])


def test_every_batch_position_is_yielded_when_a_whole_batch_is_unreadable():
    """Under DDP every process must take every step: a batch of nothing but unreadable samples is replaced (by the
    previous batch, or before any by the next readable one), a partly unreadable batch just loses those samples,
    and the epoch has len(loader) batches; an epoch with no readable batch at all is an error."""
    def epoch(bad, start=0, loader=None):
        loader = loader or EpochLoader(_Unreadable(bad), 3, shuffle=False)
        return loader, [(pos, b.flatten().int().tolist()) for pos, b in loader.iter_epoch(0, start)]

    loader, got = epoch({4, 3, 5, 7})
    assert got == [(0, [0, 1, 2]), (1, [0, 1, 2]), (2, [6, 8]), (3, [9, 10, 11])]
    assert loader.num_skipped == 4
    _, got = epoch({0, 1, 2, 3, 4, 5})  # nothing readable before: the first readable batch stands in
    assert got == [(0, [6, 7, 8]), (1, [6, 7, 8]), (2, [6, 7, 8]), (3, [9, 10, 11])]
    _, got = epoch({6, 7, 8}, start=2)  # a resumed epoch, nothing read before: the next readable batch
    assert got == [(2, [9, 10, 11]), (3, [9, 10, 11])]
    loader, got = epoch({6, 7, 8})
    _, again = epoch({6, 7, 8}, loader=loader)  # the previous batch carries over to the next epoch
    assert [p for p, _ in again] == [0, 1, 2, 3] and again[2] == (2, [3, 4, 5])
    with pytest.raises(RuntimeError, match="batches 0-3 of epoch 0 was unreadable"):
        epoch(set(range(12)))
    ranks = [EpochLoader(_Unreadable({0, 2, 4}), 3, shuffle=False, info=DistInfo(r, 2)) for r in (0, 1)]
    counts = [len(list(r.iter_epoch(0))) for r in ranks]  # rank 0's first batch ([0, 2, 4]) is unreadable
    assert counts == [len(ranks[0]), len(ranks[1])] == [2, 2]


class _Sized:
    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n


@pytest.mark.parametrize("repeats", [1, 2, 3, 1.5, 2.5])
def test_repeated_augmentation_order_is_timms(repeats):
    """aug.repeats: the same indices, in the same order, on every rank as timm's RepeatAugSampler (whose seed is
    the epoch: ours is seed + epoch, so seed 0), the same epoch length, for lengths off the 256 rounding too."""
    from timm.data.distributed_sampler import RepeatAugSampler
    for n, world, rnd in ((300, 1, 256), (517, 2, 256), (1000, 3, 256), (70, 2, 256), (200, 3, 0), (5, 4, 256)):
        for rank in range(world):  # (fewer samples than the round: timm keeps ceil(n / world) a rank)
            ref = RepeatAugSampler(_Sized(n), num_replicas=world, rank=rank, num_repeats=repeats, selected_round=rnd)
            ours = ResumableSampler(n, world, rank, seed=0, repeats=repeats, repeats_round=rnd)
            for epoch in (0, 5):
                ref.set_epoch(epoch), ours.set_epoch(epoch)
                keys = list(ours)
                assert [k[0] for k in keys] == list(ref) and len(ours) == len(ref) == len(keys)
                assert all(k[1] == epoch for k in keys)


def _every_key(n, world, repeats):
    """The keys of the whole padded sequence, rank by rank (each rank past the rounding's cut)."""
    ranks = [ResumableSampler(n, world, r, seed=4, repeats=repeats, repeats_round=0) for r in range(world)]
    for s in ranks:
        s.per_rank = math.ceil(math.ceil(n * repeats) / world)
    return [list(s) for s in ranks]


def test_repeated_copies_are_numbered_and_dealt_to_different_ranks():
    """Each (index, copy) key occurs once an epoch over all ranks (the padding's repeats get new copy numbers), the
    copies of an index go to different ranks when there are as many ranks as repeats, and a mid-epoch start gives
    the tail of the same keys."""
    keys = [k for rank in _every_key(41, 3, 3) for k in rank]
    assert len(set(keys)) == len(keys) == 123 and {k[2] for k in keys} == {0, 1, 2}
    ranks = [ResumableSampler(41, 3, r, seed=4, repeats=3, repeats_round=0) for r in range(3)]
    where = {}
    for r, s in enumerate(ranks):
        for i, _, _ in s:
            where.setdefault(i, []).append(r)
    assert all(len(set(rs)) == len(rs) for rs in where.values()) and len(where) < 41  # (a third of the copies)
    padded = [k for rank in _every_key(5, 4, 3) for k in rank]  # 15 keys padded to 16: the first index, copy 3
    assert len(set(padded)) == 16 and sorted(k[2] for k in padded)[-1] == 3
    fractional = [k for rank in _every_key(10, 2, 1.5) for k in rank]
    assert len(set(fractional)) == 16 and sorted(k[2] for k in fractional)[-2:] == [1, 2]  # (15 + 1 padded)
    ranks[1].set_start(5)
    tail = list(ranks[1])
    ranks[1].set_start(0)
    assert tail == list(ranks[1])[5:] and len(ranks[1]) == 14


def test_repeated_copies_are_augmented_differently_and_the_same_on_resume():
    """Every copy of an image draws its own augmentation (the key's copy number seeds it): equal samples only for
    equal keys; without repeats the seeds are those of before (copy 0)."""
    loader = EpochLoader(_Rand(), 4, seed=2, repeats=2, repeats_round=0)
    rows = torch.cat([b for _, b in loader.iter_epoch(1)])
    assert len(rows) == 20 and len({float(r[0]) for r in rows}) == 10  # 10 images, each twice
    by_index = {}
    for r in rows:
        by_index.setdefault(int(r[0]), []).append(r[1:])
    assert all(len(v) == 2 and not torch.equal(v[0], v[1]) for v in by_index.values())
    resumed = torch.cat([b for _, b in EpochLoader(_Rand(), 4, seed=2, repeats=2, repeats_round=0)
                         .iter_epoch(1, start_batch=3)])
    assert torch.equal(rows[12:], resumed)
    from vision_rwkv.engine import SeededSamples
    samples = SeededSamples(_Rand(), seed=2)
    assert torch.equal(samples[(3, 1)], samples[(3, 1, 0)]) and not torch.equal(samples[(3, 1)], samples[(3, 1, 1)])


def test_repeated_augmentation_errors_name_the_problem():
    with pytest.raises(ValueError, match="0 \\(no repeated augmentation\\) or >= 1"):
        ResumableSampler(10, repeats=0.5)
    with pytest.raises(ValueError, match="no group_size"):
        ResumableSampler(12, repeats=2, group_size=4)
    with pytest.raises(ValueError, match="needs at least 131072 samples, or a smaller repeats_round"):
        ResumableSampler(300, 512, 0, repeats=3)  # (300 // 256 * 256 / 512 processes = 0 each)
    from vision_rwkv.engine import ConfigError, build_train_loader
    with pytest.raises(ConfigError, match="^train.batch_size: dataset of 20 samples gives no batch of 64"):
        build_train_loader("train.batch_size", _Rand(), 64)
