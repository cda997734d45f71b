"""Classification datasets from files: ImageFolder trees and CSV lists of (path, label).

Images are opened with PIL and converted to RGB (grayscale, palette, RGBA, CMYK, 16-bit all work). An image that
cannot be read (missing, truncated, not an image) is skipped: ``__getitem__`` returns ``None``, the loader's
collate (``vision_rwkv.engine.EpochLoader``, or :func:`vision_rwkv.engine.collate_drop_none`) drops it and
counts it, and the dataset warns once per file with the reason. A missing root, an empty folder, or a CSV
without the needed columns raises an error that names the problem.
"""
from __future__ import annotations

import csv
import os
import warnings
from pathlib import Path
from typing import Callable, Sequence

from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from ..engine.files import name_text

__all__ = ["IMG_EXTENSIONS", "UNREADABLE_IMAGE_ERRORS", "load_rgb", "to_rgb", "eight_bit", "ImageFolderDataset",
           "CsvImageDataset"]

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".gif")
# what opening a missing, truncated, oversized or non-image file raises (skipped / reported, never fatal)
UNREADABLE_IMAGE_ERRORS = (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError)


def load_rgb(path: str | os.PathLike) -> Image.Image:
    """Open an image file as RGB (see `to_rgb`). A truncated file is an error (skipped by the datasets), unless
    the process set Pillow's ``ImageFile.LOAD_TRUNCATED_IMAGES``."""
    with Image.open(path) as im:
        im.load()
        return to_rgb(im)


def to_rgb(im: Image.Image) -> Image.Image:
    """An opened image as RGB, as timm, open_clip and mmseg read one: alpha dropped (not composited), palette /
    greyscale / CMYK converted, 16-bit greyscale (and 32-bit integer images with values above 255) scaled to 8
    bits (they saturated to white)."""
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")  # (Pillow warns on a palette with transparency converted straight to RGB)
    return eight_bit(im).convert("RGB")


def eight_bit(im: Image.Image) -> Image.Image:
    """16-bit greyscale (and a 32-bit integer image with values above 255) scaled to 8 bits (``v / 256``, as
    OpenCV's ``imread`` reduces 16-bit images); any other image unchanged."""
    if im.mode in ("I;16", "I;16B", "I;16L") or (im.mode == "I" and im.getextrema()[1] > 255):
        return im.point(lambda v: v * (1 / 256)).convert("L")
    return im


class _SkippingDataset(Dataset):
    """Shared ``__getitem__``: load, transform, return ``None`` (and warn once) for unreadable files."""

    samples: list[tuple[str, int]]
    transform: Callable | None

    def __init__(self) -> None:
        self.num_failed = 0
        self._warned: set[str] = set()

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def targets(self) -> list[int]:
        return [t for _, t in self.samples]

    def __getitem__(self, index: int):
        path, target = self.samples[index]
        try:
            img = load_rgb(path)
        except UNREADABLE_IMAGE_ERRORS as err:
            self.num_failed += 1
            if path not in self._warned:
                self._warned.add(path)
                warnings.warn(f"skipping unreadable image {path}: {type(err).__name__}: {err}", stacklevel=2)
            return None
        if self.transform is not None:
            img = self.transform(img)
        return img, target


class ImageFolderDataset(_SkippingDataset):
    """``root/<class name>/**/<image>``: classes are the sorted sub-folder names (or ``classes`` given: a class
    without a folder is an error, unless ``allow_missing`` - a validation split - and some folder exists)."""

    def __init__(self, root: str | os.PathLike, transform: Callable | None = None,
                 extensions: Sequence[str] = IMG_EXTENSIONS, classes: Sequence[str] | None = None,
                 allow_missing: bool = False):
        super().__init__()
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"image folder root not found: {self.root}")
        # class name -> its folder's name as listed (the same class names under every locale: name_text)
        folders = {name_text(p.name): p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")}
        found = sorted(folders)
        if classes is None:
            classes = found
        else:
            missing = [c for c in classes if c not in found]
            if missing and (not allow_missing or len(missing) == len(classes)):
                raise FileNotFoundError(f"class folders missing under {self.root}: {missing[:10]}")
        if not classes:
            raise ValueError(f"image folder {self.root} has no class sub-folders")
        self.classes = list(classes)
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        exts = tuple(e.lower() for e in extensions)
        self.samples = []
        for c in self.classes:
            for dirpath, files in (_walk_visible(self.root / folders[c]) if c in folders else ()):
                for f in sorted(files):
                    if f.lower().endswith(exts):
                        self.samples.append((os.path.join(dirpath, f), self.class_to_idx[c]))
        if not self.samples:
            raise ValueError(f"image folder {self.root} has no images with extensions {list(exts)}")
        extra = [c for c in found if c not in self.class_to_idx and _has_files(self.root / folders[c], exts)]
        if extra:  # e.g. a validation folder with a class the training folder lacks: its images would be dropped
            raise ValueError(f"image folder {self.root} has class folders with images that are not among the "
                             f"{len(self.classes)} classes given: {extra[:10]}")
        self.transform = transform


def _walk_visible(folder: Path):
    """(folder, file names) under ``folder``, sorted, following symlinks but not into a folder already visited (a
    link loop) and skipping hidden files and folders (``.ipynb_checkpoints`` copies, macOS ``._*`` files)."""
    seen: set[str] = set()
    out = []
    for dirpath, dirs, files in os.walk(folder, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        out.append((dirpath, [f for f in files if not f.startswith(".")]))
    return sorted(out)


def _has_files(folder: Path, exts: tuple[str, ...]) -> bool:
    return any(f.lower().endswith(exts) for _, files in _walk_visible(folder) for f in files)


class CsvImageDataset(_SkippingDataset):
    """A CSV with a header naming ``path_col`` and ``label_col``; relative paths are resolved against ``root``
    (default: the CSV's folder). Labels are integers, or class names (mapped to the sorted names, or to the
    order of ``classes`` if given). With ``label_indices`` and ``classes``, integer labels that are not all class
    names are indices into ``classes`` (as an annotation list's are). ``integer_labels`` says whether every label
    is an integer. ``delimiter`` None: a tab for ``.tsv`` / ``.tab`` files, else a comma. A row without a path or a
    label is an error naming its line."""

    def __init__(self, csv_path: str | os.PathLike, root: str | os.PathLike | None = None,
                 transform: Callable | None = None, path_col: str = "path", label_col: str = "label",
                 classes: Sequence[str] | None = None, delimiter: str | None = None, label_indices: bool = False):
        super().__init__()
        self.csv_path = Path(csv_path)
        if not self.csv_path.is_file():
            raise FileNotFoundError(f"CSV file not found: {self.csv_path}")
        self.root = Path(root) if root is not None else self.csv_path.parent
        if delimiter is None:
            delimiter = "\t" if self.csv_path.suffix.lower() in (".tsv", ".tab") else ","
        with open(self.csv_path, newline="", encoding="utf-8-sig") as f:  # (a spreadsheet's BOM is not a name)
            reader = csv.DictReader(f, delimiter=delimiter)
            cols = reader.fieldnames or []
            for col in (path_col, label_col):
                if col not in cols:
                    raise ValueError(f"CSV {self.csv_path} has no column {col!r} (columns: {cols})")
            rows = []
            for r in reader:
                path, label = (r[path_col] or "").strip(), (r[label_col] or "").strip()
                if not path or not label:
                    what, col = ("path", path_col) if not path else ("label", label_col)
                    raise ValueError(f"CSV {self.csv_path} line {reader.line_num}: no {what} (column {col!r})")
                rows.append((path, label))
        if not rows:
            raise ValueError(f"CSV {self.csv_path} has no rows")
        self.integer_labels = all(_is_int(lbl) for _, lbl in rows)
        names = [str(c) for c in classes] if classes is not None else None
        by_name = names is not None and all(lbl in names for _, lbl in rows)
        if self.integer_labels and not by_name and (names is None or label_indices):
            labels = [int(lbl) for _, lbl in rows]
            if min(labels) < 0:
                raise ValueError(f"CSV {self.csv_path} has negative labels")
            self.classes = names if names is not None else [str(i) for i in range(max(labels) + 1)]
            if max(labels) >= len(self.classes):
                raise ValueError(f"CSV {self.csv_path} has label {max(labels)}, past the {len(self.classes)} classes "
                                 f"({', '.join(self.classes[:5])}{', ...' if len(self.classes) > 5 else ''})")
        else:
            self.classes = names if names is not None else sorted({lbl for _, lbl in rows})
            index = {c: i for i, c in enumerate(self.classes)}
            unknown = sorted({lbl for _, lbl in rows if lbl not in index})
            if unknown:
                raise ValueError(f"CSV {self.csv_path} has labels not in classes: {unknown[:10]}")
            labels = [index[lbl] for _, lbl in rows]
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        self.samples = [(str(p if os.path.isabs(p) else self.root / p), y) for (p, _), y in zip(rows, labels)]
        self.transform = transform


class AnnFileDataset(_SkippingDataset):
    """mmcls's annotation list (``ann_file``): one ``<path> <class index>`` per line, paths relative to ``root``
    (mmcls's ``data_prefix``), as ImageNet's ``meta/val.txt`` lists the flat validation folder. The indices count
    ``classes`` (e.g. the training folder's sorted class names, ImageNet's order too); without ``classes``, the
    names are the indices. A line without a path and an integer label, or with a label past the classes, is an
    error naming the line."""

    def __init__(self, ann_file: str | os.PathLike, root: str | os.PathLike, transform: Callable | None = None,
                 classes: Sequence[str] | None = None):
        super().__init__()
        self.ann_file, self.root = Path(ann_file), Path(root)
        if not self.ann_file.is_file():
            raise FileNotFoundError(f"annotation file not found: {self.ann_file}")
        if not self.root.is_dir():
            raise FileNotFoundError(f"image folder root not found: {self.root} (the folder {self.ann_file} lists)")
        rows, lines = [], []
        for num, line in enumerate(self.ann_file.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            parts = line.strip().rsplit(None, 1)  # (mmcls: the last field is the label; names may hold spaces)
            if len(parts) != 2 or not _is_int(parts[1]) or int(parts[1]) < 0:
                raise ValueError(f"{self.ann_file} line {num}: expected '<path> <class index>', got {line!r}")
            rows.append((parts[0], int(parts[1])))
            lines.append(num)
        if not rows:
            raise ValueError(f"annotation file {self.ann_file} lists no images")
        top = max(label for _, label in rows)
        self.classes = list(classes) if classes is not None else [str(i) for i in range(top + 1)]
        if top >= len(self.classes):
            num = lines[[label for _, label in rows].index(top)]
            raise ValueError(f"{self.ann_file} line {num}: class index {top} is past the {len(self.classes)} classes "
                             f"({', '.join(self.classes[:5])}{', ...' if len(self.classes) > 5 else ''})")
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        self.samples = [(str(p if os.path.isabs(p) else self.root / p), y) for p, y in rows]
        self.transform = transform


def _is_int(s: str) -> bool:
    try:
        int(s)
        return True
    except ValueError:
        return False
