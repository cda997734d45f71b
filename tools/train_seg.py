#!/usr/bin/env python
"""Train a semantic segmentor (thin CLI over `vision_rwkv.seg.train_segmentor`).

    python tools/train_seg.py CONFIG [key=value ...] [--resume latest|PATH]
    python tools/train_seg.py configs/segmentation/demo_shapes.yaml optim.max_iters=2000
    torchrun --nproc_per_node 8 tools/train_seg.py configs/segmentation/upernet_vrwkv_tiny_ade20k_512.yaml \\
        model.pretrained=vrwkv_t.safetensors

CONFIG is a YAML file under configs/segmentation/ (``--config CONFIG`` is an alias); overrides use dotted keys of
the schema (vision_rwkv/seg/config.py). ``--resume latest|PATH`` is the same as ``train.resume=latest|PATH``.
Under torchrun on GPUs BatchNorm becomes SyncBatchNorm (train.sync_bn; CPU processes keep their own BatchNorm,
torch has no CPU SyncBatchNorm) and data.batch_size is per process. Writes checkpoints, CSV logs,
curves.png and val_metrics.json under train.run_dir. Exit status 2 for a bad command line or config; 128 + the
signal's number after SIGTERM / SIGUSR1 / Ctrl-C, which checkpoint the step in progress (--resume latest goes on).
"""
from __future__ import annotations

from typing import List, Optional

from vision_rwkv.engine.cli import ConfigArgs, config_arg_parser, exit_status, parse_config_args, run_config_job


def parse_args(argv: Optional[List[str]] = None) -> ConfigArgs:
    parser = config_arg_parser(__doc__.splitlines()[0], "YAML config, e.g. configs/segmentation/demo_shapes.yaml",
                               resume=True, epilog=__doc__.split("\n\n", 1)[1])
    return parse_config_args(parser, argv, option_keys={"resume": "train.resume"})


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    from vision_rwkv.engine import json_text, launch_rank
    from vision_rwkv.seg import load_seg_config, train_segmentor

    status, result = run_config_job(lambda: load_seg_config(args.config, args.overrides), train_segmentor)
    if status == 0 and result.get("stopped"):  # (a stop signal: checkpointed; the status says how it ended)
        return exit_status(result)
    if status == 0 and launch_rank() == 0:  # (torchrun: the process group is gone by now)
        print(json_text({k: v for k, v in result.items() if k != "per_class"}))
    return status


if __name__ == "__main__":
    from vision_rwkv.engine.cli import run_tool
    run_tool(main)
