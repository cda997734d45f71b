"""rwkv_clip.shard_index: the tar index cache gives the index the shards give, and never a stale or broken one."""
import os
import tarfile

import numpy as np
import pytest

import rwkv_clip.shard_index as shard_index
from clip_helpers import png_bytes, write_tar
from rwkv_clip.data import IMAGE_EXTENSIONS, TarCaptionDataset
from rwkv_clip.shard_index import index_order, shard_samples

INDEX = ("_shard", "_ext", "_offset", "_size", "_starts")


def _shards(tmp_path, n=3):
    """n shards of different extensions and sample counts, keys without a caption, and a damaged shard."""
    paths = []
    for s in range(n):
        image = ("jpg", "png", "webp")[s % 3]
        members = []
        for i in range(5 + 3 * s):
            members += [(f"k{s}/{i:04d}.{image}", png_bytes(10 * s + i)), (f"k{s}/{i:04d}.txt", f"c {s} {i}".encode())]
            if i % 2:
                members.append((f"k{s}/{i:04d}.json", b'{"caption": "j"}'))
        members.append((f"k{s}/lonely.{image}", b"no caption"))
        write_tar(tmp_path / f"s{s}.tar", members)
        paths.append(str(tmp_path / f"s{s}.tar"))
    data = bytearray((tmp_path / "s0.tar").read_bytes())
    with tarfile.open(tmp_path / "s0.tar") as tar:
        header = tar.getmembers()[1].offset  # the first caption's header
    data[header:header + 512] = b"\x17" * 512  # a corrupt header: read as far as it can be (tarfile's route)
    (tmp_path / "bad.tar").write_bytes(bytes(data))
    return paths + [str(tmp_path / "bad.tar")]


def _same_index(a, b):
    for k in INDEX:
        x, y = getattr(a, k), getattr(b, k)
        assert x.dtype == y.dtype and np.array_equal(x, y), k
    assert (a.exts, a.incomplete, a.damaged, len(a)) == (b.exts, b.incomplete, b.damaged, len(b))


def test_cached_index_is_the_shards_index_and_skips_reading_them(tmp_path, monkeypatch):
    shards = _shards(tmp_path)
    cache = str(tmp_path / "cache")
    with pytest.warns(UserWarning, match="bad.tar"):
        plain = TarCaptionDataset(shards)
    with pytest.warns(UserWarning, match="bad.tar"):
        first = TarCaptionDataset(shards, index_cache=cache)
    assert len(os.listdir(cache)) == len(shards)
    assert not [f for f in os.listdir(cache) if f.startswith(".tmp")]

    def no_reading(shard):
        raise AssertionError(f"{shard} read although cached")

    monkeypatch.setattr(shard_index, "tar_files", no_reading)
    with pytest.warns(UserWarning, match="bad.tar: bytes"):  # the damage is still reported
        cached = TarCaptionDataset(shards, index_cache=cache)
    for ds in (first, cached):
        _same_index(plain, ds)
    assert plain.members(7) == cached.members(7) and plain.incomplete == 5 and len(plain.damaged) == 1
    # what a sample reads from the cached index
    monkeypatch.undo()
    assert cached[0]["captions"] == plain[0]["captions"] == ["c 0 0"]


def test_a_rewritten_shard_is_indexed_again(tmp_path):
    cache = str(tmp_path / "cache")
    path = tmp_path / "s.tar"
    write_tar(path, [("0.png", b"a"), ("0.txt", b"zero")])
    assert len(TarCaptionDataset(str(path), index_cache=cache)) == 1
    write_tar(path, [("0.png", b"a"), ("0.txt", b"zero"), ("1.png", b"b"), ("1.txt", b"one")])
    os.utime(path, ns=(1, 1))  # (another size and another time: either changes the cache key)
    ds = TarCaptionDataset(str(path), index_cache=cache)
    assert len(ds) == 2 and len(os.listdir(cache)) == 2


@pytest.mark.parametrize("damage", ["garbage", "truncated", "inconsistent"])
def test_an_unreadable_cache_file_is_rebuilt_with_a_warning(tmp_path, damage):
    shards = _shards(tmp_path, n=2)[:2]
    cache = tmp_path / "cache"
    plain = TarCaptionDataset(shards)
    TarCaptionDataset(shards, index_cache=str(cache))
    victim = sorted(cache.iterdir())[0]
    if damage == "garbage":
        victim.write_bytes(b"not an npz at all")
    elif damage == "truncated":
        victim.write_bytes(victim.read_bytes()[:200])
    else:  # a readable file whose arrays do not fit together
        with np.load(victim) as z:
            arrays = dict(z)
        arrays["starts"] = arrays["starts"][:-1]
        with open(victim, "wb") as f:
            np.savez(f, **arrays)
    with pytest.warns(UserWarning, match=rf"tar index cache file .*{victim.name} is unreadable"):
        _same_index(plain, TarCaptionDataset(shards, index_cache=str(cache)))
    _same_index(plain, TarCaptionDataset(shards, index_cache=str(cache)))  # rewritten: no warning now


def test_an_unwritable_cache_only_warns(tmp_path):
    shards = _shards(tmp_path, n=2)[:2]
    (tmp_path / "file").write_text("a file where the cache folder should be")
    with pytest.warns(UserWarning, match="cannot write the tar index cache in .*file") as caught:
        ds = TarCaptionDataset(shards, index_cache=str(tmp_path / "file" / "cache"))
    assert len([w for w in caught if "cannot write" in str(w.message)]) == 1  # once per folder, not per shard
    _same_index(TarCaptionDataset(shards), ds)


def test_ranks_of_a_node_index_disjoint_shards_first(tmp_path, monkeypatch):
    assert index_order(5, 0, 1) == [0, 1, 2, 3, 4]
    assert index_order(8, 1, 4) == [2, 3, 4, 5, 6, 7, 0, 1]
    assert index_order(3, 2, 4) == [1, 2, 0]
    assert index_order(3, 7, 4) == [0, 1, 2]  # a rank outside the world: plain order
    for world in (1, 2, 3, 8):
        firsts = [index_order(16, r, world)[: 16 // world] for r in range(world)]
        assert sorted(sum(firsts, [])) == list(range(16 // world * world))
    # the order changes nothing but who indexes what first
    shards = _shards(tmp_path)
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    read = []
    real = shard_index.tar_files
    monkeypatch.setattr(shard_index, "tar_files", lambda shard: read.append(shard) or real(shard))
    with pytest.warns(UserWarning, match="bad.tar"):
        ds = TarCaptionDataset(shards, index_cache=str(tmp_path / "cache"))
    assert read == shards[2:] + shards[:2]
    monkeypatch.undo()
    with pytest.warns(UserWarning, match="bad.tar"):
        _same_index(TarCaptionDataset(shards), ds)


def test_shard_samples_without_a_cache_reads_the_shard(tmp_path):
    write_tar(tmp_path / "s.tar", [("a.jpg", b"x"), ("a.txt", b"y"), ("a.JPG", b"z"), ("b.txt", b"w")])
    s = shard_samples(str(tmp_path / "s.tar"), IMAGE_EXTENSIONS)
    # a repeated extension (here by case) keeps the last member; "b" has no image
    assert len(s) == 1 and s.incomplete == 1 and s.problem is None and s.exts == ["jpg", "txt"]
    assert s.offset.tolist() == [2560, 1536] and s.size.tolist() == [1, 1]
