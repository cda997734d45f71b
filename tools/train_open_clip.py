#!/usr/bin/env python
"""open_clip's own training script (``open_clip_train.main``) with the RWKV-CLIP models available by name.

    python tools/train_open_clip.py --model RWKV-CLIP-B-32 --train-data train.csv --dataset-type csv ...

Every argument is open_clip_train's (``--help``); ``import rwkv_clip`` first routes ``--model RWKV-CLIP-*`` to the
RWKV towers (``rwkv_clip.install_open_clip_routes``). Needs open_clip_train's data dependencies (braceexpand,
webdataset, pandas). ``tools/train_clip.py`` is this package's own, config-driven trainer.
"""
from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> None:
    import rwkv_clip  # noqa: F401  (importing routes open_clip.create_model_and_transforms for the RWKV-CLIP names)
    try:
        from open_clip_train.main import main as train_main
    except ImportError as err:
        sys.exit(f"error: open_clip_train is not importable ({err}); pip install braceexpand webdataset pandas")
    train_main(sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    main()
