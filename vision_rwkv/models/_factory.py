"""timm registration plumbing shared by the VRWKV (v4) and VRWKV6 model files: the pretrained-cfg fields common to
every Vision-RWKV hub file and the ``build_model_with_cfg`` call (original-checkpoint filter, feature getter)."""
from __future__ import annotations

import os
from typing import Any, Optional, Type

import torch.nn as nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import build_model_with_cfg
from timm.models._builder import resolve_pretrained_cfg

from .convert import checkpoint_filter_fn, checkpoint_format_problem

__all__ = ['hub_cfg', 'build_backbone']


def hub_cfg(file: str = '', **kwargs: Any) -> dict:
    """Pretrained-cfg fields of an ``OpenGVLab/Vision-RWKV`` hub file (ImageNet 224, bicubic, crop 0.875)."""
    return {
        'hf_hub_id': 'OpenGVLab/Vision-RWKV', 'hf_hub_filename': file,
        'num_classes': 1000, 'input_size': (3, 224, 224), 'pool_size': None,
        'crop_pct': 0.875, 'interpolation': 'bicubic',
        'mean': IMAGENET_DEFAULT_MEAN, 'std': IMAGENET_DEFAULT_STD,
        'first_conv': 'patch_embed.proj', 'classifier': 'head',
        'paper_ids': 'arXiv:2403.02308',
        'paper_name': 'Vision-RWKV: Efficient and Scalable Visual Perception with RWKV-Like Architectures',
        'origin_url': 'https://github.com/OpenGVLab/Vision-RWKV', 'license': 'apache-2.0',
        **kwargs,
    }


def build_backbone(model_cls: Type[nn.Module], variant: str, pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """``timm`` build of a registered variant: original or converted checkpoints go through
    :func:`~vision_rwkv.models.convert.checkpoint_filter_fn`; ``features_only`` uses the block getter
    (``out_indices`` default 3)."""
    out_indices = kwargs.pop('out_indices', 3)
    file = _pretrained_file(variant, kwargs) if pretrained else None
    if file is not None and not os.path.isfile(file):
        raise FileNotFoundError(f'{variant}: pretrained checkpoint file not found: {file!r} (the file of '
                                f'pretrained_cfg_overlay=dict(file=...) or of the pretrained cfg is not a file)')
    try:
        return build_model_with_cfg(
            model_cls, variant, pretrained,
            pretrained_filter_fn=checkpoint_filter_fn,
            feature_cfg=dict(out_indices=out_indices, feature_cls='getter'),
            **kwargs,
        )
    except Exception as e:  # timm's loader: torch.load's advice for a file that is not a checkpoint is misleading
        problem = checkpoint_format_problem(file) if file else None
        if problem:
            raise ValueError(f'{variant}: cannot read pretrained checkpoint {file}: {problem}') from e
        raise


def _pretrained_file(variant: str, kwargs: dict) -> Optional[str]:
    """The local checkpoint file a ``pretrained=True`` build will read (``pretrained_cfg(_overlay)['file']``)."""
    cfg = resolve_pretrained_cfg(variant, kwargs.get('pretrained_cfg'), kwargs.get('pretrained_cfg_overlay'))
    file = getattr(cfg, 'file', None)
    return os.fspath(file) if file else None
