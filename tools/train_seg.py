#!/usr/bin/env python
"""Train a semantic segmentor: ``python tools/train_seg.py CONFIG [key=value ...]``.

CONFIG is a YAML file under configs/segmentation/ (``_base_`` inheritance); overrides use dotted keys, e.g.
``optim.max_iters=2000 model.pretrained=vrwkv_t.safetensors train.resume=latest``. Multi-GPU:
``torchrun --nproc_per_node 8 tools/train_seg.py CONFIG`` (BatchNorm becomes SyncBatchNorm, data.batch_size is
per process). Writes checkpoints, CSV logs, curves.png and val_metrics.json under train.run_dir.
Thin CLI over :func:`vision_rwkv.seg.train_segmentor`.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import List, Optional


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config", help="YAML config, e.g. configs/segmentation/demo_shapes.yaml")
    parser.add_argument("overrides", nargs="*", help="key=value config overrides (dotted keys)")
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    from vision_rwkv.engine import ConfigError, is_main_process
    from vision_rwkv.seg import load_seg_config, train_segmentor

    try:
        cfg = load_seg_config(args.config, args.overrides)
    except (ConfigError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    result = train_segmentor(cfg)
    if is_main_process():
        summary = {k: v for k, v in result.items() if k != "per_class"}
        print(json.dumps(summary, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
