"""RWKV-CLIP models as open_clip hub folders (``open_clip_config.json`` + weights), for ``local-dir:FOLDER`` and,
once uploaded, ``hf-hub:ORG/NAME``:

    python -m rwkv_clip.hub --model RWKV-CLIP-B-32 --checkpoint runs/clip/checkpoints/ckpt_00010000.pt --out my-clip
    python -m rwkv_clip.hub --run-dir runs/clip --out my-clip     # a train_clip run, model.kwargs included
    model, _, preprocess = open_clip.create_model_and_transforms("local-dir:my-clip")  # after import rwkv_clip

open_clip's own ``push_to_hf_hub.save_for_hf`` needs a tokenizer with ``save_pretrained`` (its default
SimpleTokenizer has none); RWKV-CLIP's tokenizer is rebuilt from the folder's config, so none is stored.
"""
from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path
from typing import List, Optional

import torch
from torch import nn

__all__ = ["save_for_hf", "main"]


class _ConfigTokenizer:
    """The tokenizer argument of open_clip's save_for_hf: nothing to write (the config's text_cfg rebuilds it)."""

    def save_pretrained(self, folder: str) -> None:
        del folder


def save_for_hf(model: nn.Module, folder: str | Path, model_name: str | None = None,
                safe_serialization: bool = True) -> Path:
    """Write ``model`` as an open_clip hub folder: the config it was built with (``model.model_cfg``, recorded by
    :func:`rwkv_clip.create_model` with every override, ``force_image_size`` included; for a model built otherwise,
    the registered config ``model_name``), its preprocessing (``open_clip.get_model_preprocess_cfg(model)``) and
    ``open_clip_model.safetensors`` (or ``.bin`` with ``safe_serialization=False``). A config the weights do not
    fit is an error before anything is written. Returns the folder."""
    from open_clip.push_to_hf_hub import save_for_hf as open_clip_save_for_hf

    from .factory import get_model_config

    cfg = getattr(model, "model_cfg", None)
    if cfg is None:
        if model_name is None:
            raise ValueError("the model records no config (it was not built by rwkv_clip.create_model): give the "
                             "name of the RWKV-CLIP config it was built from")
        cfg = get_model_config(model_name)
    _check_config_fits(model, cfg)
    folder = Path(folder)
    open_clip_save_for_hf(model, _ConfigTokenizer(), copy.deepcopy(cfg), folder,
                          safe_serialization=safe_serialization)
    return folder


def _check_config_fits(model: nn.Module, cfg: dict) -> None:
    """ValueError unless a model built from ``cfg`` (on the meta device: no memory) has ``model``'s parameter and
    buffer names and shapes: a folder whose config does not rebuild its weights would fail to load."""
    from .model import RWKVCLIP

    from vision_rwkv.models.convert import key_mismatches

    with torch.device("meta"):
        rebuilt = RWKVCLIP(**copy.deepcopy(cfg))
    problems = key_mismatches(rebuilt.state_dict(), model.state_dict())  # (the model's weights as the "checkpoint")
    if problems:
        raise ValueError("the config does not rebuild this model's weights: " + "; ".join(problems)
                         + " - give the config the model was built with")


def main(argv: Optional[List[str]] = None) -> int:
    """``--model NAME --checkpoint FILE --out FOLDER`` or ``--run-dir RUN --out FOLDER``: a trained checkpoint (EMA
    weights when it has them, as every loader here) as a hub folder."""
    parser = argparse.ArgumentParser(prog="python -m rwkv_clip.hub", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="RWKV-CLIP config name (rwkv_clip.list_models()); with "
                        "--run-dir: the run's model.name")
    parser.add_argument("--run-dir", default=None, help="a train_clip run folder: the model as its config.yaml built "
                        "it (model.name and model.kwargs), the weights of its newest checkpoint (of its best.pt "
                        "where it has one)")
    parser.add_argument("--checkpoint", default=None, help="training checkpoint or state dict (.pt / .safetensors)")
    parser.add_argument("--out", required=True, help="folder to write")
    parser.add_argument("--bin", action="store_true", help="open_clip_pytorch_model.bin instead of .safetensors")
    args = parser.parse_args(argv)
    from vision_rwkv.engine.config import ConfigError

    from .evaluate import run_model_spec
    from .factory import create_model

    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        print(f"error: {out} exists and is not empty", file=sys.stderr)
        return 2
    try:
        kwargs: dict = {}
        checkpoint, name = args.checkpoint, args.model
        if args.run_dir is not None:
            run_name, kwargs, run_checkpoint = run_model_spec(args.run_dir, prefer_best=True)
            name, checkpoint = name or run_name, checkpoint or run_checkpoint
        if name is None or checkpoint is None:
            parser.error("give --model and --checkpoint, or --run-dir")
        model = create_model(name, pretrained=checkpoint, **kwargs)
        save_for_hf(model, out, name, safe_serialization=not args.bin)
    except (FileNotFoundError, ValueError, RuntimeError, KeyError, ConfigError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {out} from {checkpoint}: open_clip.create_model_and_transforms('local-dir:{out}') after import "
          "rwkv_clip")
    return 0


if __name__ == "__main__":
    sys.exit(main())
