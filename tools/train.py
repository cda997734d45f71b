#!/usr/bin/env python
"""Train an image classifier from a config (thin CLI over `vision_rwkv.engine.classification.train_classifier`).

    python tools/train.py CONFIG [key=value ...] [--resume latest|PATH]
    python tools/train.py configs/classification/demo_shapes.yaml train.epochs=2
    torchrun --nproc_per_node=8 tools/train.py configs/classification/vrwkv_tiny_in1k.yaml data.root=/data/imagenet

``--config CONFIG`` is an alias of the positional CONFIG. ``--resume latest`` (newest checkpoint in run_dir) or
``--resume PATH`` is the same as the override ``resume=latest`` / ``resume=PATH``. Overrides must name keys of
configs/classification/base.yaml (``+key=value`` adds a key inside ``model.kwargs``, ``~key`` deletes one).
SIGTERM / SIGUSR1 / Ctrl-C checkpoint the step in progress and exit 128 + the signal's number (143 / 138 / 130).
"""
from __future__ import annotations

from vision_rwkv.engine import ConfigError, launch_rank, load_config
from vision_rwkv.engine.classification import train_classifier
from vision_rwkv.engine.cli import config_arg_parser, parse_config_args
from vision_rwkv.engine.logger import json_text


def main(argv: list[str] | None = None) -> dict:
    parser = config_arg_parser(__doc__.splitlines()[0], "YAML config (configs/classification/*.yaml)", resume=True,
                               epilog=__doc__.split("\n\n", 1)[1])
    args = parse_config_args(parser, argv, option_keys={"resume": "resume"})
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as err:
        parser.exit(2, f"config error: {err}\n" if launch_rank() == 0 else None)  # (torchrun: once)
    result = train_classifier(cfg)
    if launch_rank() == 0 and not result.get("stopped"):  # (torchrun: rank 0 reports)
        summary = {k: v for k, v in result.items() if k not in ("classes",)}
        print(json_text(summary))
    return result


if __name__ == "__main__":
    from vision_rwkv.engine.cli import run_tool
    run_tool(main)
