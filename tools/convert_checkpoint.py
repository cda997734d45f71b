#!/usr/bin/env python3
"""Convert an original Vision-RWKV checkpoint (.pth, mmcls or InternImage layout) to this package's layout.

    python tools/convert_checkpoint.py vrwkv_t_in1k_224.pth vrwkv_t.safetensors --model vrwkv_tiny_patch16_224

With ``--model`` the converted weights are checked against that timm model (class count from the checkpoint)
before anything is written. The result loads with
``timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file='vrwkv_t.safetensors'))``.
Thin CLI over :func:`vision_rwkv.models.convert.convert_file`.
"""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('src', help='original checkpoint (.pth / .pt / .safetensors)')
    parser.add_argument('dst', help='output .safetensors file')
    parser.add_argument('--model', default=None,
                        help='timm model name to validate against, e.g. vrwkv_tiny_patch16_224')
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    from vision_rwkv.models.convert import CheckpointMismatchError, convert_file

    try:
        summary = convert_file(args.src, args.dst, model_name=args.model)
    except (CheckpointMismatchError, FileNotFoundError, ValueError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 1
    print(f"wrote {summary['dst']}: {summary['family']} weights, {summary['num_tensors']} tensors, "
          f"{summary['num_classes']} classes")
    return 0


if __name__ == '__main__':
    sys.exit(main())
