"""timm registration plumbing shared by the VRWKV (v4) and VRWKV6 model files: the pretrained-cfg fields common to
every Vision-RWKV hub file and the ``build_model_with_cfg`` call (original-checkpoint filter, feature getter)."""
from __future__ import annotations

import functools
import os
from typing import Any, Callable, Optional, Type

import torch.nn as nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import build_model_with_cfg, load_pretrained
from timm.models._builder import resolve_pretrained_cfg

from .convert import CheckpointMismatchError, checkpoint_filter_fn, read_weights_file, with_file_named

__all__ = ['hub_cfg', 'build_backbone', 'weights_in_folder']


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


def build_backbone(model_cls: Type[nn.Module], variant: str, pretrained: bool = False,
                   pretrained_kwargs: Optional[Callable[..., dict]] = None, **kwargs: Any) -> nn.Module:
    """``timm`` build of a registered variant: original or converted checkpoints go through
    :func:`~vision_rwkv.models.convert.checkpoint_filter_fn`; ``features_only`` uses the block getter
    (``out_indices`` default 3). With ``pretrained``, ``pretrained_kwargs(cfg, record, kwargs, file)`` (the resolved
    pretrained cfg, the Bi-WKV record of a local file or None, the caller's kwargs, the local file or None) gives
    model kwargs to add.

    A local file (``pretrained_cfg_overlay=dict(file=PATH)``) is read by
    :func:`~vision_rwkv.models.convert.read_weights_file`, as the tools read it: a training checkpoint gives its EMA
    weights when it has them (timm's ``use_ema=True`` rule), an unreadable file an error naming it. timm then adapts
    and loads those weights (classifier, input channels) as it would the file's."""
    out_indices = kwargs.pop('out_indices', 3)
    strict = kwargs.get('pretrained_strict', True)  # (timm's; False: the filter keeps what fits, with a warning)
    build = dict(pretrained_filter_fn=functools.partial(checkpoint_filter_fn, strict=strict),
                 feature_cfg=dict(out_indices=out_indices, feature_cls='getter'))
    cfg = resolve_pretrained_cfg(variant, kwargs.get('pretrained_cfg'), kwargs.get('pretrained_cfg_overlay')) \
        if pretrained else None
    file = os.fspath(cfg.file) if cfg is not None and cfg.file else None  # a local file: read here
    if file is not None and cfg.source == 'local-dir':  # timm's local-dir:FOLDER (config.json + weights)
        file = weights_in_folder(file)
    if file is None:  # random init, or timm's hub / url source
        if pretrained and pretrained_kwargs is not None:
            kwargs.update(pretrained_kwargs(cfg, None, kwargs, None))
        return build_model_with_cfg(model_cls, variant, pretrained, **build, **kwargs)
    if not os.path.isfile(file):
        raise FileNotFoundError(f'{variant}: pretrained checkpoint file not found: {file!r} (the file of '
                                f'pretrained_cfg_overlay=dict(file=...) or of the pretrained cfg is not a file)')
    try:
        weights, record = read_weights_file(file)
    except ValueError as e:  # unreadable: named (torch.load's own advice, weights_only=False, would mislead)
        raise ValueError(f'{variant}: {e}') from e
    if pretrained_kwargs is not None:
        kwargs.update(pretrained_kwargs(cfg, record, kwargs, file))
    source = dict(cfg.to_dict(), file=None, source='', state_dict=weights)  # timm's source: a state dict in hand
    features = bool(kwargs.get('features_only'))
    strict = kwargs.pop('pretrained_strict', True)

    def create_and_load(**model_kwargs: Any) -> nn.Module:
        # what build_model_with_cfg(pretrained=True) does, with the weights already read
        model = model_cls(**model_kwargs)
        num_classes = 0 if features else getattr(model, 'num_classes', 1000)

        def filter_fn(state: dict, target: nn.Module) -> dict:
            try:
                state = checkpoint_filter_fn(state, target, strict=strict)
            except CheckpointMismatchError as err:  # (the file named: "checkpoint FILE is ...")
                raise CheckpointMismatchError(f'{variant}: {with_file_named(err, f"checkpoint {file}")}') from err
            if num_classes == source.get('num_classes'):  # timm then loads the classifier as it is
                _check_classifier(variant, file, state, target)
            return state

        load_pretrained(model, source, num_classes=num_classes, in_chans=model_kwargs.get('in_chans', 3),
                        filter_fn=filter_fn, strict=strict)
        return model

    return build_model_with_cfg(create_and_load, variant, False, **build, **kwargs)


def weights_in_folder(folder: str) -> str:
    """The weights file timm's ``local-dir:`` source loads from ``folder``: the first of its preferred names
    (``model.safetensors``, ``pytorch_model.bin``, ...), else the first file by extension priority."""
    from timm.models._hub import _EXT_PRIORITY, _PREFERRED_FILES
    if not os.path.isdir(folder):
        raise FileNotFoundError(f'local-dir: {folder!r} is not a folder')
    for name in _PREFERRED_FILES:
        if os.path.isfile(os.path.join(folder, name)):
            return os.path.join(folder, name)
    for ext in _EXT_PRIORITY:
        found = sorted(n for n in os.listdir(folder) if n.endswith(ext) and os.path.isfile(os.path.join(folder, n)))
        if found:
            return os.path.join(folder, found[0])
    raise FileNotFoundError(f'local-dir: no weights file in {folder!r} (looked for {", ".join(_PREFERRED_FILES)} '
                            f'and any {" / ".join(_EXT_PRIORITY)} file)')


def _check_classifier(variant: str, file: str, state: dict, model: nn.Module) -> None:
    """A checkpoint classifier of another class count than the model's, or none, which timm would load as it is (the
    model has the cfg's class count): an error that says how to load it (torch's size-mismatch or missing-key error
    would not)."""
    own = model.state_dict()
    if any(k.startswith('head.') for k in own) and not any(k.startswith('head.') for k in state):
        raise CheckpointMismatchError(  # (torch's "missing head.weight, head.bias" would follow)
            f'{variant}: {file} has no classifier (a backbone or segmentation checkpoint), and the model keeps the '
            f'pretrained cfg\'s {model.num_classes} classes, whose classifier timm loads from the file: pass '
            'num_classes=N to create_model for a new N-class classifier, or num_classes=0 / features_only=True for '
            'features')
    wrong = [k for k in state if k.startswith('head.') and k in own and state[k].shape != own[k].shape]
    if wrong:
        classes = state[wrong[-1]].shape[0]  # (the last classifier layer's outputs)
        raise CheckpointMismatchError(
            f'{variant}: the classifier of {file} has {classes} classes, the model {model.num_classes}: put '
            f'num_classes={classes} in pretrained_cfg_overlay to load it, or pass num_classes=N to create_model for a '
            f'new N-class classifier (shape mismatches: {", ".join(wrong)})')
