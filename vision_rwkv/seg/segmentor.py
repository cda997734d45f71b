"""Encoder-decoder segmentor: timm backbone -> neck -> UperNet decode head + FCN auxiliary head.

Two necks. ``multilevel`` (default): any timm model with `forward_intermediates` works as the backbone (VRWKV /
VRWKV6, ViT, ConvNeXt, ...); four of its block (or stage) outputs are taken, evenly spaced by default, and the
neck resamples each to the target strides (4/8/16/32 of the input) using the backbone's `feature_info`
reductions. ``adapter``: the ViT-Adapter of the released Vision-RWKV ADE20K models (:mod:`.adapter`), for VRWKV /
VRWKV6 backbones with 16-pixel patches.
"""
from __future__ import annotations

import inspect
import logging
import sys
from functools import partial
from pathlib import Path
from typing import Any, Mapping, Sequence

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F

from vision_rwkv.engine.classification import norm_and_bias_names
from vision_rwkv.models.convert import (CheckpointFileMismatchError, CheckpointMismatchError, key_mismatches,
                                       with_file_named)

from .adapter import ViTAdapter
from .config import NECKS
from .heads import FCNHead, UperNetHead, resize
from .layers import evenly_spaced_indices
from .neck import MultiLevelNeck

_logger = logging.getLogger(__name__)

__all__ = ["Segmentor", "create_segmentor", "evenly_spaced_indices", "load_backbone_weights", "seg_param_groups"]


def _feature_specs(backbone: nn.Module, indices: Sequence[int], probe_size: int) -> tuple[list[int], list[int]]:
    """(channels, reduction) of the requested intermediates, from `feature_info` or, failing that, a probe run."""
    info = getattr(backbone, "feature_info", None)
    if isinstance(info, (list, tuple)) and info and all(isinstance(i, dict) for i in info):
        return [info[i]["num_chs"] for i in indices], [info[i]["reduction"] for i in indices]
    if info is not None and hasattr(info, "channels"):  # timm FeatureInfo object
        return [info.channels(i) for i in indices], [info.reduction(i) for i in indices]
    was_training = backbone.training
    backbone.eval()
    with torch.no_grad():
        feats = backbone.forward_intermediates(torch.zeros(1, 3, probe_size, probe_size), indices=sorted(set(indices)),
                                               output_fmt="NCHW", intermediates_only=True)
    backbone.train(was_training)
    by_idx = dict(zip(sorted(set(indices)), feats))
    return ([by_idx[i].shape[1] for i in indices],
            [probe_size // by_idx[i].shape[-1] for i in indices])


def _num_feature_levels(backbone: nn.Module) -> int:
    info = getattr(backbone, "feature_info", None)
    if info is not None:
        return len(info)
    blocks = getattr(backbone, "blocks", None) or getattr(backbone, "stages", None)
    if blocks is None:
        raise ValueError("cannot tell how many blocks the backbone has; give model.out_indices explicitly")
    return len(blocks)


def _checkpoint_filter(backbone: nn.Module) -> Any:
    """The model family's timm checkpoint filter: VRWKV / VRWKV6 have theirs in `vision_rwkv.models.convert`
    (original layouts, position-embedding resizing; layer-scale gammas a checkpoint lacks keep their init);
    timm families define `checkpoint_filter_fn` in their module."""
    from vision_rwkv.models import VRWKV, VRWKV6, checkpoint_filter_fn
    if isinstance(backbone, (VRWKV, VRWKV6)):
        return partial(checkpoint_filter_fn, init_missing_layer_scale=True)
    return getattr(sys.modules.get(type(backbone).__module__), "checkpoint_filter_fn", None)


def load_backbone_weights(backbone: nn.Module, path: str | Path, strict: bool = True) -> None:
    """Load a local checkpoint (safetensors or torch file, loaded with weights_only=True) into the backbone.

    The weights are :func:`vision_rwkv.engine.read_model_state`'s (wrappers and 'module.' prefixes removed, EMA
    weights preferred), a 'backbone.' prefix on every key is removed, the model family's timm
    `checkpoint_filter_fn` is applied when it has one (e.g. position-embedding resizing), classifier weights are
    dropped. With `strict`, remaining missing or unexpected keys raise an error that lists them, except missing
    VRWKV layer-scale gammas: they keep their `init_values`, as in the original segmentation recipe, whose VRWKV-T
    adds layer scale to an ImageNet backbone trained without it (`_checkpoint_filter`).
    """
    from vision_rwkv.engine import read_model_state

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pretrained backbone file not found: {path}")
    state: Any = read_model_state(path)
    if all(k.startswith("backbone.") for k in state):
        state = {k[len("backbone."):]: v for k, v in state.items()}
    filter_fn = _checkpoint_filter(backbone)
    if filter_fn is not None:
        try:
            state = filter_fn(state, backbone)
        except CheckpointMismatchError as err:  # (the file named, as the classification loader names it)
            if isinstance(err, CheckpointFileMismatchError):
                raise
            raise CheckpointFileMismatchError(with_file_named(err, f"pretrained backbone {path}")) from err
    own = backbone.state_dict()
    classifier = (getattr(backbone, "pretrained_cfg", None) or {}).get("classifier") or "head"
    classifiers = [classifier] if isinstance(classifier, str) else list(classifier)
    state = {k: v for k, v in state.items()
             if not (any(k.startswith(c + ".") for c in classifiers) and k not in own)}
    problems = key_mismatches(own, state, strict)
    if problems:
        raise CheckpointFileMismatchError(f"pretrained backbone {path} does not match the model: "
                                          f"{'; '.join(problems)}")
    missing, unexpected = backbone.load_state_dict(state, strict=False)
    _logger.info("loaded backbone weights from %s (missing %d, unexpected %d)", path, len(missing), len(unexpected))


class Segmentor(nn.Module):
    """Backbone + neck + UperNet decode head (+ FCN auxiliary head), trained with pixel cross-entropy.

    `forward(img)` returns class logits at the input resolution; `forward(img, target)` returns a dict with
    `loss` (decode + aux_weight * aux), `loss_decode` and `loss_aux`, so DDP wrapping sees one forward call.
    `neck="adapter"` puts the ViT-Adapter (`adapter`: its keyword arguments) around a VRWKV / VRWKV6 backbone
    instead of the multi-level neck; then out_indices, norm_intermediates and neck_channels do not apply.
    """

    def __init__(
            self,
            backbone: nn.Module,
            num_classes: int,
            out_indices: Sequence[int] | None = None,
            norm_intermediates: bool = False,
            strides: Sequence[int] = (4, 8, 16, 32),
            neck_channels: int | None = None,
            decode_channels: int = 512,
            pool_scales: Sequence[int] = (1, 2, 3, 6),
            dropout: float = 0.1,
            aux_channels: int = 256,
            aux_weight: float = 0.4,
            aux_level: int = 2,
            ignore_index: int = 255,
            class_weight: Sequence[float] | None = None,
            avg_non_ignore: bool = False,
            align_corners: bool = False,
            probe_size: int = 224,
            prune_backbone: bool = True,
            neck: str = "multilevel",
            adapter: Mapping[str, Any] | None = None,
    ):
        super().__init__()
        if neck not in NECKS:
            raise ValueError(f"neck must be one of {', '.join(NECKS)}, got {neck!r}")
        if not hasattr(backbone, "forward_intermediates"):
            raise TypeError(f"backbone {type(backbone).__name__} has no forward_intermediates()")
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        if class_weight is not None and len(class_weight) != num_classes:
            raise ValueError(f"class_weight has {len(class_weight)} entries for {num_classes} classes")
        self.register_buffer("class_weight", None if class_weight is None else
                             torch.tensor([float(w) for w in class_weight]), persistent=False)
        self.avg_non_ignore = avg_non_ignore
        self.align_corners = align_corners
        self.aux_weight = aux_weight
        self.aux_level = aux_level
        self.norm_intermediates = norm_intermediates
        self.strides = list(strides)
        if neck == "adapter":
            neck_chs = self._build_adapter(backbone, dict(adapter or {}), out_indices, neck_channels)
        else:
            neck_chs = self._build_multilevel(backbone, out_indices, neck_channels, probe_size, prune_backbone)
        self.decode_head = UperNetHead([neck_chs] * len(strides), num_classes, channels=decode_channels,
                                       pool_scales=pool_scales, dropout=dropout, align_corners=align_corners)
        self.aux_head = None
        if aux_weight > 0:
            if not 0 <= aux_level < len(strides):
                raise ValueError(f"aux_level {aux_level} is not one of the {len(strides)} levels")
            self.aux_head = FCNHead(neck_chs, num_classes, channels=aux_channels, dropout=dropout)

    def _build_multilevel(self, backbone: nn.Module, out_indices: Sequence[int] | None, neck_channels: int | None,
                          probe_size: int, prune_backbone: bool) -> int:
        strides = self.strides
        n_levels = _num_feature_levels(backbone)
        if out_indices is None:
            indices = evenly_spaced_indices(n_levels, len(strides))
        else:
            indices = [int(i) + n_levels if i < 0 else int(i) for i in out_indices]
            if any(not 0 <= i < n_levels for i in indices):
                raise ValueError(f"out_indices {list(out_indices)} out of range for a backbone with {n_levels} blocks")
        if len(indices) != len(strides):
            raise ValueError(f"{len(indices)} out_indices but {len(strides)} strides")
        self.out_indices = indices
        self._take = sorted(set(indices))
        in_chs, reductions = _feature_specs(backbone, indices, probe_size)
        self.feature_channels = in_chs
        self.feature_reductions = reductions
        if prune_backbone and hasattr(backbone, "prune_intermediate_layers"):
            # drop the classifier (and the final norm when unused) so DDP sees no parameters without gradients
            backbone.prune_intermediate_layers(self._take, prune_norm=not self.norm_intermediates, prune_head=True)
        self.backbone = backbone
        neck_chs = neck_channels or max(in_chs)
        self.neck = MultiLevelNeck(in_chs, neck_chs, scales=[r / s for r, s in zip(reductions, strides)])
        return neck_chs

    def _build_adapter(self, backbone: nn.Module, adapter: dict, out_indices: Sequence[int] | None,
                       neck_channels: int | None) -> int:
        from vision_rwkv.models._base import VisionRWKVBase

        if not isinstance(backbone, VisionRWKVBase):
            raise TypeError(f"the ViT-Adapter neck runs a VRWKV / VRWKV6 backbone block by block; "
                            f"got {type(backbone).__name__} (use neck=multilevel)")
        if tuple(backbone.patch_size) != (16, 16) or self.strides != [4, 8, 16, 32]:
            raise ValueError(f"the ViT-Adapter neck needs 16-pixel patches and strides [4, 8, 16, 32]; got patch "
                             f"{tuple(backbone.patch_size)} and strides {self.strides}")
        if out_indices is not None:
            raise ValueError("out_indices does not apply to the ViT-Adapter neck: its groups are "
                             "model.adapter.interaction_indexes")
        dim = backbone.embed_dim
        if neck_channels not in (None, dim):
            raise ValueError(f"the ViT-Adapter neck outputs the backbone width {dim}; neck_channels={neck_channels}")
        unknown = sorted(set(adapter) - (set(inspect.signature(ViTAdapter).parameters) - {"dim", "depth"}))
        if unknown:
            raise ValueError(f"unknown ViT-Adapter setting(s) {unknown}")
        if self.norm_intermediates:
            raise ValueError("norm_intermediates does not apply to the ViT-Adapter neck (its outputs have BatchNorms)")
        self.neck = ViTAdapter(dim, len(backbone.blocks), **adapter)
        self.out_indices = self._take = [last for _, last in self.neck.interaction_indexes]
        self.feature_channels, self.feature_reductions = [dim] * 4, [4, 8, 16, 32]
        # every block runs; the final norm and the classifier do not
        backbone.prune_intermediate_layers(len(backbone.blocks), prune_norm=True, prune_head=True)
        self.backbone = backbone
        return dim

    def dynamic_size_rule(self) -> tuple[int, int]:
        """(smallest image side, side multiple) of a dynamic-size export: every level of the feature pyramid at least
        2 x 2, where a level of size 1 would be a special case of the program (the multi-level neck pools the token
        grid by up to 8 for stride 32); the ViT-Adapter neck takes multiples of 32 only, from 64."""
        if isinstance(self.neck, ViTAdapter):
            return 64, 32
        reduction = int(self.feature_reductions[0])
        return reduction * (self.neck.min_tokens() - 1) + 1, 1

    def extract_features(self, img: torch.Tensor) -> list[torch.Tensor]:
        """Backbone intermediates (in `out_indices` order) through the neck: a pyramid at `strides`."""
        if img.ndim != 4:
            raise ValueError(f"expected an image batch (B, C, H, W), got shape {tuple(img.shape)}")
        if isinstance(self.neck, ViTAdapter):
            return self.neck(self.backbone, img)
        feats = self.backbone.forward_intermediates(img, indices=self._take, norm=self.norm_intermediates,
                                                    output_fmt="NCHW", intermediates_only=True)
        by_idx = dict(zip(self._take, feats))
        return self.neck([by_idx[i] for i in self.out_indices])

    def forward_heads(self, img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Decode logits (finest level) and auxiliary logits (aux level, None without aux head), not resized."""
        pyramid = self.extract_features(img)
        aux = self.aux_head(pyramid[self.aux_level]) if self.aux_head is not None and self.training else None
        return self.decode_head(pyramid), aux

    def seg_loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Pixel cross-entropy, logits upsampled to the label size first. As mmseg's CrossEntropyLoss: the sum of
        the per-pixel losses (each times its class's `class_weight`) over the non-ignored pixels, divided by the
        number of ALL pixels (its default) or, with `avg_non_ignore`, of the non-ignored pixels (a pixel count in
        both cases, not a sum of class weights); 0 when every pixel is ignored."""
        logits = resize(logits, target.shape[-2:], self.align_corners)
        target = target.long()
        loss = F.cross_entropy(logits.float(), target, weight=self.class_weight, ignore_index=self.ignore_index,
                               reduction="sum")
        if not self.avg_non_ignore:  # (the sum is 0 when every pixel is ignored)
            return loss / target.numel()
        # no data-dependent branch or indexing: one graph under torch.compile
        return loss / (target != self.ignore_index).sum().clamp(min=1)

    def forward(self, img: torch.Tensor, target: torch.Tensor | None = None):
        logits, aux = self.forward_heads(img)
        if target is None:
            return resize(logits, img.shape[-2:], self.align_corners)
        if target.ndim != 3 or target.shape[0] != img.shape[0]:
            raise ValueError(f"target must be (B, H, W) label maps, got {tuple(target.shape)}")
        losses = {"loss_decode": self.seg_loss(logits, target)}
        total = losses["loss_decode"]
        if aux is not None:
            losses["loss_aux"] = self.seg_loss(aux, target)
            total = total + self.aux_weight * losses["loss_aux"]
        losses["loss"] = total
        return losses


def create_segmentor(cfg: Mapping[str, Any], num_classes: int | None = None) -> Segmentor:
    """Build a Segmentor from a `model:` config mapping.

    Keys: backbone (timm name), backbone_kwargs (passed to timm.create_model), pretrained (local file or null),
    grad_checkpointing (recompute the backbone's blocks in the backward; mmseg's ``with_cp``), num_classes,
    out_indices, norm_intermediates, strides, neck_channels, decode_channels, pool_scales, dropout, aux_channels,
    aux_weight, aux_level, ignore_index, class_weight, avg_non_ignore, align_corners, probe_size, neck
    ("multilevel" or "adapter"), adapter (the ViT-Adapter's keyword arguments).
    """
    cfg = dict(cfg)
    import vision_rwkv  # noqa: F401  (registers the VRWKV models with timm)
    name = cfg.pop("backbone")
    kwargs = dict(cfg.pop("backbone_kwargs", None) or {})
    kwargs.setdefault("num_classes", 0)
    pretrained = cfg.pop("pretrained", None)
    n_cls = cfg.pop("num_classes", None) if num_classes is None else num_classes
    cfg.pop("num_classes", None)
    if n_cls is None:
        raise ValueError("model.num_classes is not set (and the dataset did not give one)")
    backbone = timm.create_model(name, pretrained=False, **kwargs)
    if pretrained:
        load_backbone_weights(backbone, pretrained)
    if cfg.pop("grad_checkpointing", False):
        backbone.set_grad_checkpointing(True)  # (every timm model has it)
    for key in ("out_indices", "strides", "pool_scales", "class_weight"):
        if cfg.get(key) is not None:
            cfg[key] = list(cfg[key])
    return Segmentor(backbone, int(n_cls), **cfg)


DECAY_EXEMPT = ("timm", "norm_bias", "none")


def seg_param_groups(model: Segmentor, weight_decay: float, layer_decay: float | None = None,
                     decay_exempt: str = "timm") -> list[dict]:
    """Optimizer groups: backbone with layer-wise lr decay from its `group_matcher`, heads at full lr.

    Layer ids come from timm's `group_parameters(backbone, backbone.group_matcher())` (stem 0, blocks 1..L; the
    final norm goes with the heads); the neck and heads sit one layer above the backbone's last, so with decay d a
    parameter in layer i gets lr scale d ** (top - i) (BEiT / mmseg convention: the last block gets d, the heads 1).
    Every group carries `lr_scale`. No weight decay (`decay_exempt`): ``timm`` - on 1-D parameters (norms, biases,
    ...), biases and the backbone's `no_weight_decay()` names; ``norm_bias`` - on normalisation layers' parameters
    and biases only (mmcv's ``norm_decay_mult=0, bias_decay_mult=0``); ``none`` - every parameter decays (mmcv
    without a ``paramwise_cfg``).
    """
    from timm.models import group_parameters

    if decay_exempt not in DECAY_EXEMPT:
        raise ValueError(f"decay_exempt must be one of {', '.join(DECAY_EXEMPT)}, got {decay_exempt!r}")
    backbone = model.backbone
    skip = set(backbone.no_weight_decay()) if hasattr(backbone, "no_weight_decay") else set()
    norm_params = norm_and_bias_names(model)
    if layer_decay is not None and layer_decay != 1.0:
        if not hasattr(backbone, "group_matcher"):
            raise ValueError(f"layer-wise lr decay needs a backbone with group_matcher(); "
                             f"{type(backbone).__name__} has none")
        layer_of = group_parameters(backbone, backbone.group_matcher(coarse=False), reverse=True)
        top = max(layer_of.values()) + 1
        # the final norm (timm's group_matcher merges it into the last block) at full lr with the heads, as the
        # original's layer-decay constructor has it (it only matters with model.norm_intermediates)
        layer_of.update({n: top for n in layer_of if n.startswith("norm.")})
    else:
        layer_of, top, layer_decay = {}, 0, 1.0
    groups: dict[tuple[int, bool], dict] = {}
    named = [("backbone." + n, p, layer_of.get(n, top)) for n, p in backbone.named_parameters()]
    named += [(n, p, top) for n, p in model.named_parameters() if not n.startswith("backbone.")]
    for name, param, layer in named:
        if not param.requires_grad:
            continue
        bare = name[len("backbone."):] if name.startswith("backbone.") else None
        if decay_exempt == "timm":
            no_decay = param.ndim <= 1 or name.endswith(".bias") or (bare is not None and bare in skip)
        else:
            no_decay = decay_exempt == "norm_bias" and name in norm_params
        key = (layer, no_decay)
        if key not in groups:
            groups[key] = {"params": [], "weight_decay": 0.0 if no_decay else weight_decay,
                           "lr_scale": float(layer_decay ** (top - layer)), "layer_id": layer}
        groups[key]["params"].append(param)
    return [groups[k] for k in sorted(groups)]
