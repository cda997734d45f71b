#!/usr/bin/env python
"""Test a trained segmentor: ``python tools/test_seg.py CONFIG [key=value ...]``.

Uses test.checkpoint (default: best, else latest checkpoint of train.run_dir) and the config's test settings
(``test.mode=slide|whole``, ``test.crop_size``, ``test.stride``, ``test.flip=true``,
``test.scales=[0.75,1.0,1.25]``). Prints mIoU / mAcc / aAcc and the per-class IoU table; writes metrics.json,
metrics_per_class.txt and overlays.png to test.out_dir (default <run_dir>/test). Works under torchrun.
Thin CLI over :func:`vision_rwkv.seg.test_segmentor`.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import List, Optional


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config", help="YAML config used for training")
    parser.add_argument("overrides", nargs="*", help="key=value config overrides (dotted keys)")
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    from vision_rwkv.engine import ConfigError, is_main_process
    from vision_rwkv.seg import load_seg_config, test_segmentor

    try:
        cfg = load_seg_config(args.config, args.overrides)
    except (ConfigError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        result = test_segmentor(cfg)
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    if is_main_process():
        print(json.dumps({k: v for k, v in result.items() if k != "per_class"}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
