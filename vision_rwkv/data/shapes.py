"""Shapes: a deterministic, procedural image dataset embedded in the package (no files, no downloads).

Each sample is one coloured geometric shape on a textured background, rendered from a random stream seeded by
``(seed, split, index)`` with numpy's PCG64, so the same index, split and seed give the identical sample on any
machine. A sample carries:

- ``image``: (H, W, 3) uint8 RGB (default 64 x 64; any size, non-square allowed);
- ``label``: the shape class, an index into :data:`CLASS_NAMES`;
- ``captions``: several DISTINCT natural-language descriptions (colour, shape, size, position, background) in
  different phrasings, e.g. ``"a small red triangle in the top left corner"``,
  ``"top-left: little red triangle on a striped background"``;
- ``mask``: (H, W) uint8, 0 = background, ``label + 1`` on the shape's pixels (a pixel belongs to the shape when at
  least half of its 2x2 sub-samples fall inside it);
- ``attributes``: dict with ``shape``, ``color``, ``size``, ``position``, ``background``, ``center`` (x, y in
  pixels), ``radius`` (pixels), ``rotation`` (radians).

Splits ``"train"``, ``"val"``, ``"test"`` use disjoint random streams (the split is part of the seed).

Public API::

    CLASS_NAMES            # ("circle", "square", "triangle", "star", "cross", "hexagon", "crescent", "ring")
    SEG_CLASS_NAMES        # ("background",) + CLASS_NAMES  (segmentation class ids = mask values)
    COLOR_NAMES, SIZE_NAMES, POSITION_NAMES, BACKGROUND_NAMES
    ZERO_SHOT_TEMPLATES    # prompt templates with one "{}" for a class name, e.g. "a photo of a {}."
    DEFAULT_LENGTHS        # {"train": 4000, "val": 1000, "test": 1000}
    make_sample(index, split="train", seed=0, image_size=64, num_captions=5) -> ShapeSample
    drawn_attributes(index, split="train", seed=0)  # {shape, color, size, background} without rendering
    ShapesDataset(split, length, seed, image_size, num_captions, cache=False)   # raw samples (ShapeSample)
    ShapesClassification(..., transform)   # (image, label)
    ShapesCaptions(..., transform)         # (image, list[str] captions); collate with `collate_captions`
    ShapesSegmentation(..., transform)     # (image, mask)

Transforms: the classification and caption datasets call ``transform(pil_image)`` (torchvision / timm
``create_transform`` convention); the segmentation dataset calls ``transform(image=ndarray, mask=ndarray)`` and
reads ``["image"]`` and ``["mask"]`` from the result (albumentations convention). With ``transform=None`` images
come back as float tensors (3, H, W) in [0, 1] and masks as int64 tensors (H, W). ``cache=True`` keeps rendered
samples in memory (per process; about H*W*4 bytes each) so later epochs skip rendering (~2 ms per 64x64 sample).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

__all__ = [
    "CLASS_NAMES", "SEG_CLASS_NAMES", "COLOR_NAMES", "SIZE_NAMES", "POSITION_NAMES", "BACKGROUND_NAMES",
    "ZERO_SHOT_TEMPLATES", "DEFAULT_LENGTHS", "SPLITS", "ShapeSample", "make_sample", "ShapesDataset",
    "ShapesClassification", "ShapesCaptions", "ShapesSegmentation", "collate_captions", "DRAWN_ATTRIBUTES",
    "drawn_attributes",
]

CLASS_NAMES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross", "hexagon", "crescent", "ring")
SEG_CLASS_NAMES: tuple[str, ...] = ("background",) + CLASS_NAMES
SPLITS: tuple[str, ...] = ("train", "val", "test")
DEFAULT_LENGTHS: dict[str, int] = {"train": 4000, "val": 1000, "test": 1000}
_SPLIT_KEYS = {"train": 101, "val": 202, "test": 303}

# Saturated shape colours (RGB in [0, 1]); backgrounds are low-saturation greys, so every shape stands out.
_COLORS: dict[str, tuple[float, float, float]] = {
    "red": (0.86, 0.10, 0.10),
    "green": (0.10, 0.68, 0.20),
    "blue": (0.12, 0.28, 0.92),
    "yellow": (0.96, 0.86, 0.10),
    "orange": (0.97, 0.52, 0.05),
    "purple": (0.55, 0.14, 0.76),
    "cyan": (0.08, 0.80, 0.86),
    "pink": (0.97, 0.45, 0.72),
}
COLOR_NAMES: tuple[str, ...] = tuple(_COLORS)

# Shape radius as a fraction of min(H, W).
_SIZES: dict[str, tuple[float, float]] = {"small": (0.16, 0.21), "medium": (0.23, 0.29), "large": (0.31, 0.38)}
SIZE_NAMES: tuple[str, ...] = tuple(_SIZES)
_SIZE_SYNONYMS = {"small": ("small", "little", "tiny"), "medium": ("medium-sized", "mid-sized", "medium"),
                  "large": ("large", "big", "huge")}

POSITION_NAMES: tuple[str, ...] = ("top left", "top", "top right", "left", "center", "right",
                                    "bottom left", "bottom", "bottom right")
_POSITION_IN = {"top left": "in the top left corner", "top": "at the top", "top right": "in the top right corner",
                "left": "on the left", "center": "in the center", "right": "on the right",
                "bottom left": "in the bottom left corner", "bottom": "at the bottom",
                "bottom right": "in the bottom right corner"}
_POSITION_SHORT = {"top left": "top-left", "top": "top", "top right": "top-right", "left": "left",
                   "center": "center", "right": "right", "bottom left": "bottom-left", "bottom": "bottom",
                   "bottom right": "bottom-right"}

BACKGROUND_NAMES: tuple[str, ...] = ("noisy", "striped", "gradient", "checkered")

ZERO_SHOT_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "a picture of a {}.",
    "a drawing of a {}.",
    "a {} on a textured background.",
    "an image showing a {}.",
)

_SUPERSAMPLE = 2


@dataclass
class ShapeSample:
    """One rendered sample (see the module docstring for the fields)."""
    image: np.ndarray
    label: int
    captions: list[str]
    mask: np.ndarray
    attributes: dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------- geometry
def _regular_polygon(n: int, radius: float = 1.0, phase: float = np.pi / 2) -> np.ndarray:
    ang = phase + 2 * np.pi * np.arange(n) / n
    return np.stack([radius * np.cos(ang), radius * np.sin(ang)], axis=1)


def _star(points: int = 5, outer: float = 1.0, inner: float = 0.45) -> np.ndarray:
    ang = np.pi / 2 + np.pi * np.arange(2 * points) / points
    rad = np.where(np.arange(2 * points) % 2 == 0, outer, inner)
    return np.stack([rad * np.cos(ang), rad * np.sin(ang)], axis=1)


def _cross(arm: float = 0.95, half_width: float = 0.32) -> np.ndarray:
    a, w = arm, half_width
    return np.array([(-w, a), (w, a), (w, w), (a, w), (a, -w), (w, -w), (w, -a), (-w, -a), (-w, -w), (-a, -w),
                     (-a, w), (-w, w)], dtype=np.float64)


_POLYGONS = {
    "square": _regular_polygon(4, 0.92, np.pi / 4),
    "triangle": _regular_polygon(3, 1.0, np.pi / 2) + np.array([0.0, -0.12]),
    "star": _star(),
    "cross": _cross(),
    "hexagon": _regular_polygon(6, 0.95, 0.0),
}


def _inside_polygon(x: np.ndarray, y: np.ndarray, poly: np.ndarray) -> np.ndarray:
    """Even-odd rule point-in-polygon test, vectorised over points."""
    inside = np.zeros(x.shape, dtype=bool)
    n = len(poly)
    for i in range(n):
        xi, yi = poly[i]
        xj, yj = poly[(i + 1) % n]
        crosses = (yi > y) != (yj > y)
        with np.errstate(divide="ignore", invalid="ignore"):
            x_int = (xj - xi) * (y - yi) / (yj - yi) + xi
        inside ^= crosses & (x < x_int)
    return inside


def _inside_shape(shape: str, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Inside test in the shape's unit frame (radius 1, y pointing up)."""
    if shape in _POLYGONS:
        return _inside_polygon(x, y, _POLYGONS[shape])
    r2 = x * x + y * y
    if shape == "circle":
        return r2 <= 0.9 ** 2
    if shape == "ring":
        return (r2 <= 0.95 ** 2) & (r2 >= 0.55 ** 2)
    if shape == "crescent":
        return (r2 <= 0.95 ** 2) & ((x - 0.45) ** 2 + y ** 2 >= 0.78 ** 2)
    raise ValueError(f"unknown shape {shape!r}")


# ----------------------------------------------------------------------------------------------- textures
def _value_noise(rng: np.random.Generator, h: int, w: int, cells: int) -> np.ndarray:
    """Smooth noise in [0, 1]: a random (cells+1)^2 grid bilinearly upsampled to (h, w)."""
    grid = rng.random((cells + 1, cells + 1))
    ys = np.linspace(0, cells, h)
    xs = np.linspace(0, cells, w)
    rows = np.stack([np.interp(xs, np.arange(cells + 1), grid[i]) for i in range(cells + 1)])
    return np.stack([np.interp(ys, np.arange(cells + 1), rows[:, j]) for j in range(w)], axis=1)


def _background(rng: np.random.Generator, kind: str, h: int, w: int) -> np.ndarray:
    grey = rng.uniform(0.3, 0.7)
    tint = rng.uniform(-0.07, 0.07, size=3)
    c1 = np.clip(grey + tint, 0, 1)
    c2 = np.clip(c1 + rng.choice([-1.0, 1.0]) * rng.uniform(0.1, 0.22), 0, 1)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    theta = rng.uniform(0, np.pi)
    proj = (xx * np.cos(theta) + yy * np.sin(theta)) / max(h, w)
    if kind == "noisy":
        t = _value_noise(rng, h, w, int(rng.integers(3, 8)))
    elif kind == "striped":
        period = rng.uniform(0.08, 0.2)
        t = (np.floor(proj / period) % 2).astype(np.float64)
    elif kind == "gradient":
        t = (proj - proj.min()) / max(proj.max() - proj.min(), 1e-9)
    elif kind == "checkered":
        cell = rng.uniform(0.08, 0.2) * max(h, w)
        t = ((np.floor(xx / cell) + np.floor(yy / cell)) % 2).astype(np.float64)
    else:
        raise ValueError(f"unknown background {kind!r}")
    return c1 * (1 - t[..., None]) + c2 * t[..., None]


# ----------------------------------------------------------------------------------------------- captions
def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _captions(rng: np.random.Generator, shape: str, color: str, size: str, position: str, bg: str,
              count: int) -> list[str]:
    def syn() -> str:
        return _SIZE_SYNONYMS[size][int(rng.integers(len(_SIZE_SYNONYMS[size])))]

    pos_in, pos_short = _POSITION_IN[position], _POSITION_SHORT[position]
    s1, s2, s3, s4 = syn(), syn(), syn(), syn()
    options = [
        f"{_article(size)} {size} {color} {shape} {pos_in}",
        f"{pos_short}: {s1} {color} {shape} on a {bg} background",
        f"{_article(color)} {color} {shape} on a {bg} background",
        f"a photo of {_article(s2)} {s2} {color} {shape}.",
        f"there is {_article(color)} {color} {shape} {pos_in}, and it is {size}.",
        f"{s3} {shape}, coloured {color}, {pos_in}",
        f"an image of a {shape} in {color} {pos_in}, with a {bg} background",
        f"the {bg} background has {_article(s4)} {s4} {color} {shape} {pos_in}",
    ]
    order = rng.permutation(len(options))
    out: list[str] = []
    for i in order:
        if options[i] not in out:
            out.append(options[i])
        if len(out) == count:
            break
    return out


# ----------------------------------------------------------------------------------------------- sampling
def _as_hw(image_size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(image_size, int):
        h = w = image_size
    else:
        h, w = (int(v) for v in image_size)
    if h < 8 or w < 8:
        raise ValueError(f"Shapes image_size must be at least 8x8, got {(h, w)}")
    return h, w


def _position_name(cx: float, cy: float, h: int, w: int) -> str:
    col = "left" if cx < w / 3 else ("right" if cx > 2 * w / 3 else "")
    row = "top" if cy < h / 3 else ("bottom" if cy > 2 * h / 3 else "")
    name = f"{row} {col}".strip()
    return name or "center"


def make_sample(index: int, split: str = "train", seed: int = 0, image_size: int | Sequence[int] = 64,
                num_captions: int = 5) -> ShapeSample:
    """Render sample ``index`` of ``split`` deterministically (same arguments -> identical sample)."""
    if split not in _SPLIT_KEYS:
        raise ValueError(f"unknown Shapes split {split!r}; expected one of {SPLITS}")
    if index < 0:
        raise IndexError(f"Shapes index must be >= 0, got {index}")
    if not 1 <= num_captions <= 8:
        raise ValueError(f"num_captions must be in [1, 8], got {num_captions}")
    h, w = _as_hw(image_size)
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(seed), _SPLIT_KEYS[split], int(index)])))

    label = int(rng.integers(len(CLASS_NAMES)))
    shape = CLASS_NAMES[label]
    color = COLOR_NAMES[int(rng.integers(len(COLOR_NAMES)))]
    size = SIZE_NAMES[int(rng.integers(len(SIZE_NAMES)))]
    bg_kind = BACKGROUND_NAMES[int(rng.integers(len(BACKGROUND_NAMES)))]
    radius = rng.uniform(*_SIZES[size]) * min(h, w)
    cx = rng.uniform(radius, w - radius)
    cy = rng.uniform(radius, h - radius)
    rotation = rng.uniform(0, 2 * np.pi)

    # Shape coverage on a supersampled pixel grid, in the shape's unit frame.
    s = _SUPERSAMPLE
    ys, xs = np.mgrid[0:h * s, 0:w * s].astype(np.float64)
    px, py = (xs + 0.5) / s - cx, (ys + 0.5) / s - cy
    cos_r, sin_r = np.cos(rotation), np.sin(rotation)
    ux = (cos_r * px + sin_r * py) / radius
    uy = -(-sin_r * px + cos_r * py) / radius  # image y points down, unit frame y up
    coverage = _inside_shape(shape, ux, uy).reshape(h, s, w, s).mean(axis=(1, 3))

    background = _background(rng, bg_kind, h, w)
    base = np.array(_COLORS[color]) + rng.uniform(-0.06, 0.06, size=3)
    shade_dir = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    shade = 0.08 * ((xx - cx) * np.cos(shade_dir) + (yy - cy) * np.sin(shade_dir)) / radius
    fill = np.clip(base[None, None, :] + shade[..., None], 0, 1)
    img = background * (1 - coverage[..., None]) + fill * coverage[..., None]
    img = img + rng.normal(0, 0.025, size=img.shape)
    image = np.clip(np.round(img * 255), 0, 255).astype(np.uint8)
    mask = np.where(coverage >= 0.5, label + 1, 0).astype(np.uint8)

    position = _position_name(cx, cy, h, w)
    captions = _captions(rng, shape, color, size, position, bg_kind, num_captions)
    attributes = dict(shape=shape, color=color, size=size, position=position, background=bg_kind,
                      center=(float(cx), float(cy)), radius=float(radius), rotation=float(rotation))
    return ShapeSample(image=image, label=label, captions=captions, mask=mask, attributes=attributes)


# The attributes make_sample draws first, in draw order (the cheap part of a sample: no rendering).
DRAWN_ATTRIBUTES: tuple[str, ...] = ("shape", "color", "size", "background")
_DRAWN_NAMES = {"shape": CLASS_NAMES, "color": COLOR_NAMES, "size": SIZE_NAMES, "background": BACKGROUND_NAMES}


def drawn_attributes(index: int, split: str = "train", seed: int = 0) -> dict[str, str]:
    """Shape, colour, size and background of sample ``index`` without rendering it (~0.1 ms; equal to the
    corresponding ``make_sample(...).attributes`` entries)."""
    if split not in _SPLIT_KEYS:
        raise ValueError(f"unknown Shapes split {split!r}; expected one of {SPLITS}")
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(seed), _SPLIT_KEYS[split], int(index)])))
    return {name: _DRAWN_NAMES[name][int(rng.integers(len(_DRAWN_NAMES[name])))] for name in DRAWN_ATTRIBUTES}


def _label_of(index: int, split: str, seed: int) -> int:
    return CLASS_NAMES.index(drawn_attributes(index, split, seed)["shape"])


# ----------------------------------------------------------------------------------------------- datasets
class ShapesDataset(Dataset):
    """Raw Shapes samples (:class:`ShapeSample`) of one split; ``length`` defaults to ``DEFAULT_LENGTHS[split]``."""

    def __init__(self, split: str = "train", length: int | None = None, seed: int = 0,
                 image_size: int | Sequence[int] = 64, num_captions: int = 5, cache: bool = False):
        if split not in _SPLIT_KEYS:
            raise ValueError(f"unknown Shapes split {split!r}; expected one of {SPLITS}")
        self.split = split
        self.length = int(DEFAULT_LENGTHS[split] if length is None else length)
        if self.length <= 0:
            raise ValueError(f"Shapes length must be positive, got {self.length}")
        self.seed = int(seed)
        self.image_size = _as_hw(image_size)
        self.num_captions = int(num_captions)
        self.classes = list(CLASS_NAMES)
        self.cache = cache
        self._cache: dict[int, ShapeSample] = {}

    def __len__(self) -> int:
        return self.length

    def sample(self, index: int) -> ShapeSample:
        if not -self.length <= index < self.length:
            raise IndexError(f"index {index} out of range for Shapes split of length {self.length}")
        index = index % self.length
        if not self.cache:
            return make_sample(index, self.split, self.seed, self.image_size, self.num_captions)
        if index not in self._cache:  # memoised per process (each data-loader worker keeps its own)
            self._cache[index] = make_sample(index, self.split, self.seed, self.image_size, self.num_captions)
        return self._cache[index]

    def __getitem__(self, index: int) -> ShapeSample:
        return self.sample(index)

    @property
    def targets(self) -> list[int]:
        """Class label of every sample (cheap: does not render images)."""
        return [_label_of(i, self.split, self.seed) for i in range(self.length)]


def _default_image(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(image).permute(2, 0, 1).float().div_(255.0)


class ShapesClassification(ShapesDataset):
    """``(image, label)``; ``transform`` receives a PIL RGB image."""

    def __init__(self, split: str = "train", length: int | None = None, seed: int = 0,
                 image_size: int | Sequence[int] = 64, transform: Callable | None = None, cache: bool = False):
        super().__init__(split, length, seed, image_size, num_captions=1, cache=cache)
        self.transform = transform

    def __getitem__(self, index: int):
        s = self.sample(index)
        img = _default_image(s.image) if self.transform is None else self.transform(Image.fromarray(s.image))
        return img, s.label


class ShapesCaptions(ShapesDataset):
    """``(image, captions)`` with ``captions`` a list of distinct strings; ``transform`` receives a PIL image."""

    def __init__(self, split: str = "train", length: int | None = None, seed: int = 0,
                 image_size: int | Sequence[int] = 64, num_captions: int = 5, transform: Callable | None = None,
                 cache: bool = False):
        super().__init__(split, length, seed, image_size, num_captions, cache=cache)
        self.transform = transform

    def __getitem__(self, index: int):
        s = self.sample(index)
        img = _default_image(s.image) if self.transform is None else self.transform(Image.fromarray(s.image))
        return img, list(s.captions)


class ShapesSegmentation(ShapesDataset):
    """``(image, mask)``; ``transform(image=HxWx3 uint8, mask=HxW uint8)`` returns a dict (albumentations style)."""

    num_classes = len(SEG_CLASS_NAMES)

    def __init__(self, split: str = "train", length: int | None = None, seed: int = 0,
                 image_size: int | Sequence[int] = 64, transform: Callable | None = None, cache: bool = False):
        super().__init__(split, length, seed, image_size, num_captions=1, cache=cache)
        self.transform = transform
        self.classes = list(SEG_CLASS_NAMES)

    def __getitem__(self, index: int):
        s = self.sample(index)
        if self.transform is None:
            return _default_image(s.image), torch.from_numpy(s.mask.astype(np.int64))
        out = self.transform(image=s.image, mask=s.mask)
        img, mask = out["image"], out["mask"]
        if isinstance(mask, np.ndarray):
            mask = torch.from_numpy(mask.astype(np.int64))
        elif isinstance(mask, torch.Tensor):
            mask = mask.long()
        return img, mask


def collate_captions(batch: list[tuple[Any, list[str]]]) -> tuple[torch.Tensor, list[list[str]]]:
    """Collate ``(image, captions)`` pairs into (stacked images, list of caption lists)."""
    images = torch.stack([torch.as_tensor(b[0]) for b in batch])
    return images, [list(b[1]) for b in batch]
