#!/usr/bin/env python
"""Evaluate an image classifier (thin CLI over `vision_rwkv.engine.classification.evaluate_classifier`).

    python tools/eval.py CONFIG [key=value ...] [--checkpoint PATH]
    python tools/eval.py configs/classification/demo_shapes.yaml --checkpoint runs/demo_shapes/checkpoints/best.pt
    python tools/eval.py configs/classification/demo_shapes.yaml model.name=resnet18 ~model.kwargs model.pretrained=true

``--config CONFIG`` is an alias of the positional CONFIG; ``--checkpoint PATH`` is the same as
``eval.checkpoint=PATH``: a training checkpoint (``eval.weights``: auto = its EMA weights when it has them, model,
ema), a state dict, a .safetensors file or an original Vision-RWKV .pth, read as ``model.checkpoint`` reads it (a
v4 model runs the Bi-WKV function the weights were trained with, unless model.kwargs names wkv_mode). Any timm
model name works, at any resolution (``eval.input_size=48``). Without a checkpoint (and without model.pretrained /
model.checkpoint) the config's run is evaluated: ``<run_dir>/checkpoints/best.pt``, else its newest checkpoint, as
tools/test_seg.py does; with none there, a warning says the weights are untrained. Prints top-1/top-5 and
throughput; writes metrics.json, per_class.csv (UTF-8, replaced atomically) and confusion_matrix.png to
eval.out_dir (default <run_dir>/eval). Integer labels (a CSV's, an annotation list's) are indices into the model's
classes: the checkpoint's names or classifier rows, else model.num_classes. Unreadable images are skipped and
counted (``skipped_samples``). Works under torchrun (each rank evaluates a shard). Exit status 2 for a bad command
line, config or data list (one ``error:`` line), or an eval.out_dir that cannot be written; 1 for a missing file
or when not one image could be read.
"""
from __future__ import annotations

import sys
from pathlib import Path

from vision_rwkv.engine import ConfigError, launch_rank, load_config
from vision_rwkv.engine.checkpoint import run_checkpoint
from vision_rwkv.engine.classification import NoReadableImagesError, evaluate_classifier
from vision_rwkv.engine.cli import config_arg_parser, parse_config_args
from vision_rwkv.engine.files import check_output_dir
from vision_rwkv.engine.logger import json_text
from vision_rwkv.models.convert import MissingWeightsError


def main(argv: list[str] | None = None) -> dict:
    parser = config_arg_parser(__doc__.splitlines()[0], "YAML config (configs/classification/*.yaml)",
                               checkpoint="checkpoint to evaluate (same as eval.checkpoint=PATH)",
                               epilog=__doc__.split("\n\n", 1)[1])
    args = parse_config_args(parser, argv, option_keys={"checkpoint": "eval.checkpoint"})
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as err:
        parser.exit(2, f"config error: {err}\n" if launch_rank() == 0 else None)  # (torchrun: once)
    main_rank = launch_rank() == 0  # (under torchrun rank 0 alone prints the notes and the result)
    out_dir = cfg.eval.out_dir or Path(cfg.run_dir) / "eval"
    try:
        check_output_dir(out_dir, "eval.out_dir")
    except ValueError as err:  # (before the model is built and every image run)
        parser.exit(2, f"error: {err}\n" if main_rank else None)
    if not (cfg.eval.checkpoint or cfg.model.pretrained or cfg.model.checkpoint):
        found = run_checkpoint(cfg.run_dir)
        if found is not None:
            cfg.eval.checkpoint = str(found)
            if main_rank:
                print(f"[eval] no --checkpoint: evaluating the run's {found}", file=sys.stderr)
        elif main_rank:
            print(f"warning: no --checkpoint, no model.pretrained / model.checkpoint and no checkpoint in "
                  f"{cfg.run_dir}/checkpoints: {cfg.model.name} has random, untrained weights", file=sys.stderr)
    try:
        result = evaluate_classifier(cfg)
    except MissingWeightsError as err:  # eval.weights asks for weights the file does not hold
        parser.exit(2, f"error: {err}\n")
    except NoReadableImagesError as err:  # (no metric over 0 images)
        parser.exit(1, f"error: {err}\n" if main_rank else None)
    keys = ("top1", "top5", "loss", "num_samples", "skipped_samples", "throughput", "input_size", "eval_time_s",
            "confusion_matrix_png")
    if main_rank:
        print(json_text({k: result[k] for k in keys if k in result}))
    return result


if __name__ == "__main__":
    from vision_rwkv.engine.cli import run_tool
    run_tool(main)
