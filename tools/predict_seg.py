#!/usr/bin/env python
r"""Segment image files with a trained segmentor (thin CLI over `vision_rwkv.seg.predict_images`; mmseg's image_demo).

    python tools/predict_seg.py CONFIG [key=value ...] --images PATH [PATH ...] [--checkpoint PATH] [--out-dir DIR]
    python tools/predict_seg.py configs/segmentation/demo_shapes.yaml \
        --checkpoint runs/seg/demo_shapes/checkpoints/best.pt --images photos/ test.flip=true

The weights are those tools/test_seg.py tests: ``--checkpoint PATH`` (the same as ``test.checkpoint=PATH``: a
training checkpoint, a state dict, or a released mmseg checkpoint, converted on load), else the best, else the
latest checkpoint of the config's train.run_dir. No checkpoint is an error, as in mmseg's image_demo: there is no
mode with randomly initialised heads (``vision_rwkv.seg.predict_images.load_segmentor(config)`` builds such a model
in Python).
The config's test settings apply (``test.scale`` resize, ``test.mode`` whole / slide, ``test.crop_size``,
``test.stride``, ``test.flip``, ``test.scales``); the class count comes from the checkpoint, the class names from
the checkpoint (``extra.classes``, recorded by tools/train_seg.py), else the config (a warning when their count does
not fit). A file given twice is segmented once. Writes, to
``--out-dir`` (default ``predictions_seg``): one label PNG per image (``<name>.png``: class ids 0..K-1 in the
config's class order as pixel values, plus ``--label-offset`` (1 for ADE20K's own 1..150, its benchmark's format);
8-bit with a colour palette, 16-bit beyond 256 values; an image named like the other outputs gets a ``_``),
``overlays.png`` (the first ``--num-overlays`` images with
their prediction overlaid and a class legend) and ``predictions.json`` (UTF-8, replaced atomically: the checkpoint
used, the pixel share of each class per image and the unreadable files). Exit status 2 for a bad command line or
config, an ``--out-dir`` that cannot be written (found before the model is loaded), or a checkpoint that does not
fit the config's model; 1 for a missing file or checkpoint, no image files, or when not one image could be read
(after predictions.json lists them).
"""
from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path
from typing import List, Optional

from vision_rwkv.engine.cli import add_predict_options, config_arg_parser, parse_config_args


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = config_arg_parser(__doc__.splitlines()[0], "segmentation config YAML",
                               checkpoint="weights (same as test.checkpoint=PATH; default: the best, else the latest "
                                          "checkpoint of train.run_dir, as tools/test_seg.py)",
                               epilog=__doc__.split("\n\n", 1)[1])
    add_predict_options(parser)
    parser.add_argument("--out-dir", default="predictions_seg")
    parser.add_argument("--num-overlays", type=int, default=8, help="images in overlays.png (0: no overlay PNG)")
    parser.add_argument("--label-offset", type=int, default=0,
                        help="added to the class ids in the label PNGs (1: ADE20K's 1..150, its benchmark's format)")
    parsed = parse_config_args(parser, argv, option_keys={"checkpoint": "test.checkpoint"})
    args = parsed.options
    args.target, args.overrides = parsed.config, parsed.overrides
    if args.channels_last:  # (the config's key; a later override wins)
        args.overrides = [*args.overrides, "test.channels_last=true"]
    return args


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    from vision_rwkv.engine import ConfigError
    from vision_rwkv.engine.files import write_text_atomic
    from vision_rwkv.engine.files import check_output_dir
    from vision_rwkv.engine.predict import image_files
    from vision_rwkv.engine.logger import json_text
    from vision_rwkv.models.convert import CheckpointMismatchError
    from vision_rwkv.seg.predict_images import class_fractions, load_trained_segmentor, save_label_png, segment_files
    from vision_rwkv.seg.train import config_palette
    from vision_rwkv.seg.visualize import save_overlays

    if args.label_offset < 0:
        print(f"error: --label-offset must be >= 0, got {args.label_offset}", file=sys.stderr)
        return 2
    try:
        check_output_dir(args.out_dir, "--out-dir")
    except ValueError as err:  # (before the model is loaded and the images run)
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        files = unique_files(image_files(args.images))
    except ValueError as err:  # no image files (a missing path is a FileNotFoundError: run_tool's exit 1)
        print(f"error: {err}", file=sys.stderr)
        return 1
    try:
        with warnings.catch_warnings(record=True) as caught:  # (class names that do not fit: one line each)
            warnings.simplefilter("always")
            model, cfg, classes, checkpoint = load_trained_segmentor(args.target, args.overrides, args.num_classes)
    except (ConfigError, ValueError, RuntimeError, CheckpointMismatchError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)
    try:
        palette = config_palette(cfg, len(classes))
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    out = Path(args.out_dir)
    errors: dict[str, str] = {}
    per_image, shown = {}, []
    used = {"overlays", "predictions"}  # (the other outputs' names: an image called overlays.jpg gets a "_")
    for file, image, labels in segment_files(model, cfg, files, args.device, args.precision,
                                             show_progress=not args.no_progress, errors=errors):
        name = Path(file).stem
        while name in used:  # same stem in two folders
            name += "_"
        used.add(name)
        save_label_png(labels, out / f"{name}.png", len(classes), args.label_offset, palette)
        per_image[file] = {"labels": str(out / f"{name}.png"), "classes": class_fractions(labels, classes)}
        if len(shown) < args.num_overlays:
            shown.append((image, labels, name))
    overlay = None
    if shown:
        overlay = save_overlays(out / "overlays.png", [s[0] for s in shown], [None] * len(shown),
                                [s[1] for s in shown], classes, titles=[s[2] for s in shown], palette=palette)
    summary = {"checkpoint": str(checkpoint), "images": len(files), "segmented": len(per_image),
               "unreadable": errors, "out_dir": str(out), "overlays": str(overlay) if overlay else None,
               "per_image": per_image}
    write_text_atomic(out / "predictions.json", json_text(summary))
    print(json_text({k: v for k, v in summary.items() if k != "per_image"}))
    if not per_image:
        print(f"error: not one of the {len(files)} images could be read (listed under 'unreadable' in "
              f"{out / 'predictions.json'})", file=sys.stderr)
        return 1
    return 0


def unique_files(files: List[Path]) -> List[Path]:
    """``files`` without repeats (the same file given twice, or by two paths), in their first order."""
    seen: dict = {}
    for f in files:
        seen.setdefault(f.resolve(), f)
    return list(seen.values())


if __name__ == "__main__":
    from vision_rwkv.engine.cli import run_tool
    run_tool(main)
