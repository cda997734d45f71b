"""Model factory in the style of open_clip's `factory.py`: named JSON configs, transforms, tokenizer, weights.

    model, preprocess_train, preprocess_val = rwkv_clip.create_model_and_transforms("RWKV-CLIP-B-32")
    tokenizer = rwkv_clip.get_tokenizer("RWKV-CLIP-B-32")

Pretrained weights load from a local file (`pretrained=PATH`): our own checkpoints (state dict, or a training
checkpoint holding one under "model"/"state_dict") and the original RWKV-CLIP release format (`image_model.*`,
`text_model.*`, `logit_scale`, optional `module.` prefixes, bf16 tensors), in .pt/.pth or .safetensors files. A
`local-dir:FOLDER` name brings its own config and weights (open_clip's hub layout); only an `hf-hub:ORG/REPO` name,
given on purpose, downloads (through open_clip, into the Hugging Face cache).
"""
from __future__ import annotations

import contextlib
import copy
import inspect
import json
import logging
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import open_clip
import torch
from open_clip.model import set_model_preprocess_cfg
from open_clip.transform import (AugmentationCfg, PreprocessCfg, image_transform_v2, merge_preprocess_dict,
                                 merge_preprocess_kwargs)

from vision_rwkv.models.convert import (CheckpointFileMismatchError, key_mismatches, load_checkpoint_file,
                                        select_weights)

from .model import RWKVCLIP
from .text_model import TextRWKV
from .model_configs import CONFIG_DIR

__all__ = [
    "list_models", "get_model_config", "register_model_configs", "create_model", "create_model_and_transforms",
    "get_tokenizer", "load_state_dict", "load_checkpoint", "image_transforms", "is_rwkv_clip_config", "model_source",
]

_MODEL_CONFIGS: dict[str, dict] = {}


def register_model_configs(path: Union[str, Path] = CONFIG_DIR) -> None:
    """Register a config file or a folder of JSON configs (ours and, through `add_model_config`, open_clip's)."""
    path = Path(path)
    files = sorted(path.glob("*.json")) if path.is_dir() else [path]
    for f in files:
        cfg = json.loads(f.read_text())
        if not all(k in cfg for k in ("embed_dim", "vision_cfg", "text_cfg")):
            raise ValueError(f"model config {f} needs the keys embed_dim, vision_cfg and text_cfg")
        _MODEL_CONFIGS[f.stem] = cfg
    open_clip.add_model_config(path)


def is_rwkv_clip_config(cfg: Any) -> bool:
    """Whether a model config (ours, or one open_clip holds: `add_model_config`, a `local-dir:` / `hf-hub:`
    folder's `model_cfg`) describes RWKV-CLIP: a timm image tower and an RWKV text tower (`head_size`, none of
    open_clip's text-tower keys)."""
    if not isinstance(cfg, dict) or not all(isinstance(cfg.get(k), dict) for k in ("vision_cfg", "text_cfg")):
        return False
    text_keys = set(inspect.signature(TextRWKV).parameters)
    return ("timm_model_name" in cfg["vision_cfg"] and "head_size" in cfg["text_cfg"]
            and set(cfg["text_cfg"]) <= text_keys and "embed_dim" in cfg)


def list_models() -> list[str]:
    """Names of the RWKV-CLIP model configs."""
    return sorted(_MODEL_CONFIGS)


def get_model_config(model_name: str) -> dict:
    """A deep copy of the named config: ours, or an RWKV-CLIP config given to ``open_clip.add_model_config``
    (KeyError naming the known configs when unknown)."""
    if model_name not in _MODEL_CONFIGS:
        added = open_clip.factory._MODEL_CONFIGS.get(model_name)
        if is_rwkv_clip_config(added):
            return copy.deepcopy(added)
        raise KeyError(f"unknown RWKV-CLIP model config {model_name!r}; known: {list_models()}")
    return copy.deepcopy(_MODEL_CONFIGS[model_name])


def _weights_in_folder(folder: Path) -> Optional[str]:
    """The weights file open_clip's ``local-dir:`` loads: its preferred names first, then .safetensors files."""
    preferred = ("open_clip_model.safetensors", "open_clip_pytorch_model.safetensors", "open_clip_pytorch_model.bin",
                 "open_clip_pytorch_model.pth", "model.safetensors", "pytorch_model.bin", "pytorch_model.pth",
                 "model.pth")
    for name in preferred:
        if (folder / name).is_file():
            return str(folder / name)
    found = sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin")) + sorted(folder.glob("*.pth"))
    return str(found[0]) if found else None


def model_source(model_name: str, cache_dir: Optional[str] = None,
                 weights: bool = True) -> tuple[dict, dict, Optional[str]]:
    """(model config, preprocess config, weights file or None) of a model name: a config name (ours or one given to
    ``open_clip.add_model_config``), ``local-dir:FOLDER`` (its ``open_clip_config.json`` and weights file, as
    open_clip's ``push_to_hf_hub.save_for_hf`` writes them) or ``hf-hub:ORG/REPO`` (the same two files through
    open_clip's download, which uses the Hugging Face cache ``cache_dir`` and honours ``HF_HUB_OFFLINE``); with
    ``weights=False`` no weights file is looked for. ValueError for a folder of another kind of model."""
    schema, ident = open_clip.factory.parse_model_name(model_name)
    if schema is None:
        return get_model_config(model_name), {}, None
    weights_file = None
    if schema == "local-dir":
        folder = Path(ident)
        config_file = folder / "open_clip_config.json"
        if not config_file.is_file():
            raise FileNotFoundError(f"{model_name!r}: no open_clip_config.json in {folder}")
        weights_file = _weights_in_folder(folder) if weights else None
    else:
        from open_clip.pretrained import download_pretrained_from_hf
        config_file = Path(download_pretrained_from_hf(ident, filename="open_clip_config.json", cache_dir=cache_dir))
        weights_file = download_pretrained_from_hf(ident, cache_dir=cache_dir) if weights else None
    config = json.loads(config_file.read_text())
    cfg = config.get("model_cfg", config)
    if not is_rwkv_clip_config(cfg):
        raise ValueError(f"{model_name!r}: {config_file} holds no RWKV-CLIP model config (its text_cfg has keys "
                         f"{sorted((cfg.get('text_cfg') or {}))})")
    return copy.deepcopy(cfg), dict(config.get("preprocess_cfg") or {}), weights_file


def _merge(base: dict, overrides: dict) -> dict:
    for k, v in overrides.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            _merge(base[k], v)
        else:
            base[k] = v
    return base


def _read_state_dict(path: Union[str, Path]) -> dict[str, torch.Tensor]:
    """The weights in a local checkpoint file, as every loader here picks them (EMA weights when the file has them,
    else its ``model`` / ``state_dict`` entry, else the file itself)."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"checkpoint file not found: {path} (weights load from a local path only)")
    obj = select_weights(load_checkpoint_file(path), "auto", path)
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"checkpoint {path} does not hold a state dict of tensors")
    return obj


def load_state_dict(path: Union[str, Path]) -> dict[str, torch.Tensor]:
    """Read a local checkpoint and return OUR state dict (original RWKV-CLIP files are converted;
    `module.` / `_orig_mod.` prefixes are stripped)."""
    from .convert import convert_original_state_dict, is_original_state_dict, strip_prefixes
    sd = strip_prefixes(_read_state_dict(path))
    if is_original_state_dict(sd):
        sd = convert_original_state_dict(sd)
    return sd


def load_checkpoint(model: torch.nn.Module, path_or_state_dict: Union[str, Path, dict], strict: bool = True) -> None:
    """Load weights into `model`, upcasting/downcasting floats to the model's dtypes (a position embedding of
    another grid resampled); a :class:`~vision_rwkv.models.convert.CheckpointFileMismatchError` (a RuntimeError)
    counting and naming missing and unexpected keys (when strict) and shape mismatches."""
    if isinstance(path_or_state_dict, dict):
        from .convert import convert_original_state_dict, is_original_state_dict, strip_prefixes
        sd = strip_prefixes(path_or_state_dict)
        if is_original_state_dict(sd):
            sd = convert_original_state_dict(sd)
        source = "state dict"
    else:
        sd = load_state_dict(path_or_state_dict)
        source = str(path_or_state_dict)
    own = model.state_dict()
    problems = key_mismatches(own, sd, strict, shapes_exempt=lambda k: k.endswith(".pos_embed"))
    if problems:
        raise CheckpointFileMismatchError(f"checkpoint {source} does not match the model: {'; '.join(problems)}")
    fixed = {}
    for k, v in sd.items():
        if k not in own:
            continue
        if k.endswith(".pos_embed") and own[k].shape != v.shape:  # trained at another image size: resampled
            from vision_rwkv.models.convert import fit_pos_embed
            v = fit_pos_embed(v, model.get_submodule(k.rsplit(".", 1)[0]))
        if own[k].shape != v.shape:  # (a position embedding that does not resample to the model's)
            raise CheckpointFileMismatchError(f"checkpoint {source}: {k} has shape {tuple(v.shape)}, model expects "
                                              f"{tuple(own[k].shape)}")
        fixed[k] = v.to(own[k].dtype) if v.is_floating_point() else v
    model.load_state_dict(fixed, strict=strict)


# open_clip precision names -> the dtype the weights are cast to ("amp*": fp32 weights, autocast at run time)
_PRECISIONS = {"fp32": torch.float32, "amp": torch.float32, "amp_bf16": torch.float32, "amp_bfloat16": torch.float32,
               "bf16": torch.bfloat16, "pure_bf16": torch.bfloat16, "fp16": torch.float16, "pure_fp16": torch.float16}


def create_model(
        model_name: str,
        pretrained: Optional[Union[str, Path]] = None,
        precision: str = "fp32",
        device: Union[str, torch.device] = "cpu",
        output_dict: bool = False,
        force_image_size: Optional[Union[int, tuple[int, int]]] = None,
        force_context_length: Optional[int] = None,
        force_quick_gelu: bool = False,
        force_preprocess_cfg: Optional[dict[str, Any]] = None,
        cache_dir: Optional[str] = None,
        **model_kwargs: Any,
) -> RWKVCLIP:
    """Build a named RWKV-CLIP model.

    Args:
        model_name: one of `list_models()`, a config given to `open_clip.add_model_config`, or (as open_clip)
            `local-dir:FOLDER` / `hf-hub:ORG/REPO`: a folder of open_clip's `save_for_hf` layout (config, weights
            and preprocessing; `pretrained` is then ignored, with a warning).
        pretrained: optional LOCAL checkpoint path (ours or the original release format).
        precision: the dtype the weights are cast to, with open_clip's names: "fp32" / "amp" / "amp_bf16" (fp32
            weights; for training keep these and use autocast), "bf16" / "pure_bf16", "fp16" / "pure_fp16".
        device: where to put the model.
        output_dict: forward returns a dict.
        force_image_size: another input resolution (square int or (h, w)); a `pretrained` position embedding of
            another (square) grid is resampled to it on load, as open_clip does.
        force_context_length: another text length (the RWKV text tower has no position embedding). The text
            features change with it (the tower pools over every position, padding included, as the original):
            evaluate at the length the model was trained at.
        force_quick_gelu: accepted for open_clip compatibility; RWKV towers have no GELU, so True is an error.
        force_preprocess_cfg: open_clip's preprocessing overrides (mean, std, interpolation, resize_mode, ...) of
            the `model.visual.preprocess_cfg` that open_clip's transforms and hub helpers read.
        cache_dir: the Hugging Face cache of an `hf-hub:` name.
        **model_kwargs: overrides merged into the config (dicts merge key by key), e.g.
            vision_cfg={"drop_path_rate": 0.0}, text_cfg={"layers": 2}, init_logit_bias=-10.
    """
    cfg, preprocess, folder_weights = model_source(model_name, cache_dir)
    if folder_weights is not None:
        if pretrained:
            warnings.warn(f"ignoring pretrained={pretrained!r}: {model_name!r} names its weights", stacklevel=2)
        pretrained = folder_weights
    dtype = _PRECISIONS.get(precision)
    if dtype is None:
        raise ValueError(f"precision must be one of {sorted(_PRECISIONS)}, got {precision!r}")
    if force_quick_gelu:
        raise ValueError("force_quick_gelu: RWKV-CLIP's towers have no GELU (its MLPs use squared ReLU)")
    cfg = _merge(cfg, model_kwargs)
    if force_context_length is not None:
        cfg["text_cfg"]["context_length"] = int(force_context_length)
    model = RWKVCLIP(**cfg, output_dict=output_dict)
    if force_image_size is not None:  # before loading: a checkpoint of another grid is resampled once, on load
        size = (force_image_size, force_image_size) if isinstance(force_image_size, int) else force_image_size
        model.visual.set_input_size(tuple(int(v) for v in size))
    height, width = model.visual.image_size
    cfg["vision_cfg"]["image_size"] = height if height == width else [height, width]
    model.model_cfg = copy.deepcopy(cfg)  # the config that rebuilds this model (save_for_hf writes it)
    if pretrained:
        load_checkpoint(model, pretrained)
    # open_clip's preprocessing record (its transforms, get_model_preprocess_cfg and save_for_hf read it): the
    # defaults, a hub folder's, the model's image size, then the caller's overrides
    preprocess = merge_preprocess_dict(asdict(PreprocessCfg()), preprocess)
    preprocess["size"] = model.visual.image_size
    set_model_preprocess_cfg(model, merge_preprocess_dict(preprocess, force_preprocess_cfg or {}))
    return model.to(device=device, dtype=dtype)


def image_transforms(image_size: int | tuple[int, int], aug_cfg: Optional[dict] = None,
                     mean: Optional[Sequence[float]] = None, std: Optional[Sequence[float]] = None,
                     interpolation: str = "bicubic") -> tuple[Callable, Callable]:
    """(train, val) transforms: open_clip's with OpenAI mean/std (unless given), bicubic resize (shortest side) +
    center crop for val, RandomResizedCrop for train (what `create_model_and_transforms` builds by default)."""
    given = {k: tuple(v) for k, v in (("mean", mean), ("std", std)) if v is not None}
    return _transforms(PreprocessCfg(size=image_size, interpolation=interpolation, **given), aug_cfg)


def _transforms(cfg: PreprocessCfg, aug_cfg: Optional[Union[dict, AugmentationCfg]]) -> tuple[Callable, Callable]:
    """open_clip's (train, val) transforms of a preprocessing config."""
    return image_transform_v2(cfg, is_train=True, aug_cfg=aug_cfg), image_transform_v2(cfg, is_train=False)


def create_model_and_transforms(
        model_name: str,
        pretrained: Optional[Union[str, Path]] = None,
        precision: str = "fp32",
        device: Union[str, torch.device] = "cpu",
        output_dict: bool = False,
        aug_cfg: Optional[Union[dict, AugmentationCfg]] = None,
        image_mean: Optional[Sequence[float]] = None,
        image_std: Optional[Sequence[float]] = None,
        image_interpolation: Optional[str] = None,
        image_resize_mode: Optional[str] = None,
        **model_kwargs: Any,
) -> tuple[RWKVCLIP, Callable, Callable]:
    """(model, preprocess_train, preprocess_val) like `open_clip.create_model_and_transforms` (model arguments as
    in `create_model`): both transforms are open_clip's, from the model's `visual.preprocess_cfg` (OpenAI mean /
    std, bicubic, shortest-side resize + centre crop unless `image_mean` / `image_std` / `image_interpolation` /
    `image_resize_mode` or `force_preprocess_cfg` say otherwise)."""
    force = merge_preprocess_kwargs(dict(model_kwargs.pop("force_preprocess_cfg", None) or {}), mean=image_mean,
                                    std=image_std, interpolation=image_interpolation, resize_mode=image_resize_mode)
    model = create_model(model_name, pretrained, precision=precision, device=device, output_dict=output_dict,
                         force_preprocess_cfg=force, **model_kwargs)
    return model, *_transforms(PreprocessCfg(**model.visual.preprocess_cfg), aug_cfg)


def get_tokenizer(model_name: str = "RWKV-CLIP-B-32", context_length: Optional[int] = None,
                  cache_dir: Optional[str] = None, **kwargs: Any):
    """open_clip's SimpleTokenizer (CLIP BPE, SOT 49406, EOT 49407, pad 0) with the model's context length, for a
    config name or a ``local-dir:`` / ``hf-hub:`` folder as :func:`create_model` takes them (open_clip's
    ``get_tokenizer`` arguments)."""
    model_source(model_name, cache_dir, weights=False)  # clear error for unknown names / folders
    with _no_implicit_root_handler():
        return open_clip.get_tokenizer(model_name, context_length=context_length, cache_dir=cache_dir, **kwargs)


@contextlib.contextmanager
def _no_implicit_root_handler():
    """open_clip's ``get_tokenizer`` logs through the root logger (``logging.info``), which installs a handler
    (``logging.basicConfig``) when the root has none: the caller's later ``basicConfig`` would then do nothing and
    records of its own loggers would print twice. A handler so installed is removed again."""
    before = list(logging.root.handlers)
    try:
        yield
    finally:
        for handler in [h for h in logging.root.handlers if h not in before]:
            logging.root.removeHandler(handler)


register_model_configs(CONFIG_DIR)
