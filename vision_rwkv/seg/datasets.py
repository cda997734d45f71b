"""Segmentation datasets: image-dir + mask-dir pairs (generic, ADE20K, Cityscapes layouts) and Shapes masks.

Every dataset returns a dict ``{"image", "mask", "name", "ori_size"}``: ``transform(image=HxWx3 uint8,
mask=HxW uint8)`` makes the tensors (see transforms.py); without a transform the image is a (3, H, W) float tensor
in [0, 255] and the mask an int64 (H, W) tensor. Labels are checked on load: the mask must have the image's size
and its values must be class ids in [0, num_classes) or the ignore index; errors name the file (for image /
annotation folders the annotation file, with the values as stored there, before ``reduce_zero_label``).
"""
from __future__ import annotations

import warnings
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch.utils.data import Dataset

from vision_rwkv.data.folder import to_rgb

from .classes import ADE20K_CLASSES, CITYSCAPES_CLASSES

__all__ = ["SegDataset", "FolderSegDataset", "ADE20KDataset", "CityscapesDataset", "ShapesSegDataset",
           "check_label_map"]


def check_label_map(mask: np.ndarray, num_classes: int, ignore_index: int, where: str) -> None:
    """Raise ValueError naming `where` when `mask` holds values outside [0, num_classes) other than ignore_index."""
    values = np.unique(mask)
    bad = values[((values < 0) | (values >= num_classes)) & (values != ignore_index)]
    if bad.size:
        raise ValueError(f"{where}: label values {bad.tolist()[:10]} are outside the class range [0, {num_classes}) "
                         f"and are not the ignore index {ignore_index}")


class SegDataset(Dataset, ABC):
    """Base class: subclasses implement `__len__` and `load(index) -> (image HxWx3 uint8, mask HxW int, name)`."""

    classes: Sequence[str] = ()

    def __init__(self, transform: Callable | None = None, ignore_index: int = 255):
        self.transform = transform
        self.ignore_index = int(ignore_index)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @abstractmethod
    def load(self, index: int) -> tuple[np.ndarray, np.ndarray, str]:
        """Return (image HxWx3 uint8, mask HxW, name) of sample `index`."""

    def _exif_turned(self, index: int) -> bool:
        """Whether sample `index`'s image file has an EXIF orientation that turns it (file datasets only)."""
        samples = getattr(self, "samples", None)
        if not samples:
            return False
        try:
            with Image.open(samples[index][0]) as im:
                return im.getexif().get(0x0112, 1) not in (1, None)
        except (OSError, SyntaxError, UnidentifiedImageError):
            return False

    def check_labels(self, mask: np.ndarray, name: str) -> None:
        """Raise ValueError naming sample `name` when the loaded `mask` holds values that are not class ids or the
        ignore index."""
        check_label_map(mask, self.num_classes, self.ignore_index, f"label map of {name}")

    def __getitem__(self, index: int) -> dict[str, Any]:
        image, mask, name = self.load(index)
        if image.shape[:2] != mask.shape[:2]:
            turned = " (the image is turned upright by its EXIF orientation, as OpenCV / mmseg read it; the mask is " \
                "not)" if self._exif_turned(index) else ""
            raise ValueError(f"{name}: image size {image.shape[1]}x{image.shape[0]} (WxH) and mask size "
                             f"{mask.shape[1]}x{mask.shape[0]} differ{turned}")
        self.check_labels(mask, name)
        ori_size = torch.tensor(image.shape[:2])
        if self.transform is None:
            out = {"image": torch.from_numpy(image.transpose(2, 0, 1).copy()).float(),
                   "mask": torch.from_numpy(mask.astype(np.int64))}
        else:
            out = self.transform(image=image, mask=mask)
        sample = {"image": out["image"], "mask": out["mask"].long(), "name": name, "ori_size": ori_size}
        if "scaled" in out:  # the multi-scale test's resizes of the original image (SegTestTransform)
            sample["scaled"] = out["scaled"]
        return sample


class UnreadableImageError(ValueError):
    """An image or mask file that cannot be decoded (corrupt, truncated, not an image)."""


def read_seg_image(path: Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB of an image file as mmseg reads it (OpenCV): alpha dropped, 16-bit scaled to 8 bits,
    turned upright by its EXIF orientation (a phone photo); the one reader of training, evaluation and prediction.
    ValueError naming an unreadable file."""
    try:
        with Image.open(path) as im:
            return np.asarray(to_rgb(ImageOps.exif_transpose(im)))
    except (UnidentifiedImageError, OSError, SyntaxError, Image.DecompressionBombError) as err:
        raise UnreadableImageError(f"cannot read image {path}: {err}") from err


MASK_MODES = ("L", "P", "I", "I;16", "I;16B", "I;16L", "I;16N", "1")  # single-channel label images (any byte order)


def _read_mask(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as im:
            if im.mode not in MASK_MODES:
                raise ValueError(f"segmentation mask {path} must be a single-channel label image "
                                 f"(mode L/P/I/I;16), got mode {im.mode}")
            return np.asarray(im).astype(np.int64)
    except (UnidentifiedImageError, OSError, SyntaxError, Image.DecompressionBombError) as err:
        raise UnreadableImageError(f"cannot read mask {path}: {err}") from err


class FolderSegDataset(SegDataset):
    """Images under `img_dir` (recursively, files ending in `img_suffix`) paired with label images under `ann_dir`
    at the same relative path, the suffix replaced by `seg_map_suffix`.

    `reduce_zero_label` maps label 0 to the ignore index and shifts the others down by one (ADE20K).
    """

    def __init__(self, img_dir: str | Path, ann_dir: str | Path, classes: Sequence[str], img_suffix: str = ".jpg",
                 seg_map_suffix: str = ".png", reduce_zero_label: bool = False, ignore_index: int = 255,
                 transform: Callable | None = None):
        super().__init__(transform, ignore_index)
        self.img_dir, self.ann_dir = Path(img_dir), Path(ann_dir)
        self.classes = list(classes)
        if not self.classes:
            raise ValueError("a segmentation dataset needs a non-empty class list")
        self.reduce_zero_label = reduce_zero_label
        self._binary_warned = False
        for d, what in ((self.img_dir, "image"), (self.ann_dir, "annotation")):
            if not d.is_dir():
                raise FileNotFoundError(f"{what} directory not found: {d}")
        # the suffix in any case (.jpg finds .JPG too); hidden files and folders (.ipynb_checkpoints) left out
        images = sorted(p for p in self.img_dir.rglob("*") if p.name.lower().endswith(img_suffix.lower())
                        and not any(part.startswith(".") for part in p.relative_to(self.img_dir).parts)
                        and p.is_file())
        if not images:
            raise FileNotFoundError(f"no images ending in {img_suffix!r} under {self.img_dir}")
        self.samples: list[tuple[Path, Path]] = []
        missing = []
        for img in images:
            rel = img.relative_to(self.img_dir).as_posix()
            ann = self.ann_dir / (rel[: -len(img_suffix)] + seg_map_suffix)
            if ann.is_file():
                self.samples.append((img, ann))
            else:
                missing.append(str(ann))
        if missing:
            raise FileNotFoundError(f"{len(missing)} image(s) under {self.img_dir} have no mask, e.g. "
                                    f"{', '.join(missing[:3])}")

    def __len__(self) -> int:
        return len(self.samples)

    def check_labels(self, mask: np.ndarray, name: str) -> None:
        """Nothing to do: :meth:`load` checked the values as stored in the annotation file."""

    def _check_stored(self, stored: np.ndarray, ann_path: Path) -> None:
        """Raise ValueError naming the annotation file and its offending stored values: class ids are stored as
        [0, num_classes), or [1, num_classes] with reduce_zero_label (0: ignored); the ignore index is allowed."""
        n = self.num_classes
        values = np.unique(stored)
        if self.reduce_zero_label:
            ok = (values >= 0) & (values <= n)
            allowed = f"[1, {n}] (classes 0..{n - 1} stored as 1..{n} with reduce_zero_label; 0 is ignored)"
        else:
            ok = (values >= 0) & (values < n)
            allowed = f"the class range [0, {n})"
        bad = values[~ok & (values != self.ignore_index)]
        if (not self._binary_warned and n == 2 and not self.reduce_zero_label and self.ignore_index == 255
                and set(values.tolist()) == {0, 255}):
            self._binary_warned = True
            warnings.warn(f"label map {ann_path} holds only 0 and 255 in a 2-class dataset: 255 is data.ignore_index, "
                          "so its foreground is ignored in the loss and the metrics (mmseg's convention); store a "
                          "binary mask as 0 / 1, or set data.ignore_index to another value", stacklevel=2)
        if bad.size:
            shown = bad.tolist()[:10]
            more = f" and {bad.size - 10} more" if bad.size > 10 else ""
            raise ValueError(f"label map {ann_path}: stored label values {shown}{more} are outside {allowed} and "
                             f"are not the ignore index {self.ignore_index}")

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray, str]:
        img_path, ann_path = self.samples[index]
        image, mask = read_seg_image(img_path), _read_mask(ann_path)
        self._check_stored(mask, ann_path)
        if self.reduce_zero_label:
            mask = mask.copy()
            mask[mask == 0] = self.ignore_index + 1  # temporary marker, becomes ignore after the shift
            mask = mask - 1
            mask[mask == self.ignore_index - 1] = self.ignore_index  # the original ignore value, shifted
        return image, mask, str(img_path.relative_to(self.img_dir))


class ADE20KDataset(FolderSegDataset):
    """ADE20K (SceneParsing) layout: `root/images/{training,validation}/*.jpg` and
    `root/annotations/{training,validation}/*.png`; 150 classes, label 0 ("other") ignored."""

    SPLITS = {"train": "training", "val": "validation", "training": "training", "validation": "validation"}

    def __init__(self, root: str | Path, split: str = "training", transform: Callable | None = None,
                 ignore_index: int = 255):
        if split not in self.SPLITS:
            raise ValueError(f"unknown ADE20K split {split!r}; expected one of {sorted(self.SPLITS)}")
        s = self.SPLITS[split]
        if not (Path(root) / "images").is_dir() and (Path(root) / "ADEChallengeData2016" / "images").is_dir():
            raise FileNotFoundError(f"ADE20K root {root} has no images/ folder; its ADEChallengeData2016/ has: "
                                    f"data.root={Path(root) / 'ADEChallengeData2016'}")
        super().__init__(Path(root) / "images" / s, Path(root) / "annotations" / s, ADE20K_CLASSES, ".jpg", ".png",
                         reduce_zero_label=True, ignore_index=ignore_index, transform=transform)


class CityscapesDataset(FolderSegDataset):
    """Cityscapes layout: `root/leftImg8bit/{train,val}/<city>/*_leftImg8bit.png` with
    `root/gtFine/{train,val}/<city>/*_gtFine_labelTrainIds.png` (19 train ids, 255 ignored)."""

    def __init__(self, root: str | Path, split: str = "train", transform: Callable | None = None,
                 ignore_index: int = 255):
        if split not in ("train", "val", "test"):
            raise ValueError(f"unknown Cityscapes split {split!r}; expected train, val or test")
        super().__init__(Path(root) / "leftImg8bit" / split, Path(root) / "gtFine" / split, CITYSCAPES_CLASSES,
                         "_leftImg8bit.png", "_gtFine_labelTrainIds.png", ignore_index=ignore_index,
                         transform=transform)


class ShapesSegDataset(SegDataset):
    """The procedural Shapes dataset's masks (0 background, label + 1 on the shape), 9 classes."""

    def __init__(self, split: str = "train", length: int | None = None, seed: int = 0,
                 image_size: int | Sequence[int] = 64, transform: Callable | None = None, ignore_index: int = 255):
        from vision_rwkv.data.shapes import SEG_CLASS_NAMES, ShapesDataset

        super().__init__(transform, ignore_index)
        self.shapes = ShapesDataset(split, length=length, seed=seed, image_size=image_size, num_captions=1)
        self.classes = list(SEG_CLASS_NAMES)

    def __len__(self) -> int:
        return len(self.shapes)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray, str]:
        s = self.shapes.sample(index)
        return s.image, s.mask.astype(np.int64), f"shapes_{self.shapes.split}_{index:05d}"
