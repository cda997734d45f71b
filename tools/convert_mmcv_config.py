#!/usr/bin/env python3
"""Convert an mmcv 1.x config of the original Vision-RWKV models - mmseg 0.x segmentation (VRWKV_Adapter + UperNet,
its ``segmentation/configs``) or mmcls 0.x classification (VRWKV / VRWKV6, its ``classification/configs``), or your
own edit of one - into a YAML config of this package's tools.

    python tools/convert_mmcv_config.py segmentation/configs/ade20k/my_config.py configs/segmentation/my.yaml
    python tools/train_seg.py configs/segmentation/my.yaml
    python tools/convert_mmcv_config.py classification/configs/vrwkv/my_config.py configs/classification/my.yaml
    python tools/train.py configs/classification/my.yaml

The kind follows the config's model (EncoderDecoder: segmentation; ImageClassifier: classification). The Python
config and its ``_base_`` files are read without running them (literals, dict() calls, pure builtins, names
assigned above, ``{{_base_.key}}``). Settings that would change the results and have no equivalent here (another
loss, an extra augmentation, ...) stop the conversion with a list of them (exit status 2); ``--allow-unsupported``
writes the config anyway, with that list as comments at its top. The written file is loaded back (and for
classification checked as tools/train.py checks it) before the command succeeds. A classification config is
written over ``_base_:`` configs/classification/base.yaml (by its path from the output's folder).
Thin CLI over :mod:`vision_rwkv.seg.mmseg_config_convert` and :mod:`vision_rwkv.engine.mmcls_config_convert`.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Callable, List, Optional


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("src", help="mmseg / mmcls 0.x Python config (.py)")
    parser.add_argument("dst", help="YAML config to write")
    parser.add_argument("--allow-unsupported", action="store_true",
                        help="write the config even if settings without an equivalent are left out (listed in it)")
    parser.add_argument("--force", action="store_true", help="overwrite dst if it exists")
    return parser.parse_args(argv)


def _converter(mm: dict, src: str, dst: Path) -> tuple[Callable, Callable, str]:
    """(convert, to_yaml, tool) for the config's kind."""
    from vision_rwkv.engine import ConfigError

    kind = (mm.get("model") or {}).get("type") if isinstance(mm.get("model"), dict) else None
    if kind in ("EncoderDecoder", "CascadeEncoderDecoder"):
        from vision_rwkv.seg.config import load_seg_config
        from vision_rwkv.seg.mmseg_config_convert import conversion_yaml, convert_mmseg_config
        return convert_mmseg_config, lambda c: conversion_yaml(c, src), load_seg_config
    if kind == "ImageClassifier":
        from vision_rwkv.engine import load_config
        from vision_rwkv.engine.classification import check_training_config
        from vision_rwkv.engine.mmcls_config_convert import convert_mmcls_config, mmcls_conversion_yaml
        from vision_rwkv.resources import configs_dir

        base = os.path.relpath(configs_dir() / "classification" / "base.yaml", dst.resolve().parent)

        def load(path: str) -> None:
            check_training_config(load_config(path))

        return convert_mmcls_config, lambda c: mmcls_conversion_yaml(c, src, base), load
    raise ConfigError(f"{src}: model.type={kind!r}; EncoderDecoder (mmseg) and ImageClassifier (mmcls) configs "
                      f"convert")


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    from vision_rwkv.engine import ConfigError
    from vision_rwkv.engine.mmcv_config import read_mmcv_config

    dst = Path(args.dst)
    if dst.exists() and not args.force:
        print(f"error: {dst} exists (--force to overwrite)", file=sys.stderr)
        return 2
    try:
        referenced: set = set()
        mm = read_mmcv_config(args.src, referenced)
        convert, to_yaml, load = _converter(mm, args.src, dst)
        conversion = convert(mm, name=Path(args.src).stem, referenced=referenced)
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
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".yaml", dir=dst.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(to_yaml(conversion))
        load(tmp)  # the schema / value checks of every key, before the file takes dst's name
        os.replace(tmp, dst)
    except ConfigError as err:
        print(f"error: the converted config does not load: {str(err).replace(tmp, str(dst))}", file=sys.stderr)
        return 2
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    left = f", {len(conversion.unsupported)} setting(s) left out (listed in it)" if conversion.unsupported else ""
    print(f"wrote {dst}{left}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
