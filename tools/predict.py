#!/usr/bin/env python
r"""Predict the classes of image files with a trained classifier (thin CLI over `vision_rwkv.engine.predict`).

    python tools/predict.py MODEL_OR_CONFIG [key=value ...] --images PATH [PATH ...] [--checkpoint PATH]
    python tools/predict.py configs/classification/demo_shapes.yaml --checkpoint runs/demo_shapes/checkpoints/best.pt \
        --images photos/ --topk 3
    python tools/predict.py vrwkv_tiny_patch16_224 --checkpoint vrwkv_t.safetensors --images cat.jpg

MODEL_OR_CONFIG is a classification config YAML (``key=value`` overrides apply; the checkpoint is a training
checkpoint, EMA weights preferred, with the run's class names) or a timm model name (the checkpoint as
``model.checkpoint`` takes it; ImageNet-1k class names for 1000 classes). Without weights - a model name, or a
config with no ``model.pretrained`` / ``model.checkpoint``, and no ``--checkpoint`` - the model is untrained and a
warning says so. ``--images`` takes files and folders (searched recursively). Writes the top-k table (``--output``,
.csv or .json; UTF-8, replaced atomically) and a PNG grid of the images with their top-1 class (``--grid``, default
``<output stem>.png`` next to ``--output``; '' for none), and prints a short summary. An unreadable image gets an
``error`` entry; the others are still predicted. Exit status 2 for a bad command line or config (an ``--output`` /
``--grid`` that cannot be written included, found before the model is loaded), 1 for a missing file or when not
one image could be read (after the table listing the errors is written).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import List, Optional

from vision_rwkv.engine.cli import add_predict_options, config_arg_parser, parse_predict_args


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = config_arg_parser(__doc__.splitlines()[0],
                               "classification config YAML or timm model name (overrides apply to a config only)",
                               checkpoint="weights (training checkpoint, state dict, safetensors)",
                               epilog=__doc__.split("\n\n", 1)[1], target="MODEL_OR_CONFIG")
    add_predict_options(parser)
    parser.add_argument("--topk", type=int, default=5)
    parser.add_argument("--class-names", default=None, help="file with one class name per line")
    parser.add_argument("--output", default="predictions.csv", help="top-k table (.csv or .json)")
    parser.add_argument("--grid", default=None, help="PNG grid of the images and their top-1 class (default: "
                                                     "<output stem>.png next to --output; '' for none)")
    parser.add_argument("--batch-size", type=int, default=32)
    args = parse_predict_args(parser, argv)
    if args.topk < 1 or args.batch_size < 1:
        parser.error("--topk and --batch-size must be >= 1")
    suffix = Path(args.output).suffix
    if suffix not in (".csv", ".json"):
        what = f"unknown suffix {suffix!r}" if suffix else "no suffix"
        parser.error(f"--output {args.output}: {what}; name the top-k table .csv or .json (its format)")
    if args.grid is None:
        args.grid = str(Path(args.output).with_suffix(".png"))
    return args


def _unwritable_output(args: argparse.Namespace) -> Optional[str]:
    """The error line for an --output / --grid that cannot be written, or None."""
    from vision_rwkv.engine.files import check_output_file
    try:
        check_output_file(args.output, "--output")
        if args.grid:
            check_output_file(args.grid, "--grid")
    except ValueError as err:
        return f"error: {err}"
    return None


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    from vision_rwkv.engine.predict import image_files, load_classifier, plot_predictions, predict_files, \
        untrained_warning, write_predictions

    problem = _unwritable_output(args)  # (before any model is loaded or image run)
    if problem:
        print(problem, file=sys.stderr)
        return 2
    try:
        files = image_files(args.images)
    except ValueError as err:  # no image in the folders given (a missing path is a FileNotFoundError: exit 1)
        print(f"error: {err}", file=sys.stderr)
        return 1
    try:
        clf = load_classifier(args.target, args.checkpoint, args.overrides, args.num_classes, args.class_names)
    except (ValueError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    warning = untrained_warning(args.target, args.checkpoint, args.overrides)
    if warning:
        print(warning, file=sys.stderr)
    rows = predict_files(clf, files, args.topk, args.batch_size, args.device, args.precision,
                         show_progress=not args.no_progress, channels_last=args.channels_last)
    table = write_predictions(rows, args.output)
    grid = plot_predictions(rows, args.grid) if args.grid and any("topk" in r for r in rows) else None
    failed = [r["file"] for r in rows if "error" in r]
    top1 = [[r["file"], r["topk"][0][1] if r["topk"][0][1] is not None else r["topk"][0][0]] for r in rows
            if "topk" in r]  # ([file, class] pairs: a file given twice is listed twice, as in the table)
    print(json.dumps({"images": len(rows), "unreadable": failed, "predictions": str(table),
                      "grid": str(grid) if grid else None, "top1": top1[:20]}, indent=2))
    if not top1:
        print(f"error: not one of the {len(rows)} images could be read (their errors are in {table})",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    from vision_rwkv.engine.cli import run_tool
    run_tool(main)
