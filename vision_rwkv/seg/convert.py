"""Released Vision-RWKV segmentation checkpoints (mmseg 0.x, ``UperNet`` + ``VRWKV_Adapter``) -> our Segmentor.

==================================================  ==================================================
original (``state_dict`` of the mmseg checkpoint)    ours (``Segmentor`` with ``neck="adapter"``)
==================================================  ==================================================
``backbone.{patch_embed,pos_embed,layers}.*``        ``backbone.*`` (``models.convert.original_to_ours``)
``backbone.{level_embed,spm,interactions,up}.*``     ``neck.*`` (same names below the prefix)
``backbone.norm{1,2,3,4}.*``                         ``neck.norm{1,2,3,4}.*``
``decode_head.psp_modules.{i}.1.*``                  ``decode_head.ppm.stages.{i}.1.*``
``decode_head.bottleneck.*``                         ``decode_head.ppm_bottleneck.*``
``decode_head.{lateral_convs,fpn_convs}.{i}.*``      ``decode_head.{lateral_convs,fpn_convs}.{i}.*``
``decode_head.{fpn_bottleneck,conv_seg}.*``          ``decode_head.{fpn_bottleneck,conv_seg}.*``
``auxiliary_head.{convs.{i},conv_seg}.*``            ``aux_head.{convs.{i},conv_seg}.*``
==================================================  ==================================================

Inside the heads mmcv's ConvModule children ``conv`` / ``bn`` are our ConvBNReLU's ``0`` / ``1``.
"""
from __future__ import annotations

import os
import re
from typing import Mapping

import torch
from torch import nn

from vision_rwkv.models.convert import (CheckpointFileMismatchError, key_mismatches, listed_keys, original_to_ours,
                                       strip_key_prefixes)

__all__ = ["is_original_segmentor", "convert_original_segmentor", "read_segmentor_state", "load_segmentor_weights",
           "SegCheckpointMismatchError"]


_ADAPTER = re.compile(r"^backbone\.(level_embed|(spm|interactions|up|norm[1-4])\..+)$")
_HEADS = [
    (r"^decode_head\.psp_modules\.(\d+)\.1\.", r"decode_head.ppm.stages.\1.1."),
    (r"^decode_head\.bottleneck\.", "decode_head.ppm_bottleneck."),
    (r"^decode_head\.(lateral_convs\.\d+|fpn_convs\.\d+|fpn_bottleneck|conv_seg)\.", r"decode_head.\1."),
    (r"^auxiliary_head\.(convs\.\d+|conv_seg)\.", r"aux_head.\1."),
]
_CONV_MODULE = [(r"\.conv\.(weight|bias)$", r".0.\1"), (r"\.bn\.([a-z_]+)$", r".1.\1")]


class SegCheckpointMismatchError(CheckpointFileMismatchError):
    """A checkpoint does not fit the segmentor (a RuntimeError too, as a failed ``load_state_dict`` is)."""


def is_original_segmentor(state_dict: Mapping[str, torch.Tensor]) -> bool:
    """True for a released mmseg segmentor state dict (original backbone ``layers`` or mmseg head names)."""
    return any(k.startswith(("backbone.layers.", "backbone.spm.", "decode_head.psp_modules.")) for k in state_dict)


def _head_name(name: str) -> str | None:
    for pattern, repl in _HEADS:
        if re.match(pattern, name):
            name = re.sub(pattern, repl, name)
            for conv_pattern, conv_repl in _CONV_MODULE:
                name = re.sub(conv_pattern, conv_repl, name)
            return name
    return None


def convert_original_segmentor(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map a released segmentor state dict (``module.`` prefixes allowed) to our Segmentor's names (table above).
    Keys with no mapping raise :class:`SegCheckpointMismatchError` (a ``CheckpointMismatchError``), counted and
    the first 20 listed."""
    out: dict[str, torch.Tensor] = {}
    backbone: dict[str, torch.Tensor] = {}
    unknown = []
    for name, value in state_dict.items():
        name = strip_key_prefixes(name, ("module.",))
        if _ADAPTER.match(name):
            out["neck." + name[len("backbone."):]] = value
        elif name.startswith("backbone."):
            backbone[name[len("backbone."):]] = value
        elif (new := _head_name(name)) is not None:
            out[new] = value
        else:
            unknown.append(name)
    if unknown:
        raise SegCheckpointMismatchError(f"the segmentation checkpoint has "
                                         f"{listed_keys(sorted(unknown), 'unexpected keys (no mapping)')}")
    out.update({"backbone." + k: v for k, v in original_to_ours(backbone).items()})
    return out


def read_segmentor_state(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The weights in a segmentation checkpoint: one of ours (a training checkpoint, EMA preferred, or a state dict
    file) or a released mmseg checkpoint, converted to our names."""
    from vision_rwkv.engine import read_model_state

    state = read_model_state(path)
    heads = ("decode_head.", "auxiliary_head.", "aux_head.", "neck.")
    if not any(strip_key_prefixes(k, ("module.",)).startswith(heads) for k in state):
        raise SegCheckpointMismatchError(
            f"checkpoint {path} is not a segmentation checkpoint (no decode_head, auxiliary head or neck weights: a "
            "classification or backbone checkpoint?): give it as model.pretrained, the backbone's initial weights "
            "for tools/train_seg.py")
    return convert_original_segmentor(state) if is_original_segmentor(state) else state


def load_segmentor_weights(model: nn.Module, path: str | os.PathLike,
                           state: Mapping[str, torch.Tensor] | None = None) -> nn.Module:
    """Load :func:`read_segmentor_state` of ``path`` (or ``state``, already read from it) into ``model``, strictly.
    Missing, unexpected or differently shaped keys raise :class:`SegCheckpointMismatchError` naming the file, with the
    count of each kind and its first keys (a checkpoint of another model would list hundreds)."""
    from vision_rwkv.engine import unwrap_model

    state = read_segmentor_state(path) if state is None else state
    target = unwrap_model(model)  # (DDP / torch.compile wrappers)
    problems = key_mismatches(target.state_dict(), state)
    if problems:
        raise SegCheckpointMismatchError(f"checkpoint {path} does not match the config's model: "
                                         f"{'; '.join(problems)}")
    target.load_state_dict(state)
    return model
