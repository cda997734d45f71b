#!/usr/bin/env python
"""Train RWKV-CLIP (thin CLI over `rwkv_clip.train.train_clip`).

    python tools/train_clip.py --config configs/clip/demo_shapes.yaml [key=value ...] [--resume latest]
    torchrun --nproc_per_node 2 tools/train_clip.py --config configs/clip/demo_shapes.yaml train.device=cpu

Overrides use the config's dotted keys (`train.max_steps=100`, `data.train=/data/cc3m.csv`); unknown keys are
errors. Writes `<run_dir>/config.yaml`, checkpoints, `train_metrics.csv`, `val_metrics.csv`, `curves.png`,
TensorBoard events, `retrieval_grid.png` and `result.json`.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=None, help="YAML config (default: the schema defaults)")
    parser.add_argument("--resume", default=None, help="'latest' or a checkpoint path")
    parser.add_argument("overrides", nargs="*", help="key=value config overrides")
    args = parser.parse_args(argv)

    from rwkv_clip.train import load_clip_config, train_clip
    from vision_rwkv.engine import is_main_process

    cfg = load_clip_config(args.config, args.overrides)
    result = train_clip(cfg, resume=args.resume)
    if is_main_process() and not result.get("stopped"):
        out = {k: v for k, v in result.items() if k != "history"}
        Path(result["run_dir"], "result.json").write_text(json.dumps(out, indent=2))
        print(json.dumps(out, indent=2))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
