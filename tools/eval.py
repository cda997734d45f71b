#!/usr/bin/env python
"""Evaluate an image classifier: ``python tools/eval.py CONFIG [key=value ...]``.

Any timm model name (``model.name=resnet18 model.pretrained=true``) or a checkpoint
(``eval.checkpoint=runs/demo_shapes/checkpoints/best.pt``), at any resolution (``eval.input_size=48``).
Prints top-1/top-5, throughput; writes metrics.json, per_class.csv and confusion_matrix.png to eval.out_dir
(default <run_dir>/eval). Works under torchrun (each rank evaluates a shard).
"""
from __future__ import annotations

import argparse
import json
import sys

from vision_rwkv.engine import ConfigError, load_config
from vision_rwkv.engine.classification import evaluate_classifier


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", help="YAML config (configs/classification/*.yaml)")
    parser.add_argument("overrides", nargs="*", help="key=value config overrides")
    parser.add_argument("--checkpoint", default=None, help="shortcut for eval.checkpoint=PATH")
    args = parser.parse_intermixed_args(argv)
    overrides = list(args.overrides) + ([f"eval.checkpoint={args.checkpoint}"] if args.checkpoint else [])
    try:
        cfg = load_config(args.config, overrides)
    except ConfigError as err:
        parser.exit(2, f"config error: {err}\n")
    result = evaluate_classifier(cfg)
    keys = ("top1", "top5", "loss", "num_samples", "skipped_samples", "throughput", "input_size", "eval_time_s",
            "confusion_matrix_png")
    print(json.dumps({k: result[k] for k in keys if k in result}, indent=2))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
