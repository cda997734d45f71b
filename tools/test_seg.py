#!/usr/bin/env python
"""Test a trained segmentor (thin CLI over `vision_rwkv.seg.test_segmentor`).

    python tools/test_seg.py CONFIG [key=value ...] [--checkpoint PATH]
    python tools/test_seg.py configs/segmentation/demo_shapes.yaml test.flip=true test.scales=[0.75,1.0,1.25]

``--config CONFIG`` is an alias of the positional CONFIG; ``--checkpoint PATH`` is the same as
``test.checkpoint=PATH`` (default: the best, else the latest checkpoint of train.run_dir; a released mmseg
checkpoint of the original repo is converted on load, with the upernet_vrwkv_adapter_* configs). The config's test
settings apply (``test.mode=slide|whole``, ``test.crop_size``, ``test.stride``, ``test.flip``, ``test.scales``).
Prints mIoU / mAcc / aAcc and the per-class IoU table; writes metrics.json, metrics_per_class.txt and
overlays.png to test.out_dir (default <run_dir>/test). Works under torchrun. Exit status 2 for a bad command line
or config, or a checkpoint that does not fit the config's model (its missing / unexpected keys counted, the first
20 of each named); 1 when there is no checkpoint to test.
"""
from __future__ import annotations

import sys
from typing import List, Optional

from vision_rwkv.engine.cli import ConfigArgs, config_arg_parser, parse_config_args, run_config_job


def parse_args(argv: Optional[List[str]] = None) -> ConfigArgs:
    parser = config_arg_parser(__doc__.splitlines()[0], "YAML config used for training",
                               checkpoint="checkpoint to test (same as test.checkpoint=PATH)",
                               epilog=__doc__.split("\n\n", 1)[1])
    return parse_config_args(parser, argv, option_keys={"checkpoint": "test.checkpoint"})


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    from vision_rwkv.engine import json_text, launch_rank
    from vision_rwkv.models.convert import CheckpointMismatchError
    from vision_rwkv.seg import load_seg_config, test_segmentor

    try:
        status, result = run_config_job(lambda: load_seg_config(args.config, args.overrides), test_segmentor)
    except CheckpointMismatchError as err:  # a checkpoint of another model: an argument error, like a bad config
        print(f"error: {err}", file=sys.stderr)
        return 2
    if status == 0 and launch_rank() == 0:  # (torchrun: the process group is gone by now)
        print(json_text({k: v for k, v in result.items() if k != "per_class"}))
    return status


if __name__ == "__main__":
    from vision_rwkv.engine.cli import run_tool
    run_tool(main)
