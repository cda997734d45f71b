"""A small segmentation dataset in mmseg's folder layout, written for a test."""
from __future__ import annotations

from pathlib import Path
from typing import Tuple

import numpy as np
from PIL import Image


def write_seg_folders(root: Path, n: int = 4, classes: int = 3, size: Tuple[int, int] = (32, 32),
                      dirs: Tuple[str, str] = ("img_dir", "ann_dir")) -> None:
    """`n` random RGB images and label maps (ids below `classes`) of `size` (h, w) per split, as
    root/<image dir>/{train,val}/<i>.png and root/<annotation dir>/{train,val}/<i>.png."""
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for i in range(n):
            for sub, array in ((dirs[0], rng.integers(0, 255, (*size, 3), dtype=np.uint8)),
                               (dirs[1], rng.integers(0, classes, size, dtype=np.uint8))):
                (root / sub / split).mkdir(parents=True, exist_ok=True)
                Image.fromarray(array).save(root / sub / split / f"{i}.png")
