"""open_clip's model factories, routed to rwkv_clip for the RWKV-CLIP model names.

After ``import rwkv_clip``, ``open_clip.create_model("RWKV-CLIP-B-32", ...)``, ``create_model_and_transforms`` and
``create_model_from_pretrained`` build the RWKV-CLIP model (open_clip cannot: it would instantiate its own CLIP from
the config and fail on the RWKV towers' keys), so code written against open_clip - a training script, a benchmark
harness - takes the RWKV models by name. Every other name goes to open_clip unchanged. open_clip arguments that
have no meaning for the RWKV towers are accepted at their defaults and are an error otherwise (naming the argument).
"""
from __future__ import annotations

import functools
import inspect
from typing import Any, Callable

import open_clip
import open_clip.factory

from .factory import create_model, create_model_and_transforms, list_models

__all__ = ["install_open_clip_routes"]

# open_clip arguments without a counterpart here: value each must keep (None: must be None)
_INERT = {"jit": False, "force_patch_dropout": None, "image_resize_mode": None, "pretrained_image": False,
          "pretrained_image_path": None, "pretrained_text_path": None, "force_preprocess_cfg": None}
# accepted and ignored: weights load locally, always with weights_only; the text tower is always "custom"
_IGNORED = ("cache_dir", "weights_only", "pretrained_text", "force_custom_text")


def _our_kwargs(bound: inspect.BoundArguments, fn_name: str) -> dict[str, Any]:
    args = dict(bound.arguments)
    args.update(args.pop("model_kwargs", None) or {})
    for key, default in _INERT.items():
        value = args.pop(key, default)
        if value != default:
            raise ValueError(f"open_clip.{fn_name}({args['model_name']!r}): {key}={value!r} is not supported by "
                             f"RWKV-CLIP (leave it at {default!r})")
    for key in _IGNORED:
        args.pop(key, None)
    if not args.pop("load_weights", True):
        args["pretrained"] = None
    if args.pop("require_pretrained", False) or fn_name == "create_model_from_pretrained":
        _require_weights(args)
    if args.get("output_dict") is None:
        args.pop("output_dict", None)
    return args


def _require_weights(args: dict[str, Any]) -> None:
    """open_clip's ``require_pretrained`` (implied by ``create_model_from_pretrained``): no weights, no model."""
    if not args.get("pretrained"):
        raise RuntimeError(f"Required pretrained weights (model_name={args['model_name']!r}, "
                           f"pretrained={args.get('pretrained')!r}) could not be loaded: RWKV-CLIP loads local files "
                           "only, so pass pretrained=PATH to a checkpoint")


def _routed(original: Callable, fn_name: str, ours: Callable[[dict], Any]) -> Callable:
    if getattr(original, "_rwkv_clip_route", False):
        return original
    signature = inspect.signature(original)

    @functools.wraps(original)
    def route(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        if bound.arguments.get("model_name") not in list_models():
            return original(*args, **kwargs)
        return ours(_our_kwargs(bound, fn_name))

    route._rwkv_clip_route = True
    return route


def _from_pretrained(kwargs: dict) -> Any:
    return_transform = kwargs.pop("return_transform", True)
    model, _, preprocess = create_model_and_transforms(**kwargs)
    return (model, preprocess) if return_transform else model


def _create_model(kwargs: dict) -> Any:
    for key in ("image_mean", "image_std", "image_interpolation", "aug_cfg"):  # transform settings: no transform
        kwargs.pop(key, None)
    return create_model(**kwargs)


def install_open_clip_routes() -> None:
    """Route ``open_clip.create_model`` / ``create_model_and_transforms`` / ``create_model_from_pretrained`` (in
    ``open_clip`` and ``open_clip.factory``) to rwkv_clip for its model names (idempotent)."""
    routes = {"create_model": _create_model,
              "create_model_and_transforms": lambda kwargs: create_model_and_transforms(**kwargs),
              "create_model_from_pretrained": _from_pretrained}
    for fn_name, ours in routes.items():
        route = _routed(getattr(open_clip.factory, fn_name), fn_name, ours)
        for module in (open_clip.factory, open_clip):
            setattr(module, fn_name, route)
