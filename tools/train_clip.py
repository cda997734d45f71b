#!/usr/bin/env python
"""Train RWKV-CLIP (thin CLI over `rwkv_clip.train.train_clip`).

    python tools/train_clip.py [CONFIG] [key=value ...] [--resume latest|PATH]
    python tools/train_clip.py configs/clip/demo_shapes.yaml train.max_steps=100 --resume latest
    torchrun --nproc_per_node 2 tools/train_clip.py configs/clip/demo_shapes.yaml train.device=cpu

``--config CONFIG`` is an alias of the positional CONFIG; without a config the schema defaults are used.
Overrides use the config's dotted keys (`train.max_steps=100`, `data.train=/data/cc3m.csv`); unknown keys are
errors. ``--resume latest`` continues from the newest checkpoint of run_dir. Writes `<run_dir>/config.yaml`,
checkpoints, `train_metrics.csv`, `val_metrics.csv`, `curves.png`, TensorBoard events, `retrieval_grid.png`
and `result.json`. SIGTERM / SIGUSR1 / Ctrl-C checkpoint the step in progress and exit 128 + the signal's number.
"""
from __future__ import annotations

from pathlib import Path

from vision_rwkv.engine.cli import config_arg_parser, parse_config_args


def main(argv: list[str] | None = None) -> dict:
    parser = config_arg_parser(__doc__.splitlines()[0], "YAML config (configs/clip/*.yaml; default: the schema "
                               "defaults)", config_required=False, resume=True, epilog=__doc__.split("\n\n", 1)[1])
    args = parse_config_args(parser, argv)

    from rwkv_clip.train import load_clip_config, train_clip
    from vision_rwkv.engine import launch_rank
    from vision_rwkv.engine.files import write_text_atomic
    from vision_rwkv.engine.logger import json_text

    cfg = load_clip_config(args.config, args.overrides)
    result = train_clip(cfg, resume=args.options.resume)
    if launch_rank() == 0 and not result.get("stopped"):  # (torchrun: the process group is gone by now)
        out = {k: v for k, v in result.items() if k != "history"}
        write_text_atomic(Path(result["run_dir"], "result.json"), json_text(out))
        print(json_text(out))
    return result


if __name__ == "__main__":
    from vision_rwkv.engine.cli import run_tool
    run_tool(main)
