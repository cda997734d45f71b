"""Where the files of a webdataset-style tar shard lie: (name, data offset, size) of each, read from its headers.

Python's tarfile takes ~40 us a member to read a shard's headers, which at the scale of a web corpus (15M samples of
2-4 files) is most of an hour at every start and resume, in every process. Plain ustar headers (what webdataset,
GNU tar and Python's tarfile write for names up to 100 bytes) are parsed here directly: one 512-byte block and its
checksum per member. A shard with anything else - GNU long names, pax headers, a damaged block, a truncated end - is
read by tarfile, which knows those formats and how to step over damage.
"""
from __future__ import annotations

import mmap
import os
import tarfile
from typing import Optional

__all__ = ["tar_files", "COMPRESSED_MAGIC"]

BLOCK = tarfile.BLOCKSIZE
_ZERO_BLOCK = bytes(BLOCK)
_REGULAR = (b"0", b"\0", b"7")  # regular file (old and contiguous variants)
_SKIPPED = (b"1", b"2", b"3", b"4", b"5", b"6")  # links, devices, directories, fifos: no bytes of their own
# gzip, bzip2, xz, zstd
COMPRESSED_MAGIC = (b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00", b"\x28\xb5\x2f\xfd")

Files = list[tuple[str, int, int]]


def tar_files(shard: str) -> tuple[Files, Optional[str]]:
    """(name, data offset, size) of every regular file in a tar shard, and what was wrong with the shard (None if
    nothing). A damaged shard gives what can be read, as webdataset's ``warn_and_continue`` does: a corrupt header
    is stepped over (the members after it are kept; tarfile alone reads it as the end of the archive and loses them
    silently), a truncated shard keeps the members before the cut, an empty file gives nothing."""
    files = _ustar_files(shard)
    problem = None
    if files is None:
        files, problem = _tarfile_files(shard)
    if not files:
        with open(shard, "rb") as f:
            magic = f.read(6)
        if shard.endswith((".gz", ".tgz", ".bz2", ".xz", ".zst")) or magic.startswith(COMPRESSED_MAGIC):
            problem = "compressed shards are not supported: give uncompressed .tar files"
        elif problem is None:
            problem = "no files in it (not a tar archive?)"
    return files, problem


def _ustar_files(shard: str) -> Optional[Files]:
    """The files of a shard of plain ustar headers, None when it holds anything else (left to tarfile)."""
    end = os.path.getsize(shard)
    if end < BLOCK:
        return None
    files: Files = []
    with open(shard, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        offset = 0
        while offset + BLOCK <= end:
            header = mm[offset:offset + BLOCK]
            if header == _ZERO_BLOCK:  # the end-of-archive marker: only zeros may follow
                return files if mm[offset:].count(0) == end - offset else None
            size = _octal(header[124:136])
            typeflag = header[156:157]
            if size is None or _octal(header[148:156]) != _checksum(header) or not (typeflag in _REGULAR
                                                                                    or typeflag in _SKIPPED):
                return None  # a damaged block, a base-256 size, a GNU long name, a pax header, ...
            data = offset + BLOCK
            if data + size > end:
                return None  # truncated
            if typeflag in _REGULAR:
                name = header[:100].split(b"\0", 1)[0]
                if header[257:265] == b"ustar\x0000" and header[345] != 0:  # POSIX: a prefix before the name
                    name = header[345:500].split(b"\0", 1)[0] + b"/" + name
                if not name.endswith(b"/"):  # (an old-style directory)
                    files.append((os.fsdecode(name), data, size))
            offset = data + -(-size // BLOCK) * BLOCK
    return files


def _octal(field: bytes) -> Optional[int]:
    """A header's octal number field, None when it is not one (a base-256 number, or garbage)."""
    digits = field.strip(b" \0")
    if not digits:
        return 0
    try:
        return int(digits, 8)
    except ValueError:
        return None


def _checksum(header: bytes) -> int:
    """The header's unsigned byte sum with its checksum field read as spaces."""
    return sum(header[:148]) + 8 * 32 + sum(header[156:])


def _tarfile_files(shard: str) -> tuple[Files, Optional[str]]:
    """The files tarfile reads in a shard, stepping over damaged blocks (``ignore_zeros``), and what was wrong."""
    end = os.path.getsize(shard)
    files: Files = []
    problems: list[str] = []
    expected = 0  # where the next header should start
    try:
        with tarfile.open(shard, "r:", ignore_zeros=True) as tar:
            for info in tar:
                if info.offset > expected:  # blocks that were no valid header: a damaged member
                    problems.append(f"bytes {expected}-{info.offset} are no valid tar member (skipped)")
                expected = info.offset_data + -(-info.size // BLOCK) * BLOCK
                if info.isfile() and info.offset_data + info.size <= end:
                    files.append((info.name, info.offset_data, info.size))
    except tarfile.TarError as err:  # (ReadError "unexpected end of data": a truncated shard)
        kept = ": the files before it are used" if files else ""
        problems.append(f"unreadable from byte {expected} ({err}){kept}")
    return files, "; ".join(problems) or None
