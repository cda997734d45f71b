"""Loader: DistributedSampler-compatible shards, mid-epoch start, augmentation independent of workers/resume."""
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
