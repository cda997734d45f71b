"""PNG overlays of segmentation results: image | ground truth | prediction per row, with a colour legend."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from vision_rwkv.engine.logger import pyplot, save_figure

__all__ = ["make_palette", "colorize", "save_overlays"]


def make_palette(num_classes: int, seed: int = 3) -> np.ndarray:
    """(num_classes, 3) uint8 colours: matplotlib's qualitative tab10 / tab20 for up to 20 classes, else
    golden-ratio-spaced hues with alternating saturation / value."""
    if num_classes <= 20:
        from matplotlib import colormaps
        cmap = colormaps["tab10" if num_classes <= 10 else "tab20"]
        pal = np.array([cmap(i)[:3] for i in range(num_classes)])
        return (pal * 255).round().astype(np.uint8)
    import colorsys
    rng = np.random.default_rng(seed)
    hues = (np.arange(num_classes) * 0.618033988749895 + rng.uniform()) % 1.0
    pal = np.array([colorsys.hsv_to_rgb(h, 0.75 if i % 2 else 0.95, 0.95 if i % 3 else 0.75)
                    for i, h in enumerate(hues)])
    return (pal * 255).round().astype(np.uint8)


def colorize(label: np.ndarray, palette: np.ndarray, ignore_index: int = 255) -> np.ndarray:
    """(H, W) label map -> (H, W, 3) uint8 colours; ignored pixels black."""
    out = np.zeros((*label.shape, 3), dtype=np.uint8)
    valid = (label != ignore_index) & (label >= 0) & (label < len(palette))
    out[valid] = palette[label[valid]]
    return out


def save_overlays(path: str | Path, images: Sequence[np.ndarray], gts: Sequence[np.ndarray | None],
                  preds: Sequence[np.ndarray], class_names: Sequence[str], ignore_index: int = 255,
                  alpha: float = 0.8, titles: Sequence[str] | None = None) -> Path:
    """Write a PNG grid: one row per image (image, GT overlay, prediction overlay) and a legend of the classes
    present. Images are (H, W, 3) uint8 at the label maps' size. Without any ground truth (all None: predictions of
    unlabelled images) the rows have two panels, image and prediction."""
    plt = pyplot()
    from matplotlib.patches import Patch

    palette = make_palette(len(class_names))
    n = len(images)
    with_gt = any(g is not None for g in gts)
    present = sorted({int(v) for lab in (*gts, *preds) if lab is not None for v in np.unique(lab)
                      if v != ignore_index and 0 <= v < len(class_names)})
    ncol = min(6, max(1, len(present)))
    legend_h = (0.2 + 0.17 * -(-len(present) // ncol)) if present else 0.0  # inches: every legend row gets room
    height = 3 * n + 0.3 + legend_h
    fig, axes = plt.subplots(n, 2 + with_gt, figsize=(3 * (2 + with_gt), height), squeeze=False)
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
            title = name if titles is None or c else f"{titles[r]}"
            ax.set_title(title, fontsize=8)
    handles = [Patch(color=palette[i] / 255.0, label=class_names[i]) for i in present]
    if handles:
        fig.legend(handles=handles, loc="lower center", ncol=ncol, fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, legend_h / height, 1, 1))
    return save_figure(fig, path)
