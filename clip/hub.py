"""RWKV-CLIP models as open_clip hub folders (``open_clip_config.json`` + weights), for ``local-dir:FOLDER`` and,
once uploaded, ``hf-hub:ORG/NAME``:

    python -m rwkv_clip.hub --model RWKV-CLIP-B-32 --checkpoint runs/clip/checkpoints/best.pt --out my-rwkv-clip
    model, _, preprocess = open_clip.create_model_and_transforms("local-dir:my-rwkv-clip")  # after import rwkv_clip

open_clip's own ``push_to_hf_hub.save_for_hf`` needs a tokenizer with ``save_pretrained`` (its default
SimpleTokenizer has none); RWKV-CLIP's tokenizer is rebuilt from the folder's config, so none is stored.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import List, Optional

from torch import nn

__all__ = ["save_for_hf", "main"]


class _ConfigTokenizer:
    """The tokenizer argument of open_clip's save_for_hf: nothing to write (the config's text_cfg rebuilds it)."""

    def save_pretrained(self, folder: str) -> None:
        del folder


def save_for_hf(model: nn.Module, folder: str | Path, model_name: str, safe_serialization: bool = True) -> Path:
    """Write ``model`` (built from the RWKV-CLIP config ``model_name``) as an open_clip hub folder: its config, its
    preprocessing (``open_clip.get_model_preprocess_cfg(model)``) and ``open_clip_model.safetensors`` (or ``.bin``
    with ``safe_serialization=False``). Returns the folder."""
    from open_clip.push_to_hf_hub import save_for_hf as open_clip_save_for_hf

    from .factory import get_model_config

    folder = Path(folder)
    open_clip_save_for_hf(model, _ConfigTokenizer(), get_model_config(model_name), folder,
                          safe_serialization=safe_serialization)
    return folder


def main(argv: Optional[List[str]] = None) -> int:
    """``--model NAME --checkpoint FILE --out FOLDER``: a trained checkpoint (EMA weights when it has them, as every
    loader here) as a hub folder."""
    parser = argparse.ArgumentParser(prog="python -m rwkv_clip.hub", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="RWKV-CLIP config name (rwkv_clip.list_models())")
    parser.add_argument("--checkpoint", required=True, help="training checkpoint or state dict (.pt / .safetensors)")
    parser.add_argument("--out", required=True, help="folder to write")
    parser.add_argument("--bin", action="store_true", help="open_clip_pytorch_model.bin instead of .safetensors")
    args = parser.parse_args(argv)
    from .factory import create_model

    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        print(f"error: {out} exists and is not empty", file=sys.stderr)
        return 2
    try:
        model = create_model(args.model, pretrained=args.checkpoint)
    except (FileNotFoundError, ValueError, RuntimeError, KeyError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    save_for_hf(model, out, args.model, safe_serialization=not args.bin)
    print(f"wrote {out}: open_clip.create_model_and_transforms('local-dir:{out}') after import rwkv_clip")
    return 0


if __name__ == "__main__":
    sys.exit(main())
