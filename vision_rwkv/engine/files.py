"""Text files written whole: a temporary file of its own in the target's folder, then ``os.replace`` (the tools'
result tables, the run folder's config and metric logs). Imports nothing of the package, so every module can use it
(checkpoints: :func:`vision_rwkv.engine.checkpoint.atomic_save`)."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Union

__all__ = ["write_text_atomic"]


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


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
