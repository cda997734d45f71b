"""Joint image + mask augmentation for segmentation (albumentations 2.x), mmseg's ADE20K recipe.

Train: random keep-ratio rescale (ratio 0.5-2.0 of a base (long, short) scale) -> random crop with
cat_max_ratio -> horizontal flip -> photometric distortion -> normalise -> pad to the crop size (image 0, mask
ignore index) -> tensors. Test: keep-ratio resize of the image only (the mask stays at its original size, since
predictions are resized back to it) -> normalise -> tensors.

Randomness: every call reseeds the albumentations transforms from Python's global `random` module, so a sample
loaded under the engine's per-sample seeding (`SeededSamples`) is augmented identically on every run / resume.
"""
from __future__ import annotations

import os
import random
from typing import Any, Sequence

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # no network version check on import

import albumentations as A  # noqa: E402
import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from albumentations.core.transforms_interface import DualTransform, ImageOnlyTransform  # noqa: E402

__all__ = ["compact_mask", "RandomResizeKeepRatio", "CatMaxRatioCrop", "PhotoMetricDistortion", "SegTrainTransform",
           "SegTestTransform", "keep_ratio_size", "ratio_size", "IMAGENET_MEAN", "IMAGENET_STD"]

IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)


def _pair(v: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(v, (int, np.integer)):
        return int(v), int(v)
    a, b = v
    return int(a), int(b)


def keep_ratio_size(h: int, w: int, scale: Sequence[float]) -> tuple[int, int]:
    """(H, W) after mmseg's keep-ratio resize to `scale` = (long, short): the largest size whose long side fits
    max(scale) and short side fits min(scale)."""
    long_edge, short_edge = max(scale), min(scale)
    f = min(long_edge / max(h, w), short_edge / min(h, w))
    return max(1, int(h * f + 0.5)), max(1, int(w * f + 0.5))


class RandomResizeKeepRatio(DualTransform):
    """Keep-ratio resize to `scale` x r, r ~ U(ratio_range) (no randomness when `ratio_range` is None);
    bilinear for the image, nearest for the mask."""

    def __init__(self, scale: Sequence[float], ratio_range: Sequence[float] | None = (0.5, 2.0), p: float = 1.0):
        super().__init__(p=p)
        self.scale = tuple(float(s) for s in scale)
        self.ratio_range = tuple(ratio_range) if ratio_range is not None else None

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        h, w = params["shape"][:2]
        r = 1.0 if self.ratio_range is None else self.py_random.uniform(*self.ratio_range)
        # (the scaled scale in whole pixels first, as mmseg's RandomResize draws it)
        return {"size": keep_ratio_size(h, w, [int(s * r) for s in self.scale])}

    def apply(self, img: np.ndarray, size: tuple[int, int], **params: Any) -> np.ndarray:
        return cv2.resize(img, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)

    def apply_to_mask(self, mask: np.ndarray, size: tuple[int, int], **params: Any) -> np.ndarray:
        return cv2.resize(mask, (size[1], size[0]), interpolation=cv2.INTER_NEAREST)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("scale", "ratio_range")


class CatMaxRatioCrop(DualTransform):
    """Random crop of at most `size` (H, W): up to `max_tries` crops are checked until one has no single class
    covering `cat_max_ratio` or more of its labelled (non-ignore) pixels; if none passes, one more is drawn and used
    unchecked (mmseg's RandomCrop: 10 checks, 11 crops at most). A side shorter than the crop is kept whole (pad
    afterwards)."""

    def __init__(self, size: int | Sequence[int], cat_max_ratio: float = 0.75, ignore_index: int = 255,
                 max_tries: int = 10, p: float = 1.0):
        super().__init__(p=p)
        self.size = _pair(size)
        self.cat_max_ratio = float(cat_max_ratio)
        self.ignore_index = int(ignore_index)
        self.max_tries = int(max_tries)

    def _random_box(self, h: int, w: int) -> tuple[int, int, int, int]:
        ch, cw = min(self.size[0], h), min(self.size[1], w)
        y1 = self.py_random.randint(0, h - ch)
        x1 = self.py_random.randint(0, w - cw)
        return y1, x1, y1 + ch, x1 + cw

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        h, w = params["shape"][:2]
        box = self._random_box(h, w)
        mask = data.get("mask")
        if mask is not None and self.cat_max_ratio < 1.0:
            for _ in range(self.max_tries):
                if self.passes(mask[box[0]:box[2], box[1]:box[3]]):
                    break
                box = self._random_box(h, w)
        return {"box": box}

    def passes(self, crop_mask: np.ndarray) -> bool:
        """True when the crop has > 1 labelled class and none covers more than cat_max_ratio of labelled pixels."""
        _, counts = np.unique(crop_mask[crop_mask != self.ignore_index], return_counts=True)
        return len(counts) > 1 and counts.max() / counts.sum() < self.cat_max_ratio

    def apply(self, img: np.ndarray, box: tuple[int, int, int, int], **params: Any) -> np.ndarray:
        return np.ascontiguousarray(img[box[0]:box[2], box[1]:box[3]])

    def apply_to_mask(self, mask: np.ndarray, box: tuple[int, int, int, int], **params: Any) -> np.ndarray:
        return np.ascontiguousarray(mask[box[0]:box[2], box[1]:box[3]])

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("size", "cat_max_ratio", "ignore_index", "max_tries")


class PhotoMetricDistortion(ImageOnlyTransform):
    """mmseg's photometric distortion on uint8 RGB, each step applied with probability 0.5: brightness
    (+U(-delta, delta)), contrast (xU(range), randomly before or after the HSV steps), saturation (S x U(range)),
    hue (H + U{-hue_delta..hue_delta - 1} on OpenCV's 0-180 hue scale); values clipped to [0, 255] after each step."""

    def __init__(self, brightness_delta: int = 32, contrast_range: Sequence[float] = (0.5, 1.5),
                 saturation_range: Sequence[float] = (0.5, 1.5), hue_delta: int = 18, p: float = 1.0):
        super().__init__(p=p)
        self.brightness_delta = brightness_delta
        self.contrast_range = tuple(contrast_range)
        self.saturation_range = tuple(saturation_range)
        self.hue_delta = hue_delta

    def get_params(self) -> dict[str, Any]:
        r = self.py_random
        return {
            "brightness": r.uniform(-self.brightness_delta, self.brightness_delta) if r.random() < 0.5 else None,
            "contrast_first": r.random() < 0.5,
            "contrast": r.uniform(*self.contrast_range) if r.random() < 0.5 else None,
            "saturation": r.uniform(*self.saturation_range) if r.random() < 0.5 else None,
            "hue": r.randint(-self.hue_delta, self.hue_delta - 1) if r.random() < 0.5 else None,  # (numpy's bound)
        }

    def apply(self, img: np.ndarray, brightness=None, contrast_first=True, contrast=None, saturation=None,
              hue=None, **params: Any) -> np.ndarray:
        if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
            raise ValueError(f"photometric distortion expects HxWx3 uint8 RGB, got {img.dtype} {img.shape}")
        # as mmseg: back to uint8 (clipped, truncated) after every step; saturation and hue in HSV round trips of
        # their own
        out = img
        if brightness is not None:
            out = _to_uint8(out, beta=brightness)
        if contrast_first and contrast is not None:
            out = _to_uint8(out, alpha=contrast)
        if saturation is not None:
            hsv = cv2.cvtColor(out, cv2.COLOR_RGB2HSV)
            hsv[..., 1] = _to_uint8(hsv[..., 1], alpha=saturation)
            out = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
        if hue is not None:
            hsv = cv2.cvtColor(out, cv2.COLOR_RGB2HSV)
            hsv[..., 0] = (hsv[..., 0].astype(np.int32) + hue) % 180
            out = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
        if not contrast_first and contrast is not None:
            out = _to_uint8(out, alpha=contrast)
        return out

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("brightness_delta", "contrast_range", "saturation_range", "hue_delta")


def _to_uint8(x: np.ndarray, alpha: float = 1.0, beta: float = 0.0) -> np.ndarray:
    """``x * alpha + beta`` clipped to [0, 255] and truncated to uint8 (mmseg's photometric ``convert``)."""
    return np.clip(x.astype(np.float32) * alpha + beta, 0, 255).astype(np.uint8)


def compact_mask(mask: np.ndarray, ignore_index: int = 255) -> np.ndarray:
    """The mask as uint8 when it and `ignore_index` (padding's fill) fit in [0, 255], else int32 (more classes, or
    a negative ignore index): the dtypes OpenCV's resize / warp handle, without wrapping any label."""
    fits = 0 <= ignore_index < 256 and 0 <= mask.min(initial=0) and mask.max(initial=0) < 256
    return mask.astype(np.uint8 if fits else np.int32)


def _to_tensors(image: np.ndarray, mask: np.ndarray | None) -> dict[str, torch.Tensor]:
    out = {"image": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float()}
    if mask is not None:
        out["mask"] = torch.from_numpy(np.ascontiguousarray(mask).astype(np.int64))
    return out


class _Reseeded:
    """Calls an albumentations Compose after reseeding each of its transforms with its own seed drawn from
    Python's global `random` (distinct per transform, so decisions are not correlated)."""

    def __init__(self, transforms: list):
        self.pipeline = A.Compose(transforms)

    def reseed(self) -> None:
        base = random.getrandbits(32)
        for i, t in enumerate(self.pipeline.transforms):
            t.set_random_seed(int(np.random.SeedSequence([base, i]).generate_state(1)[0]))


class SegTrainTransform(_Reseeded):
    """Training augmentation; `__call__(image=HxWx3 uint8, mask=HxW int)` -> {"image": (3,h,w) float, "mask": (h,w)
    int64} with (h, w) = crop size."""

    def __init__(
            self,
            crop_size: int | Sequence[int],
            scale: Sequence[float],
            ratio_range: Sequence[float] | None = (0.5, 2.0),
            cat_max_ratio: float = 0.75,
            flip_prob: float = 0.5,
            photometric: bool = True,
            mean: Sequence[float] = IMAGENET_MEAN,
            std: Sequence[float] = IMAGENET_STD,
            ignore_index: int = 255,
    ):
        ch, cw = _pair(crop_size)
        transforms = [RandomResizeKeepRatio(scale, ratio_range),
                      CatMaxRatioCrop((ch, cw), cat_max_ratio, ignore_index),
                      A.HorizontalFlip(p=flip_prob)]
        if photometric:
            transforms.append(PhotoMetricDistortion())
        transforms += [A.Normalize(mean=[m / 255 for m in mean], std=[s / 255 for s in std], max_pixel_value=255.0),
                       A.PadIfNeeded(min_height=ch, min_width=cw, position="top_left",
                                     border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=ignore_index)]
        self.ignore_index = int(ignore_index)
        super().__init__(transforms)

    def __call__(self, image: np.ndarray, mask: np.ndarray) -> dict[str, torch.Tensor]:
        self.reseed()
        out = self.pipeline(image=image, mask=compact_mask(mask, self.ignore_index))
        return _to_tensors(out["image"], out["mask"])


def ratio_size(h: int, w: int, scale: Sequence[float] | None, ratio: float) -> tuple[int, int]:
    """(H, W) of mmseg's multi-scale test resize: keep-ratio to ``int(s * ratio)`` of each side of `scale`
    (MultiScaleFlipAug's img_ratios), or the original size times `ratio` when `scale` is None."""
    if scale is None:
        return max(1, int(h * ratio + 0.5)), max(1, int(w * ratio + 0.5))
    return keep_ratio_size(h, w, [int(s * ratio) for s in scale])


class SegTestTransform:
    """Test preprocessing: keep-ratio resize of the image to `scale` (None: keep size), with `size_divisor` a
    bilinear resize up to the next multiples of it (mmseg's ResizeToMultiple), and normalisation; the mask (if
    given) is returned unchanged as int64. With multi-scale `ratios` (other than just 1.0) the output also has
    ``"scaled"``: the image resized from the original to each ratio (:func:`ratio_size`, as mmseg's
    MultiScaleFlipAug; then to multiples of `size_divisor`) and normalised, one tensor per ratio."""

    def __init__(self, scale: Sequence[float] | None = None, mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD, ratios: Sequence[float] | None = None,
                 size_divisor: int | None = None):
        self.normalize = A.Normalize(mean=[m / 255 for m in mean], std=[s / 255 for s in std], max_pixel_value=255.0)
        self.scale = tuple(float(s) for s in scale) if scale is not None else None
        self.ratios = [float(r) for r in ratios] if ratios is not None and list(ratios) != [1.0] else None
        self.size_divisor = int(size_divisor) if size_divisor else None

    def _to_multiple(self, image: np.ndarray) -> np.ndarray:
        if self.size_divisor is None:
            return image
        d = self.size_divisor
        h, w = image.shape[:2]
        size = (-(-h // d) * d, -(-w // d) * d)
        return image if size == (h, w) else cv2.resize(image, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)

    def _prepared(self, image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        """`image` resized to `size` (bilinear), then to multiples of `size_divisor`, normalised."""
        if size != image.shape[:2]:
            image = cv2.resize(image, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
        return self.normalize(image=self._to_multiple(image))["image"]

    def __call__(self, image: np.ndarray, mask: np.ndarray | None = None) -> dict[str, Any]:
        h, w = image.shape[:2]
        size = keep_ratio_size(h, w, self.scale) if self.scale is not None else (h, w)
        out: dict[str, Any] = _to_tensors(self._prepared(image, size), mask)
        if self.ratios is not None:
            out["scaled"] = [_to_tensors(self._prepared(image, ratio_size(h, w, self.scale, r)), None)["image"]
                             for r in self.ratios]
        return out
