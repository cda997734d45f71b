#!/usr/bin/env python
"""Train an image classifier from a config: ``python tools/train.py CONFIG [key=value ...]``.

Single process: ``python tools/train.py configs/classification/demo_shapes.yaml train.epochs=2``.
Several processes / GPUs: ``torchrun --nproc_per_node=8 tools/train.py configs/classification/vrwkv_tiny_in1k.yaml
data.root=/data/imagenet``. Resume: ``resume=latest`` (newest checkpoint in run_dir) or ``resume=PATH``.
Overrides must name keys of configs/classification/base.yaml (``+key=value`` adds a new one).
"""
from __future__ import annotations

import argparse
import json
import sys

from vision_rwkv.engine import ConfigError, load_config
from vision_rwkv.engine.classification import train_classifier


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", help="YAML config (configs/classification/*.yaml)")
    parser.add_argument("overrides", nargs="*", help="key=value config overrides")
    args = parser.parse_intermixed_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as err:
        parser.exit(2, f"config error: {err}\n")
    result = train_classifier(cfg)
    if not result.get("stopped"):
        summary = {k: v for k, v in result.items() if k not in ("classes",)}
        print(json.dumps(summary, indent=2, default=str))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
