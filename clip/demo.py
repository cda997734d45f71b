"""The RWKV-CLIP demo: train the tiny model on the embedded Shapes captions, then report zero-shot accuracy and
image-text retrieval on held-out Shapes test samples next to chance level.

    from rwkv_clip.demo import run_demo
    result = run_demo()                      # configs/clip/demo_shapes.yaml, a few minutes on 2 CPU cores
    print(result["summary"])
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Optional, Sequence

from vision_rwkv.resources import configs_dir

from .train import load_clip_config, train_clip

__all__ = ["DEMO_CONFIG", "run_demo", "chance_levels"]

DEMO_CONFIG = configs_dir() / "clip" / "demo_shapes.yaml"

_METRICS = ("zeroshot_acc1", "zeroshot_acc5", "zeroshot_mean_per_class_recall",
            "image_retrieval_recall@1", "image_retrieval_recall@5", "image_retrieval_recall@10",
            "text_retrieval_recall@1", "text_retrieval_recall@5", "text_retrieval_recall@10")


def chance_levels(num_classes: int, num_images: int, num_texts: int) -> dict[str, float]:
    """Expected metrics of a random model: top-k accuracy k/classes; text->image R@k = k/images; image->text
    R@k = 1 - C(texts - captions, k) / C(texts, k) with captions = texts / images per image."""
    from math import comb
    caps = num_texts // num_images
    out = {"zeroshot_acc1": 1 / num_classes, "zeroshot_acc5": min(5, num_classes) / num_classes,
           "zeroshot_mean_per_class_recall": 1 / num_classes}
    for k in (1, 5, 10):
        out[f"image_retrieval_recall@{k}"] = min(k, num_images) / num_images
        out[f"text_retrieval_recall@{k}"] = 1 - comb(num_texts - caps, k) / comb(num_texts, k)
    return out


def run_demo(config: Optional[str | Path] = None, overrides: Sequence[str] = (), resume: Optional[str] = None) -> dict:
    """Train + evaluate the Shapes demo; returns the metrics, chance levels, wall time and a printable summary.

    Args:
        config: a demo YAML (default `configs/clip/demo_shapes.yaml`).
        overrides: `key=value` config overrides (e.g. `run_dir=/tmp/demo`, `train.max_steps=100`).
        resume: None, "latest" or a checkpoint path.
    """
    cfg = load_clip_config(config or DEMO_CONFIG, list(overrides))
    if cfg.eval.zero_shot.data != "shapes" or cfg.eval.retrieval.data != "shapes":
        raise ValueError("the demo evaluates on held-out Shapes: eval.zero_shot.data and eval.retrieval.data "
                         "must be 'shapes'")
    start = time.perf_counter()
    result = train_clip(cfg, resume=resume)
    wall = time.perf_counter() - start
    from vision_rwkv.data.shapes import CLASS_NAMES
    chance = chance_levels(len(CLASS_NAMES), int(result["num_images"]), int(result["num_texts"]))
    metrics = {k: float(result[k]) for k in _METRICS}
    lines = [f"RWKV-CLIP Shapes demo: {result['step']} steps in {wall:.0f} s "
             f"(train loss {result['train_loss']:.3f}); held-out: {cfg.eval.zero_shot.length} images for zero-shot, "
             f"{result['num_images']} images / {result['num_texts']} captions for retrieval",
             f"{'metric':34s} {'model':>7s} {'chance':>7s}"]
    lines += [f"{k:34s} {100 * metrics[k]:6.1f}% {100 * chance[k]:6.1f}%" for k in _METRICS]
    return {"metrics": metrics, "chance": chance, "wall_time_s": wall, "train_time_s": result["train_time_s"],
            "steps": result["step"], "train_loss": result["train_loss"], "run_dir": result["run_dir"],
            "summary": "\n".join(lines)}
