"""RWKV-CLIP model with open_clip's CustomTextCLIP interface.

`RWKVCLIP.visual` is a timm-created VRWKV6 backbone (through `timm.create_model`, so any timm model that
returns pooled features with num_classes=0 works), `.text` the bidirectional RWKV-6 text tower. Both towers output
the joint embedding directly (width 640 for B/32 and B/16; there are no projection layers).
"""
from __future__ import annotations

import math
from typing import Any, Optional, Union

import numpy as np
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F

import vision_rwkv  # noqa: F401  (registers the VRWKV models with timm)

from .text_model import TextRWKV

__all__ = ["ImageTower", "RWKVCLIP", "LOGIT_SCALE_MAX"]

LOGIT_SCALE_MAX = math.log(100.0)


class ImageTower(nn.Module):
    """A timm backbone (`trunk`) returning globally pooled features, with open_clip's vision-tower methods.

    Args:
        timm_model_name: registered timm name: `vrwkv6_clip_patch32_224` / `vrwkv6_clip_patch16_224` for the
            RWKV-CLIP B towers; the tiny demo and converted fixtures use `vrwkv6_tiny_patch16_224` (pre-norm, no
            layer scale) with overrides (timm.create_model drops None-valued overrides, so `init_values=None` could
            not switch off the layer scale of VRWKV6-S/B).
        image_size: input resolution, square int or (h, w) (sets the pos-embed grid).
        timm_kwargs: constructor overrides passed to `timm.create_model` (embed_dim, depth, head_size, ...).
    """

    def __init__(self, timm_model_name: str, image_size: Union[int, tuple[int, int]] = 224, **timm_kwargs: Any):
        super().__init__()
        self.timm_model_name = timm_model_name
        self.image_size = (image_size, image_size) if isinstance(image_size, int) else tuple(int(v) for v in image_size)
        dropped = sorted(k for k, v in timm_kwargs.items() if v is None)
        if dropped:
            raise ValueError(f"image tower overrides {dropped} are None: timm.create_model ignores None kwargs, "
                             f"so they would silently keep {timm_model_name}'s defaults; leave them out instead")
        timm_kwargs.setdefault("global_pool", "avg")
        self.trunk = timm.create_model(
            timm_model_name, pretrained=False, num_classes=0, img_size=image_size, **timm_kwargs)
        self.output_dim = self.trunk.num_features

    def lock(self, unlocked_groups: int = 0, freeze_bn_stats: bool = False) -> None:
        """Freeze the trunk; with unlocked_groups > 0 the last groups of timm's `group_matcher` stay trainable."""
        if not unlocked_groups:
            for p in self.trunk.parameters():
                p.requires_grad = False
            return
        from timm.models import group_parameters
        groups = group_parameters(self.trunk, self.trunk.group_matcher())
        last_locked = max(groups) - unlocked_groups
        for gid, names in groups.items():
            if gid <= last_locked:
                for n in names:
                    self.trunk.get_parameter(n).requires_grad = False

    def set_input_size(self, image_size: Union[int, tuple[int, int]]) -> None:
        """Another input resolution (square int or (h, w)): the trunk's stored position embedding is resampled to
        its grid (timm's `set_input_size`); the image transforms follow `image_size`."""
        size = (image_size, image_size) if isinstance(image_size, int) else tuple(int(v) for v in image_size)
        self.trunk.set_input_size(img_size=size)
        self.image_size = size
        if isinstance(getattr(self, "preprocess_cfg", None), dict):  # (set by the factory, as open_clip's)
            self.preprocess_cfg = dict(self.preprocess_cfg, size=size)

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: Optional[Union[int, list[int]]] = None,
            stop_early: bool = False,
            normalize_intermediates: bool = False,
            intermediates_only: bool = False,
            output_fmt: str = "NCHW",
            output_extra_tokens: bool = False,
    ) -> dict[str, Union[torch.Tensor, list[torch.Tensor]]]:
        """open_clip's `TimmModel.forward_intermediates`: the trunk's block outputs (`image_intermediates`, timm's
        `indices` / `output_fmt` / `stop_early`; `normalize_intermediates` applies the final norm) and, unless
        `intermediates_only`, the pooled `image_features`. The trunk has no prefix tokens, so
        `output_extra_tokens` adds an empty `image_intermediates_prefix` per intermediate."""
        extra = {"return_prefix_tokens": True} if output_extra_tokens else {}
        out = self.trunk.forward_intermediates(x, indices=indices, norm=normalize_intermediates, stop_early=stop_early,
                                               output_fmt=output_fmt, intermediates_only=intermediates_only, **extra)
        intermediates = out if intermediates_only else out[1]
        result: dict[str, Union[torch.Tensor, list[torch.Tensor]]] = {}
        if output_extra_tokens:
            result["image_intermediates_prefix"] = [xi[1] for xi in intermediates]
            intermediates = [xi[0] for xi in intermediates]
        result["image_intermediates"] = intermediates
        if not intermediates_only:
            result["image_features"] = self.trunk.forward_head(out[0])
        return result

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.trunk.set_grad_checkpointing(enable)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        nwd = self.trunk.no_weight_decay() if hasattr(self.trunk, "no_weight_decay") else set()
        return {"trunk." + n for n in nwd}

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        if image.dim() != 4 or image.shape[1] != 3:
            raise ValueError(f"image must be (batch, 3, H, W), got shape {tuple(image.shape)}")
        return self.trunk(image)


class RWKVCLIP(nn.Module):
    """CLIP with RWKV-6 image and text towers; same public interface as open_clip's CustomTextCLIP.

    Args:
        embed_dim: joint embedding width; must equal both towers' output width (no projections).
        vision_cfg: dict for `ImageTower` (timm_model_name, image_size, plus timm kwargs).
        text_cfg: dict for `TextRWKV`.
        init_logit_scale: initial log of the logit scale (ln(1/0.07)).
        init_logit_bias: initial logit bias (open_clip's SigLIP models: -10); None = no bias (the original).
        output_dict: forward returns a dict instead of a tuple.
    """

    def __init__(
            self,
            embed_dim: int,
            vision_cfg: dict,
            text_cfg: dict,
            init_logit_scale: float = float(np.log(1 / 0.07)),
            init_logit_bias: Optional[float] = None,
            output_dict: bool = False,
    ):
        super().__init__()
        self.output_dict = output_dict
        self.embed_dim = embed_dim
        self.visual = ImageTower(**vision_cfg)
        self.text = TextRWKV(**text_cfg)
        if self.visual.output_dim != embed_dim or self.text.output_dim != embed_dim:
            raise ValueError(
                f"embed_dim {embed_dim} must equal the image tower width ({self.visual.output_dim}) and the text "
                f"tower width ({self.text.output_dim}): RWKV-CLIP has no projection layers")
        self.context_length = self.text.context_length
        self.vocab_size = self.text.vocab_size
        self.logit_scale = nn.Parameter(torch.ones([]) * init_logit_scale)
        self.logit_bias = None if init_logit_bias is None else nn.Parameter(torch.ones([]) * init_logit_bias)

    def lock_image_tower(self, unlocked_groups: int = 0, freeze_bn_stats: bool = False) -> None:
        self.visual.lock(unlocked_groups=unlocked_groups, freeze_bn_stats=freeze_bn_stats)

    def lock_text_tower(self, unlocked_layers: int = 0, freeze_layer_norm: bool = True) -> None:
        self.text.lock(unlocked_layers, freeze_layer_norm)

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.visual.set_grad_checkpointing(enable)
        self.text.set_grad_checkpointing(enable)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        nwd = {"logit_scale"} | ({"logit_bias"} if self.logit_bias is not None else set())
        nwd |= {"visual." + n for n in self.visual.no_weight_decay()}
        nwd |= {"text." + n for n in self.text.no_weight_decay()}
        return nwd

    @torch.no_grad()
    def clamp_logit_scale(self, max_value: float = LOGIT_SCALE_MAX) -> None:
        """Keep logit_scale in [0, ln 100] (the recipe clamps after every optimiser step)."""
        self.logit_scale.clamp_(0, max_value)

    def encode_image(self, image: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        features = self.visual(image)
        return F.normalize(features, dim=-1) if normalize else features

    def encode_text(self, text: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        features = self.text(text)
        return F.normalize(features, dim=-1) if normalize else features

    def get_logits(self, image: torch.Tensor, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        image_features = self.encode_image(image, normalize=True)
        text_features = self.encode_text(text, normalize=True)
        image_logits = self.logit_scale.exp() * image_features @ text_features.T
        if self.logit_bias is not None:
            image_logits = image_logits + self.logit_bias
        return image_logits, image_logits.T

    def forward_intermediates(
            self,
            image: Optional[torch.Tensor] = None,
            text: Optional[torch.Tensor] = None,
            image_indices: Optional[Union[int, list[int]]] = None,
            text_indices: Optional[Union[int, list[int]]] = None,
            stop_early: bool = False,
            normalize: bool = True,
            normalize_intermediates: bool = False,
            intermediates_only: bool = False,
            image_output_fmt: str = "NCHW",
            image_output_extra_tokens: bool = False,
            text_output_fmt: str = "NLC",
            text_output_extra_tokens: bool = False,
            output_logits: bool = False,
            output_logit_scale_bias: bool = False,
    ) -> dict[str, Union[torch.Tensor, list[torch.Tensor]]]:
        """open_clip's `CustomTextCLIP.forward_intermediates`: each given tower's intermediates
        (`image_intermediates`, `text_intermediates`) and, unless `intermediates_only`, its features (L2-normalised
        with `normalize`); `output_logits` adds `image_logits` / `text_logits`, `output_logit_scale_bias` the exp'd
        `logit_scale` (and `logit_bias` when the model has one)."""
        if intermediates_only:
            normalize, output_logits = False, False
        if output_logits and (image is None or text is None):
            raise ValueError("forward_intermediates(output_logits=True) needs both image and text")
        output: dict[str, Union[torch.Tensor, list[torch.Tensor]]] = {}
        if image is not None:
            output.update(self.visual.forward_intermediates(
                image, indices=image_indices, stop_early=stop_early, normalize_intermediates=normalize_intermediates,
                intermediates_only=intermediates_only, output_fmt=image_output_fmt,
                output_extra_tokens=image_output_extra_tokens))
        if text is not None:
            output.update(self.text.forward_intermediates(
                text, indices=text_indices, stop_early=stop_early, normalize_intermediates=normalize_intermediates,
                intermediates_only=intermediates_only, output_fmt=text_output_fmt,
                output_extra_tokens=text_output_extra_tokens))
        if normalize:
            for key in ("image_features", "text_features"):
                if key in output:
                    output[key] = F.normalize(output[key], dim=-1)
        scale = self.logit_scale.exp() if output_logits or output_logit_scale_bias else None
        if output_logits:
            image_logits = scale * output["image_features"] @ output["text_features"].T
            if self.logit_bias is not None:
                image_logits = image_logits + self.logit_bias
            output["image_logits"], output["text_logits"] = image_logits, image_logits.T
        if output_logit_scale_bias:
            output["logit_scale"] = scale
            if self.logit_bias is not None:
                output["logit_bias"] = self.logit_bias
        return output

    def forward(self, image: Optional[torch.Tensor] = None, text: Optional[torch.Tensor] = None):
        image_features = self.encode_image(image, normalize=True) if image is not None else None
        text_features = self.encode_text(text, normalize=True) if text is not None else None
        if self.output_dict:
            out = {
                "image_features": image_features,
                "text_features": text_features,
                "logit_scale": self.logit_scale.exp(),
            }
            if self.logit_bias is not None:
                out["logit_bias"] = self.logit_bias
            return out
        if self.logit_bias is not None:
            return image_features, text_features, self.logit_scale.exp(), self.logit_bias
        return image_features, text_features, self.logit_scale.exp()
