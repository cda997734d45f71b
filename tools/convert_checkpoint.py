#!/usr/bin/env python3
"""Convert a Vision-RWKV checkpoint (an original .pth, mmcls or InternImage layout, or one of ours) to this package's
layout as .safetensors.

    python tools/convert_checkpoint.py vrwkv_t_in1k_224.pth vrwkv_t.safetensors --model vrwkv_tiny_patch16_224
    python tools/convert_checkpoint.py runs/demo/checkpoints/best.pt demo.safetensors --weights model

With ``--model`` the converted weights are checked against that timm model (class count from the checkpoint)
before anything is written. A training checkpoint gives its EMA weights when it has them (``--weights auto``, the
rule of every loader here and of timm's ``use_ema=True``), else its model weights. For v4 weights the file's
metadata records the Bi-WKV function they were trained with when it is known: ``original`` for the released
checkpoints (original layout), the mode a training checkpoint recorded for ours. The result loads with
``timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file='vrwkv_t.safetensors'))``, with
``model.checkpoint=`` and with the tools' ``--checkpoint``.
Thin CLI over :func:`vision_rwkv.models.convert.convert_file`.
"""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('src', help='checkpoint to convert (.pth / .pt / .safetensors)')
    parser.add_argument('dst', help='output .safetensors file')
    parser.add_argument('--model', default=None,
                        help='timm model name to validate against, e.g. vrwkv_tiny_patch16_224')
    parser.add_argument('--weights', default='auto', choices=('auto', 'model', 'ema'),
                        help="a training checkpoint's weights: auto = EMA when present (default), model, ema")
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    from vision_rwkv.models.convert import CheckpointMismatchError, convert_file

    try:
        summary = convert_file(args.src, args.dst, model_name=args.model, weights=args.weights)
    except (CheckpointMismatchError, FileNotFoundError, ValueError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 1
    mode = f", wkv_mode {summary['wkv_mode']!r}" if summary['wkv_mode'] else ''
    print(f"wrote {summary['dst']}: {summary['family']} weights, {summary['num_tensors']} tensors, "
          f"{summary['num_classes']} classes{mode}")
    if summary['dropped']:  # (a segmentor's file: its backbone is what a classifier or segmentor starts from)
        parts = sorted({name.split('.')[0] for name in summary['dropped']})
        print(f"  the backbone of a segmentation model: its {len(summary['dropped'])} {' / '.join(parts)} tensors "
              "are left out")
    if summary['wkv_mode'] == 'original':  # (timm's checkpoint_path= / load_checkpoint do not read the metadata)
        print("  timm.create_model(..., pretrained=True, pretrained_cfg_overlay=dict(file=...)) runs it in "
              "'original'; with checkpoint_path= (validate.py --checkpoint) pass wkv_mode='original'")
    return 0


if __name__ == '__main__':
    sys.exit(main())
