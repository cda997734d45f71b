#!/usr/bin/env python3
"""Convert an mmseg 0.x config of the original Vision-RWKV segmentation models (a VRWKV_Adapter + UperNet config of
its ``segmentation/configs``, or your own edit of one) into a YAML config of tools/train_seg.py / test_seg.py.

    python tools/convert_mmseg_config.py segmentation/configs/ade20k/my_config.py configs/segmentation/my.yaml
    python tools/train_seg.py configs/segmentation/my.yaml data.root=/data/ADEChallengeData2016

The Python config and its ``_base_`` files are read without running them (literals, dict() calls, names assigned
above, ``{{_base_.key}}``). Settings that would change the results and have no equivalent here (another loss, an
extra augmentation, SGD, ...) stop the conversion with a list of them (exit status 2); ``--allow-unsupported``
writes the config anyway, with that list as comments at its top. The written file is loaded back with the schema
before the command succeeds. Thin CLI over :mod:`vision_rwkv.seg.mmseg_config_convert`.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import List, Optional


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("src", help="mmseg 0.x Python config (.py)")
    parser.add_argument("dst", help="YAML config to write")
    parser.add_argument("--allow-unsupported", action="store_true",
                        help="write the config even if settings without an equivalent are left out (listed in it)")
    parser.add_argument("--force", action="store_true", help="overwrite dst if it exists")
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    from vision_rwkv.engine import ConfigError
    from vision_rwkv.seg.config import load_seg_config
    from vision_rwkv.seg.mmseg_config_convert import conversion_yaml, convert_mmseg_config
    from vision_rwkv.engine.mmcv_config import read_mmcv_config

    dst = Path(args.dst)
    if dst.exists() and not args.force:
        print(f"error: {dst} exists (--force to overwrite)", file=sys.stderr)
        return 2
    try:
        conversion = convert_mmseg_config(read_mmcv_config(args.src), name=Path(args.src).stem)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for note in conversion.notes:
        print(f"note: {note}")
    if conversion.unsupported and not args.allow_unsupported:
        print(f"error: {len(conversion.unsupported)} setting(s) of {args.src} have no equivalent here:",
              file=sys.stderr)
        for item in conversion.unsupported:
            print(f"  - {item}", file=sys.stderr)
        print("(--allow-unsupported writes the config without them, listed at its top)", file=sys.stderr)
        return 2
    text = conversion_yaml(conversion, args.src)
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", dir=dst.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    try:
        load_seg_config(tmp)  # the schema check of every key and value, before the file takes dst's name
    except ConfigError as err:
        os.unlink(tmp)
        print(f"error: the converted config does not load: {err}", file=sys.stderr)
        return 2
    os.replace(tmp, dst)
    left = f", {len(conversion.unsupported)} setting(s) left out (listed in it)" if conversion.unsupported else ""
    print(f"wrote {dst}{left}\n  python tools/train_seg.py {dst}\n  python tools/test_seg.py {dst} --checkpoint FILE")
    return 0


if __name__ == "__main__":
    sys.exit(main())
