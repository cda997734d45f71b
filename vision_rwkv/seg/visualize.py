"""PNG overlays of segmentation results: image | ground truth | prediction per row, with a colour legend."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from vision_rwkv.engine.logger import save_figure, short_text, subplots

__all__ = ["make_palette", "check_palette", "colorize", "save_overlays"]


def make_palette(num_classes: int) -> np.ndarray:
    """(num_classes, 3) uint8 colours: matplotlib's qualitative tab10 / tab20 for up to 20 classes; beyond, tab20's
    colours then, one at a time, the colour farthest (in CIELAB) from those chosen and from black (ignored pixels),
    so that no two classes look alike (golden-ratio hues gave 51 near-identical pairs of ADE20K's 150 classes)."""
    from matplotlib import colormaps
    tab = np.array([colormaps["tab10" if num_classes <= 10 else "tab20"](i)[:3] for i in range(min(num_classes, 20))])
    if num_classes <= 20:
        return (tab * 255).round().astype(np.uint8)
    levels = np.linspace(0.0, 1.0, 12)
    candidates = np.stack(np.meshgrid(levels, levels, levels, indexing="ij"), -1).reshape(-1, 3)
    lab = _cielab(candidates)
    chosen = [(tab * 255).round().astype(np.uint8)]
    taken = _cielab(np.vstack([tab, np.zeros((1, 3))]))  # (black: the ignored pixels' colour)
    nearest = np.linalg.norm(lab[:, None] - taken[None], axis=-1).min(1)
    picks = []
    for _ in range(num_classes - 20):
        i = int(nearest.argmax())
        picks.append(candidates[i])
        nearest = np.minimum(nearest, np.linalg.norm(lab - lab[i], axis=-1))
    chosen.append((np.array(picks) * 255).round().astype(np.uint8))
    return np.vstack(chosen)


def _cielab(rgb: np.ndarray) -> np.ndarray:
    """sRGB in [0, 1] (N, 3) -> CIELAB (D65), where distances follow perceived colour differences."""
    linear = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    xyz = linear @ np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]]).T
    xyz = xyz / np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.stack([116 * f[:, 1] - 16, 500 * (f[:, 0] - f[:, 1]), 200 * (f[:, 1] - f[:, 2])], axis=-1)


def colorize(label: np.ndarray, palette: np.ndarray, ignore_index: int = 255) -> np.ndarray:
    """(H, W) label map -> (H, W, 3) uint8 colours; ignored pixels black."""
    out = np.zeros((*label.shape, 3), dtype=np.uint8)
    valid = (label != ignore_index) & (label >= 0) & (label < len(palette))
    out[valid] = palette[label[valid]]
    return out


def check_palette(palette: Sequence[Sequence[int]] | None, num_classes: int) -> np.ndarray | None:
    """A user palette as (num_classes, 3) uint8 (None stays None); ValueError unless it has one [r, g, b] in 0..255
    per class."""
    if palette is None:
        return None
    arr = np.asarray(palette)
    if arr.ndim != 2 or arr.shape != (num_classes, 3) or not np.issubdtype(arr.dtype, np.integer) \
            or arr.min() < 0 or arr.max() > 255:
        raise ValueError(f"data.palette needs one [r, g, b] of integers 0-255 per class ({num_classes} classes), got "
                         f"shape {arr.shape}")
    return arr.astype(np.uint8)


def save_overlays(path: str | Path, images: Sequence[np.ndarray], gts: Sequence[np.ndarray | None],
                  preds: Sequence[np.ndarray], class_names: Sequence[str], ignore_index: int = 255,
                  alpha: float = 0.8, titles: Sequence[str] | None = None,
                  palette: np.ndarray | None = None) -> Path:
    """Write a PNG grid: one row per image (image, GT overlay, prediction overlay) and a legend of the classes
    present, in `palette` ((num_classes, 3) uint8; default :func:`make_palette`). Images are (H, W, 3) uint8 at the
    label maps' size. Without any ground truth (all None: predictions of unlabelled images) the rows have two
    panels, image and prediction."""
    from matplotlib.patches import Patch

    palette = make_palette(len(class_names)) if palette is None else np.asarray(palette, dtype=np.uint8)
    n = len(images)
    with_gt = any(g is not None for g in gts)
    present = sorted({int(v) for lab in (*gts, *preds) if lab is not None for v in np.unique(lab)
                      if v != ignore_index and 0 <= v < len(class_names)})
    ncol = min(6, max(1, len(present)))
    legend_h = (0.2 + 0.17 * -(-len(present) // ncol)) if present else 0.0  # inches: every legend row gets room
    height = 3 * n + 0.3 + legend_h
    fig, axes = subplots(n, 2 + with_gt, figsize=(3 * (2 + with_gt), height), squeeze=False)
    for r, (img, gt, pred) in enumerate(zip(images, gts, preds)):
        panels = [("image", img)]
        for name, lab in ((("ground truth", gt),) if with_gt else ()) + (("prediction", pred),):
            if lab is None:
                panels.append((name + " (none)", np.zeros_like(img)))
                continue
            color = colorize(lab, palette, ignore_index).astype(np.float32)
            blend = (1 - alpha) * img.astype(np.float32) + alpha * color
            panels.append((name, blend.clip(0, 255).astype(np.uint8)))
        for c, (name, panel) in enumerate(panels):
            ax = axes[r][c]
            ax.imshow(panel)
            ax.set_xticks([])
            ax.set_yticks([])
            title = name if titles is None or c else short_text(titles[r], 40)
            ax.set_title(title, fontsize=8)
    handles = [Patch(color=palette[i] / 255.0, label=class_names[i]) for i in present]
    if handles:
        fig.legend(handles=handles, loc="lower center", ncol=ncol, fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, legend_h / height, 1, 1))
    return save_figure(fig, path)
