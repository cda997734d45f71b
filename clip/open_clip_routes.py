"""open_clip's model factories, routed to rwkv_clip for the RWKV-CLIP model names.

After ``import rwkv_clip``, ``open_clip.create_model("RWKV-CLIP-B-32", ...)``, ``create_model_and_transforms`` and
``create_model_from_pretrained`` build the RWKV-CLIP model (open_clip cannot: it would instantiate its own CLIP from
the config and fail on the RWKV towers' keys), so code written against open_clip - a training script, a benchmark
harness - takes the RWKV models by name: our configs, RWKV-CLIP configs added with ``open_clip.add_model_config``,
and ``local-dir:`` / ``hf-hub:`` folders holding one. Every other name goes to open_clip unchanged. open_clip
arguments that have no meaning for the RWKV towers are accepted at their defaults and are an error otherwise (naming
the argument).
"""
from __future__ import annotations

import functools
import importlib
import inspect
from typing import Any, Callable

import open_clip
import open_clip.factory

from .factory import create_model, create_model_and_transforms, is_rwkv_clip_config, list_models, model_source

__all__ = ["install_open_clip_routes", "is_ours"]

# open_clip arguments without a counterpart here: value each must keep (None: must be None)
_INERT = {"jit": False, "force_patch_dropout": None, "pretrained_image": False, "pretrained_image_path": None,
          "pretrained_text_path": None}
# accepted and ignored: weights load always with weights_only; the text tower is always "custom"
_IGNORED = ("weights_only", "pretrained_text", "force_custom_text")


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
    """open_clip's ``require_pretrained`` (implied by ``create_model_from_pretrained``): no weights, no model (a
    ``local-dir:`` / ``hf-hub:`` name brings its own)."""
    if open_clip.factory.parse_model_name(args["model_name"])[0] is not None:
        if model_source(args["model_name"], args.get("cache_dir"))[2] is None:
            raise RuntimeError(f"Required pretrained weights (model_name={args['model_name']!r}) could not be "
                               "loaded: the folder holds no weights file")
        return
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
        if not is_ours(bound.arguments.get("model_name"), bound.arguments.get("cache_dir")):
            return original(*args, **kwargs)
        return ours(_our_kwargs(bound, fn_name))

    route._rwkv_clip_route = True
    return route


def is_ours(model_name: Any, cache_dir: str | None = None) -> bool:
    """Whether open_clip's factories should build ``model_name`` here: our config names, RWKV-CLIP configs given to
    ``open_clip.add_model_config``, and ``local-dir:`` / ``hf-hub:`` folders holding one (their config is read as
    open_clip reads it, a hub one from ``cache_dir``; one that cannot be read goes on to open_clip, which reports
    the problem)."""
    if not isinstance(model_name, str):
        return False
    if model_name in list_models():
        return True
    try:
        return model_source(model_name, cache_dir, weights=False) is not None
    except Exception:  # (an unreadable folder / hub config, or not RWKV-CLIP: open_clip's own route)
        return False


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
    # open_clip's push_to_hf_hub module binds create_model_from_pretrained at import (routed there too; the package
    # attribute of that name is its function, so the module comes from sys.modules)
    hub = importlib.import_module("open_clip.push_to_hf_hub")
    for fn_name, ours in routes.items():
        original = getattr(open_clip.factory, fn_name)
        route = _routed(original, fn_name, ours)
        for module in (open_clip.factory, open_clip, hub):
            if module is not hub or getattr(module, fn_name, None) is original:
                setattr(module, fn_name, route)
