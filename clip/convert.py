"""Original RWKV-CLIP checkpoints and configs -> `rwkv_clip.RWKVCLIP`.

Original layout (after stripping `module.` / `_orig_mod.`):

=================================  ===============================================================
original                           ours
=================================  ===============================================================
`logit_scale`                      `logit_scale`
`image_model.*` (VRWKV6, mmcls)    `visual.trunk.*` (renamed by `vision_rwkv.models.convert`)
`text_model.*`                     `text.*` (same names and shapes)
=================================  ===============================================================

Text `time_decay` / `time_faaaa` are bf16 in the original; every float tensor is upcast to fp32 here.
`build_from_original(config, state_dict)` takes the original constructor arguments (`{"image": ..., "text": ...,
"env": ...}` as stored in the parity fixture, or the flat `model_config/RWKV_CLIP_B32.json` argument names).
"""
from __future__ import annotations

from typing import Any, Mapping

import torch

from vision_rwkv.models.convert import model_kwargs_from_original, original_to_ours, strip_key_prefixes

from .model import RWKVCLIP

__all__ = [
    "strip_prefixes", "is_original_state_dict", "convert_original_state_dict", "model_config_from_original",
    "build_from_original",
]

_PREFIXES = ("module.", "_orig_mod.")


def strip_prefixes(state_dict: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Drop DDP `module.` and torch.compile `_orig_mod.` prefixes (repeatedly) and non-tensor entries."""
    out = {}
    for name, value in state_dict.items():
        if not isinstance(value, torch.Tensor):
            continue
        out[strip_key_prefixes(name, _PREFIXES)] = value
    return out


def is_original_state_dict(state_dict: Mapping[str, Any]) -> bool:
    """True when the keys are the original RWKV-CLIP ones (`image_model.*` / `text_model.*`)."""
    return any(k.startswith(("image_model.", "text_model.")) for k in state_dict)


def convert_original_state_dict(state_dict: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Original RWKV-CLIP state dict -> ours (fp32). Keys outside image_model/text_model/logit_scale raise."""
    sd = strip_prefixes(state_dict)
    image, out, unknown = {}, {}, []
    for name, value in sd.items():
        value = value.float() if value.is_floating_point() else value
        if name.startswith("image_model."):
            image[name[len("image_model."):]] = value
        elif name.startswith("text_model."):
            out["text." + name[len("text_model."):]] = value
        elif name == "logit_scale":
            out["logit_scale"] = value.reshape([])
        else:
            unknown.append(name)
    if unknown:
        raise KeyError(f"unexpected keys in RWKV-CLIP checkpoint: {sorted(unknown)}")
    if not image:
        raise KeyError("RWKV-CLIP checkpoint has no image_model.* keys")
    for name, value in original_to_ours(image).items():
        out["visual.trunk." + name] = value
    return out


def _split_flat_config(config: Mapping[str, Any]) -> dict:
    """The original repo's flat JSON (`image_*` + text arguments) -> {"image": ..., "text": ...}."""
    image_keys = {"input_size": "img_size", "image_patch_size": "patch_size", "image_embed_dims": "embed_dims",
                  "image_hidden_rate": "hidden_rate", "image_depth": "depth", "image_num_heads": "num_heads",
                  "image_with_cls_token": "with_cls_token", "drop_path_rate": "drop_path_rate"}
    ignored = {"workers", "precision", "data_type", "image_output_cls_token", "text_num_head"}
    image, text = {}, {}
    for k, v in config.items():
        if k in image_keys:
            image[image_keys[k]] = v
        elif k not in ignored:
            text[k] = v
    return {"image": image, "text": text}


def model_config_from_original(config: Mapping[str, Any]) -> dict:
    """Our model config (embed_dim, vision_cfg, text_cfg) from the original constructor arguments."""
    if "image" not in config or "text" not in config:
        config = _split_flat_config(config)
    img_cfg, txt = dict(config["image"]), dict(config["text"])
    env = dict(config.get("env", {}))
    if img_cfg.pop("output_cls_token", False) or img_cfg.get("with_cls_token", False):
        raise ValueError("RWKV-CLIP image towers with a class token are not supported (with_cls_token=True)")
    img_cfg.pop("with_cls_token", None)
    vis = model_kwargs_from_original(img_cfg, "vrwkv6")
    vis.pop("_grad_checkpointing", None)
    # the original Image_RWKV defaults (pre-norm, no layer scale, hidden_rate 4, no drop path)
    vis.setdefault("post_norm", False)
    if vis.get("init_values", None) is None:
        vis.pop("init_values", None)  # the base timm model (vrwkv6_tiny) has no layer scale
    vis.setdefault("mlp_ratio", 4)
    vis.setdefault("drop_path_rate", 0.0)
    image_size = vis.pop("img_size")
    if "Image_HEAD_SIE" in env and int(env["Image_HEAD_SIE"]) != vis["head_size"]:
        raise ValueError(f"env Image_HEAD_SIE={env['Image_HEAD_SIE']} != image head size {vis['head_size']}")

    width = int(txt.get("n_embd", 640))
    for key, ok in (("pos_emb", 0), ("head_qk", 0)):
        if int(txt.get(key, 0)) != ok:
            raise ValueError(f"original text config {key}={txt[key]} is not supported (only {ok})")
    if int(txt.get("tiny_att_dim", 0)) > 0:
        raise ValueError("original text config tiny_att_dim > 0 (tiny attention) is not supported")
    if float(txt.get("dropout", 0.0)) != 0.0:
        raise ValueError(f"original text config dropout={txt['dropout']} is not supported (only 0)")
    dim_att = int(txt.get("dim_att", 0) or width)
    if dim_att != width:
        raise ValueError(f"original text config dim_att={dim_att} != n_embd={width} is not supported")
    head_size = int(txt.get("head_size", 64))
    if "RWKV_HEAD_SIZE" in env and int(env["RWKV_HEAD_SIZE"]) != head_size:
        raise ValueError(f"env RWKV_HEAD_SIZE={env['RWKV_HEAD_SIZE']} != text head_size {head_size}")
    text_cfg = {
        "vocab_size": int(txt.get("vocab_size", 49408)),
        "context_length": int(txt.get("ctx_len", 77)),
        "width": width,
        "layers": int(txt.get("n_layer", 6)),
        "head_size": head_size,
        "hidden_dim": int(txt.get("dim_ffn", 0) or int((width * 3.5) // 32 * 32)),
        "head_size_divisor": float(txt.get("head_size_divisor", 8)),
    }
    if vis["embed_dim"] != width:
        raise ValueError(f"image width {vis['embed_dim']} != text width {width}: RWKV-CLIP has no projections")
    vision_cfg = {"timm_model_name": "vrwkv6_tiny_patch16_224", "image_size": image_size, **vis}
    return {"embed_dim": width, "vision_cfg": vision_cfg, "text_cfg": text_cfg}


def build_from_original(config: Mapping[str, Any], state_dict: Mapping[str, Any]) -> RWKVCLIP:
    """Build RWKV-CLIP from the original constructor arguments and load the original weights (strict).

    Returns the model in eval mode; `encode_image` / `encode_text` (normalize=False) give the original
    `get_model.forward` features.
    """
    from .factory import load_checkpoint

    cfg = model_config_from_original(config)
    model = RWKVCLIP(**cfg)
    load_checkpoint(model, convert_original_state_dict(state_dict))
    return model.eval()
