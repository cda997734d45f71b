"""rwkv_clip.tar_index: the ustar header reader agrees with tarfile, and leaves every other format to it."""
import io
import os
import random
import tarfile

import pytest

from rwkv_clip.tar_index import _tarfile_files, _ustar_files, tar_files


def _archive(path, fmt, long_names=False, seed=0):
    rng = random.Random(seed)
    with tarfile.open(path, "w", format=fmt) as tar:
        for i in range(60):
            folder = f"part{i % 3}/" + ("d" * 70 + "/" if long_names and i % 2 else "")
            name = folder + "x" * rng.choice([1, 40, 80]) + f"{i:03d}.{rng.choice(['jpg', 'txt', 'json'])}"
            data = os.urandom(rng.choice([0, 1, 511, 512, 513, 3000]))
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
            if i % 20 == 0:  # entries without bytes of their own are no files
                for kind in (tarfile.DIRTYPE, tarfile.SYMTYPE):
                    other = tarfile.TarInfo(f"{folder}entry{i}-{kind!r}")
                    other.type, other.linkname = kind, "somewhere"
                    tar.addfile(other)


@pytest.mark.parametrize("long_names", [False, True])
def test_ustar_headers_read_as_tarfile_reads_them(tmp_path, long_names):
    """Names of up to 255 bytes (the POSIX prefix field), empty files, sizes on and off the 512-byte blocks."""
    path = str(tmp_path / "a.tar")
    _archive(path, tarfile.USTAR_FORMAT, long_names)
    fast, (slow, problem) = _ustar_files(path), _tarfile_files(path)
    assert problem is None and len(slow) == 60 and fast == slow
    assert any(len(name) > 100 for name, _, _ in fast) == long_names


def test_other_formats_and_damage_are_left_to_tarfile(tmp_path):
    """GNU long names and pax headers are tarfile's to read; so is a shard with a bad checksum or a cut end."""
    for fmt in (tarfile.GNU_FORMAT, tarfile.PAX_FORMAT):
        path = str(tmp_path / f"{fmt}.tar")
        _archive(path, fmt, long_names=True)
        assert _ustar_files(path) is None
        files, problem = tar_files(path)
        assert problem is None and files == _tarfile_files(path)[0] and len(files) == 60
    path = tmp_path / "plain.tar"
    _archive(str(path), tarfile.USTAR_FORMAT)
    data = bytearray(path.read_bytes())
    with tarfile.open(path) as tar:
        files = [m for m in tar.getmembers() if m.isfile()]
    third, big = files[2], next(m for m in files[3:] if m.size > 512)
    data[third.offset + 10] ^= 0x20  # one bit of a name: the checksum no longer fits
    (tmp_path / "flipped.tar").write_bytes(bytes(data))
    assert _ustar_files(str(tmp_path / "flipped.tar")) is None
    got, problem = tar_files(str(tmp_path / "flipped.tar"))
    assert "no valid tar member" in problem and [f[0] for f in got] == [m.name for m in files if m is not third]
    (tmp_path / "cut.tar").write_bytes(path.read_bytes()[:big.offset_data + 100])  # inside a member's bytes
    assert _ustar_files(str(tmp_path / "cut.tar")) is None
    got, problem = tar_files(str(tmp_path / "cut.tar"))
    assert [f[0] for f in got] == [m.name for m in files[:files.index(big)]] and "unreadable from byte" in problem
