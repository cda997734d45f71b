"""Write a tree of small text files for a test (config trees of the mmcv converter tests)."""
from __future__ import annotations

from pathlib import Path
from typing import Mapping


def write_files(root: Path, files: Mapping[str, str]) -> Path:
    """Write {relative name: text} under `root` (folders made as needed); returns the first file's path."""
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root / next(iter(files))
