"""Files and file names: text files written whole (a temporary file of its own in the target's folder, then
``os.replace``: the tools' result tables, the run folder's config and metric logs), output paths checked before the
work that writes them, and file names as text. Imports nothing of the package, so every module can use it
(checkpoints: :func:`vision_rwkv.engine.checkpoint.atomic_save`)."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Union

__all__ = ["write_text_atomic", "OutputPathError", "check_output_file", "check_output_dir", "name_text"]

PathLike = Union[str, os.PathLike]


class OutputPathError(ValueError):
    """An output file or folder that cannot be written (a tool's usage error: one line, exit status 2)."""


def write_text_atomic(path: Union[str, os.PathLike], text: str) -> Path:
    """Write ``text`` as UTF-8 (verbatim line ends; a file name's undecodable bytes, as Python's C locale decodes
    them, written back as they were) to a temporary file of its own in ``path``'s folder, then ``os.replace`` it
    onto ``path``: a failed write leaves the previous file whole, concurrent writers never share a temporary file,
    an existing file keeps its permissions and a symbolic link its target."""
    path = Path(path)
    target = path.resolve() if path.is_symlink() else path  # (a link's target is rewritten, the link kept)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name[:64]}.", suffix=".tmp")
    tmp = Path(name)
    try:
        with open(fd, "w", encoding="utf-8", errors="surrogateescape", newline="") as fh:
            fh.write(text)
        mode = target.stat().st_mode & 0o7777 if target.exists() else 0o666 & ~_umask()
        os.chmod(tmp, mode)  # (mkstemp makes it 0600: the file keeps its mode, a new one gets the usual)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def check_output_file(path: PathLike, what: str = "--output") -> None:
    """:class:`OutputPathError` naming ``what`` when the file ``path`` cannot be written: it is a folder, a file stands
    where one of its folders should be, or its folder is not writable (read-only file system included)."""
    path = Path(path)
    if path.is_dir():
        raise OutputPathError(f"{what} {path} is a folder; name a file")
    _check_folder_of(path.parent, what, path)


def check_output_dir(path: PathLike, what: str = "--out-dir") -> None:
    """:class:`OutputPathError` naming ``what`` when ``path`` cannot be (made) a writable folder: it is a file, a file
    stands where one of its folders should be, or it (its nearest existing folder) is not writable."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputPathError(f"{what} {path} is a file, not a folder")
    _check_folder_of(path, what, path)


def _check_folder_of(folder: Path, what: str, path: Path) -> None:
    """OutputPathError when the nearest existing one of ``folder`` and its parents is a file or not writable."""
    existing = next((p for p in (folder, *folder.parents) if p.exists()), Path("."))
    if not existing.is_dir():
        raise OutputPathError(f"{what} {path}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputPathError(f"{what} {path}: folder {existing} is not writable")


def name_text(name: str) -> str:
    """A file or folder name as text, the same under every locale: Python decodes names with the locale's encoding
    and keeps undecodable bytes as surrogates (a UTF-8 ``café`` reads as ``'caf\\udcc3\\udca9'`` under ``LANG=C``);
    those bytes are decoded as UTF-8 here (U+FFFD where they are not UTF-8). For class names and plot labels; open
    files with the name as listed."""
    if not any("\udc80" <= ch <= "\udcff" for ch in name):
        return name
    return name.encode("utf-8", errors="surrogateescape").decode("utf-8", errors="replace")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
