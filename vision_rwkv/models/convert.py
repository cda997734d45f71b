"""Original Vision-RWKV checkpoints <-> this package's layout.

Original (mmcls) layout, after stripping ``backbone.`` / ``module.`` prefixes, and ours:

==========================================  ==========================================
original                                    ours
==========================================  ==========================================
``patch_embed.projection.{weight,bias}``    ``patch_embed.proj.{weight,bias}``
``pos_embed``                               ``pos_embed``
``layers.{i}.ln{0,1,2}.*``                  ``blocks.{i}.norm{0,1,2}.*``
``layers.{i}.gamma{1,2}``                   ``blocks.{i}.ls{1,2}.gamma``
``layers.{i}.att.*``                        ``blocks.{i}.spatial_mix.*``
``layers.{i}.ffn.*``                        ``blocks.{i}.channel_mix.*``
``ln1.*`` (final norm)                      ``norm.*``
``head.fc.*``                               ``head.*``
``head.0.*`` / ``head.2.*`` (VRWKV-L)       ``pre_logits.fc.*`` / ``head.*``
==========================================  ==========================================

Token-mix vectors stored as (1, 1, C) in the original (``spatial_mix_*``, ``time_maa_{x,w,k,v,r,g}``,
v6 ``time_decay``) are (C,) here. :func:`original_to_ours` and :func:`ours_to_original` are exact inverses.

:func:`checkpoint_filter_fn` is the timm ``pretrained_filter_fn`` of every registered model, so
``timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=PATH))`` loads an original ``.pth``
or a converted ``.safetensors``. :func:`build_from_original` builds a model from an original constructor-argument
dict. :func:`convert_file` writes our layout as safetensors (``tools/convert_checkpoint.py``).

Which weights a file holds (:func:`select_weights`, one rule for every loader): a training checkpoint's EMA weights
when it has them (ours: ``ema``; timm's: ``state_dict_ema``; DeiT's: ``model_ema``), else its ``model`` /
``state_dict`` entry, else the file itself (a plain state dict) - timm's ``load_checkpoint(use_ema=True)`` rule.
Which Bi-WKV function they were trained with (:func:`trained_wkv_mode`): what the file records (a training
checkpoint's ``extra.wkv_mode``, a converted file's ``wkv_mode`` metadata), else ``'original'`` for the original
layout (the released checkpoints), else unknown.
"""
from __future__ import annotations

import logging
import math
import os
import re
import warnings
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn as nn

__all__ = [
    'unwrap_state_dict', 'detect_family', 'is_original_layout', 'original_to_ours', 'ours_to_original',
    'checkpoint_filter_fn', 'build_from_original', 'model_kwargs_from_original', 'load_checkpoint_file',
    'checkpoint_format_problem', 'convert_file', 'CheckpointMismatchError', 'FAMILY_NAMES', 'strip_key_prefixes',
    'fit_pos_embed', 'MissingWeightsError', 'select_weights', 'trained_wkv_mode', 'read_weights_file', 'EMA_ENTRIES',
    'key_mismatches', 'CheckpointReadError',
]

FAMILY_NAMES = {'vrwkv': 'VRWKV (v4)', 'vrwkv6': 'VRWKV6'}

_STRIP_PREFIXES = ('module.', 'backbone.', '_orig_mod.')

# original -> ours, applied in order (first match wins)
_TO_OURS: List[Tuple[str, str]] = [
    (r'^patch_embed\.projection\.(weight|bias)$', r'patch_embed.proj.\1'),
    (r'^pos_embed$', r'pos_embed'),
    (r'^layers\.(\d+)\.ln([012])\.(weight|bias)$', r'blocks.\1.norm\2.\3'),
    (r'^layers\.(\d+)\.gamma([12])$', r'blocks.\1.ls\2.gamma'),
    (r'^layers\.(\d+)\.att\.(.+)$', r'blocks.\1.spatial_mix.\2'),
    (r'^layers\.(\d+)\.ffn\.(.+)$', r'blocks.\1.channel_mix.\2'),
    (r'^ln1\.(weight|bias)$', r'norm.\1'),
    (r'^head\.fc\.(weight|bias)$', r'head.\1'),
    (r'^head\.0\.(weight|bias)$', r'pre_logits.fc.\1'),
    (r'^head\.2\.(weight|bias)$', r'head.\1'),
]

# ours -> original; the classifier rule depends on whether the model has a pre-logits layer
_TO_ORIGINAL: List[Tuple[str, str]] = [
    (r'^patch_embed\.proj\.(weight|bias)$', r'patch_embed.projection.\1'),
    (r'^pos_embed$', r'pos_embed'),
    (r'^blocks\.(\d+)\.norm([012])\.(weight|bias)$', r'layers.\1.ln\2.\3'),
    (r'^blocks\.(\d+)\.ls([12])\.gamma$', r'layers.\1.gamma\2'),
    (r'^blocks\.(\d+)\.spatial_mix\.(.+)$', r'layers.\1.att.\2'),
    (r'^blocks\.(\d+)\.channel_mix\.(.+)$', r'layers.\1.ffn.\2'),
    (r'^norm\.(weight|bias)$', r'ln1.\1'),
    (r'^pre_logits\.fc\.(weight|bias)$', r'head.0.\1'),
]

# parameters stored (1, 1, C) in the original and (C,) here
_VECTOR_3D = re.compile(
    r'(^|\.)(att|ffn|spatial_mix|channel_mix)\.(spatial_mix_[kvr]|time_maa_[xwkvrg]|time_decay)$')


_logger = logging.getLogger(__name__)
_LAYER_SCALE = re.compile(r'^blocks\.\d+\.ls[12]\.gamma$')


class CheckpointMismatchError(KeyError):
    """A checkpoint does not fit the model: wrong family, missing / unexpected keys or wrong shapes."""

    def __str__(self) -> str:  # KeyError quotes its message; print it as written
        return str(self.args[0]) if self.args else ''


class CheckpointFileMismatchError(CheckpointMismatchError, RuntimeError):
    """A checkpoint file does not fit the model it is loaded into; also a RuntimeError, as a failed
    ``load_state_dict`` is (callers that catch RuntimeError keep reporting it). The tools print it as one line."""


def with_file_named(err: CheckpointMismatchError, named: str) -> str:
    """The message of a checkpoint filter's ``err`` ("checkpoint is a VRWKV6 state dict ...", or one without the
    subject) with the file named instead: ``named`` is e.g. "checkpoint PATH" or "pretrained backbone PATH"."""
    message = str(err)
    return f'{named} {message[len("checkpoint "):]}' if message.startswith('checkpoint ') else f'{named}: {message}'


MAX_LISTED_KEYS = 20  # keys named per kind in a mismatch error; the rest are counted


def listed_keys(keys: Sequence[str], what: str) -> str:
    """``N <what> (k1, k2, ..., and M more)``: the count and the first :data:`MAX_LISTED_KEYS` keys."""
    keys = list(keys)
    shown = ", ".join(str(k) for k in keys[:MAX_LISTED_KEYS])
    more = f", ... and {len(keys) - MAX_LISTED_KEYS} more" if len(keys) > MAX_LISTED_KEYS else ""
    return f"{len(keys)} {what} ({shown}{more})"


def key_mismatches(own: Mapping[str, Any], state: Mapping[str, Any], strict: bool = True,
                   shapes_exempt: Callable[[str], bool] = lambda key: False) -> List[str]:
    """How the weights ``state`` fail to fit a model whose state dict is ``own``: ``N missing keys (...)``,
    ``N unexpected keys (...)`` (both only when ``strict``) and ``N shape mismatches (key: checkpoint S vs model
    S, ...)`` for the keys both hold (except ``shapes_exempt`` ones), each as :func:`listed_keys` writes it, the
    empty kinds left out; [] when they fit. The one fit check of every checkpoint loader here."""
    missing = sorted(k for k in own if k not in state) if strict else []
    unexpected = sorted(k for k in state if k not in own) if strict else []
    shape = lambda k: tuple(getattr(state[k], 'shape', ()))  # noqa: E731 (a non-tensor entry: ())
    shapes = [f'{k}: checkpoint {shape(k)} vs model {tuple(v.shape)}' for k, v in own.items()
              if k in state and shape(k) != tuple(v.shape) and not shapes_exempt(k)]
    kinds = (('missing keys', missing), ('unexpected keys', unexpected), ('shape mismatches', sorted(shapes)))
    return [listed_keys(keys, what) for what, keys in kinds if keys]


class MissingWeightsError(CheckpointMismatchError):
    """A checkpoint file does not hold the weights asked for (no EMA weights, no such entry)."""


def strip_key_prefixes(name: str, prefixes: Sequence[str]) -> str:
    """``name`` without any leading run of wrapper ``prefixes`` (e.g. ``module._orig_mod.x`` -> ``x``)."""
    changed = True
    while changed:
        changed = False
        for p in prefixes:
            if name.startswith(p):
                name, changed = name[len(p):], True
    return name


def unwrap_state_dict(checkpoint: Mapping[str, Any], prefix: Optional[str] = None,
                      dropped: Optional[List[str]] = None) -> Dict[str, torch.Tensor]:
    """Return the flat tensor dict of ``checkpoint``.

    Accepts a raw state dict or one wrapped in ``'state_dict'`` / ``'model'`` / ``'module'``; strips
    ``module.`` / ``backbone.`` / ``_orig_mod.`` prefixes (and ``prefix`` if given, e.g. ``'image_model.'``); drops
    non-tensor entries (mmcls ``meta``). From an mm* model with ``backbone.`` keys it keeps the backbone and the
    ``head.`` classifier, dropping a segmentor's ``decode_head.`` / ``auxiliary_head.`` / ``neck.`` weights (their
    names are appended to ``dropped`` when given).
    """
    if not isinstance(checkpoint, Mapping):
        raise TypeError(f'expected a state dict (mapping of names to tensors), got {type(checkpoint).__name__}')
    sd: Mapping[str, Any] = checkpoint
    for key in ('state_dict', 'model', 'module'):
        if key in sd and isinstance(sd[key], Mapping):
            sd = sd[key]
            break
    tensors = {strip_key_prefixes(k, ('module.', '_orig_mod.')): v for k, v in sd.items()
               if isinstance(v, torch.Tensor)}
    # an mmcls / mmseg model (backbone.* + head.* or decode_head.*, auxiliary_head.*, neck.*): its backbone and,
    # for a classifier, its head
    nested = not prefix and any(k.startswith('backbone.') for k in tensors)
    out: Dict[str, torch.Tensor] = {}
    for name, value in tensors.items():
        if prefix:
            if not name.startswith(prefix):
                continue
            name = name[len(prefix):]
        elif nested and not name.startswith(('backbone.', 'head.')):
            if dropped is not None:
                dropped.append(name)
            continue
        out[strip_key_prefixes(name, _STRIP_PREFIXES)] = value
    if not out:
        raise CheckpointMismatchError('checkpoint holds no tensors' + (f' under prefix {prefix!r}' if prefix else ''))
    return out


def detect_family(state_dict: Mapping[str, torch.Tensor]) -> str:
    """'vrwkv' (v4) or 'vrwkv6' from the token-mix parameter names (either layout)."""
    names = list(state_dict)
    if any(n.endswith('.time_faaaa') or '.time_maa_' in n for n in names):
        return 'vrwkv6'
    if any(n.endswith('.spatial_decay') for n in names):
        return 'vrwkv'
    raise CheckpointMismatchError(
        'cannot tell the model family of this checkpoint: it has neither v4 `spatial_decay` nor v6 '
        f'`time_faaaa` / `time_maa_*` parameters (first keys: {names[:5]})')


def reject_clip_checkpoint(state_dict: Mapping[str, torch.Tensor]) -> None:
    """:class:`CheckpointMismatchError` for an RWKV-CLIP checkpoint (the original's ``image_model.*`` /
    ``text_model.*``, ours ``visual.trunk.*`` / ``text.*``, with ``logit_scale``): its text tower's RWKV-6 blocks
    read as a VRWKV6 backbone and the errors that followed never said what the file was."""
    names = list(state_dict)
    towers = ('image_model.', 'text_model.', 'visual.trunk.', 'text.')
    if 'logit_scale' in names and any(n.startswith(towers) for n in names):
        raise CheckpointMismatchError(
            'checkpoint is an RWKV-CLIP model (image and text towers, logit_scale), not a Vision-RWKV backbone: load '
            'it with rwkv_clip.create_model(name, pretrained=FILE) or open_clip; its image tower is '
            'model.visual.trunk, a timm VRWKV6 model whose state_dict() a classifier or segmentor can start from')


def is_original_layout(state_dict: Mapping[str, torch.Tensor]) -> bool:
    """True for the original mmcls layout (``layers.{i}`` blocks), False for ours (``blocks.{i}``)."""
    names = list(state_dict)
    if any(n.startswith('layers.') for n in names):
        return True
    if any(n.startswith('blocks.') for n in names):
        return False
    raise CheckpointMismatchError(f'not a Vision-RWKV state dict: no `layers.*` or `blocks.*` keys '
                                  f'(first keys: {names[:5]})')


def _rename(name: str, rules: Iterable[Tuple[str, str]]) -> Optional[str]:
    for pattern, repl in rules:
        if re.match(pattern, name):
            return re.sub(pattern, repl, name)
    return None


def original_to_ours(state_dict: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Map an (unwrapped) original state dict to our names and shapes. Unknown keys raise, listed."""
    out, unknown = {}, []
    for name, value in state_dict.items():
        new = _rename(name, _TO_OURS)
        if new is None:
            unknown.append(name)
            continue
        if _VECTOR_3D.search(new):
            value = value.reshape(-1)
        out[new] = value
    if unknown:
        raise CheckpointMismatchError(
            listed_keys(sorted(unknown), 'unexpected keys in original checkpoint (no mapping)'))
    return out


def ours_to_original(state_dict: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Inverse of :func:`original_to_ours` (our model's state dict -> original names, (1, 1, C) vectors)."""
    has_pre_logits = any(n.startswith('pre_logits.') for n in state_dict)
    head_rule = (r'^head\.(weight|bias)$', r'head.2.\1' if has_pre_logits else r'head.fc.\1')
    out, unknown = {}, []
    for name, value in state_dict.items():
        new = _rename(name, _TO_ORIGINAL + [head_rule])
        if new is None:
            unknown.append(name)
            continue
        if _VECTOR_3D.search(name):
            value = value.reshape(1, 1, -1)
        out[new] = value
    if unknown:
        raise CheckpointMismatchError(f'{listed_keys(sorted(unknown), "keys with no original equivalent")}')
    return out


def _square_grid(num_tokens: int) -> Tuple[int, int]:
    side = math.isqrt(num_tokens)
    if side * side != num_tokens:
        raise CheckpointMismatchError(
            f'checkpoint pos_embed has {num_tokens} tokens, not a square grid; create the model with a matching '
            f'img_size / pos_embed_grid')
    return side, side


def _stored_grid(num_tokens: int, img_size: Any = None, patch_size: Any = None) -> Tuple[int, int]:
    """The token grid of a stored position embedding: the one the config's ``img_size`` / ``patch_size`` give when
    it holds ``num_tokens`` (a rectangular grid too), else a square one."""
    if img_size is not None and patch_size is not None:
        (h, w), (ph, pw) = (tuple(x) if isinstance(x, (list, tuple)) else (x, x) for x in (img_size, patch_size))
        if (h // ph) * (w // pw) == num_tokens:
            return h // ph, w // pw
    return _square_grid(num_tokens)


def fit_pos_embed(pos_embed: torch.Tensor, model: nn.Module) -> torch.Tensor:
    """A checkpoint's (1, N, C) position embedding, from a square token grid, resampled to ``model.pos_grid``
    (bicubic, no antialias); CheckpointMismatchError for another width or a non-square N."""
    from ._layers import resample_pos_embed
    width = model.pos_embed.shape[-1]
    if pos_embed.shape[-1] != width:
        raise CheckpointMismatchError(f'checkpoint embedding width {pos_embed.shape[-1]} != model width {width} (its '
                                      'pos_embed): the checkpoint is of a model of another size (embed_dim)')
    return resample_pos_embed(pos_embed, _square_grid(pos_embed.shape[1]), model.pos_grid)


def checkpoint_filter_fn(state_dict: Mapping[str, Any], model: nn.Module,
                         init_missing_layer_scale: bool = False, strict: bool = True) -> Dict[str, torch.Tensor]:
    """timm ``pretrained_filter_fn``: turn an original or converted checkpoint into ``model``'s state dict.

    Unwraps and strips prefixes, converts the original layout, checks the family (v4 vs v6), resizes the position
    embedding (bicubic, no antialias) to the model's grid, drops classifier weights when the model has no
    classifier, and raises :class:`CheckpointMismatchError` listing missing / unexpected keys and shape mismatches
    (the classifier may differ in class count and the patch embedding in input channels: timm adapts those; a
    checkpoint without classifier leaves the model's classifier out of the returned dict, for timm to load
    non-strictly with a new head). With ``init_missing_layer_scale``, layer-scale gammas the checkpoint lacks take
    the model's own values (its ``init_values``): the original segmentation recipe adds layer scale to a VRWKV-T
    trained without it. ``strict=False`` (timm's ``pretrained_strict=False``: model surgery) warns about the
    mismatches instead and returns the tensors that fit, for timm to load non-strictly (another family is still an
    error).
    """
    sd = unwrap_state_dict(state_dict)
    reject_clip_checkpoint(sd)
    family = detect_family(sd)
    model_family = getattr(model, 'family', None)
    if model_family is not None and family != model_family:
        raise CheckpointMismatchError(
            f'checkpoint is a {FAMILY_NAMES[family]} state dict but the model is {FAMILY_NAMES[model_family]}; '
            f'create a `{family}_*` model for it')
    if is_original_layout(sd):
        sd = original_to_ours(sd)

    model_sd = model.state_dict()
    if 'pos_embed' in sd and 'pos_embed' in model_sd and sd['pos_embed'].shape != model_sd['pos_embed'].shape:
        sd['pos_embed'] = fit_pos_embed(sd['pos_embed'], model)

    is_head = lambda n: n.startswith('head.')  # noqa: E731
    is_pre_logits = lambda n: n.startswith('pre_logits.')  # noqa: E731
    if not any(is_head(n) for n in model_sd):  # model without classifier: drop the checkpoint's
        sd = {k: v for k, v in sd.items() if not is_head(k)}
        if not any(is_pre_logits(n) for n in model_sd):
            sd = {k: v for k, v in sd.items() if not is_pre_logits(k)}

    if init_missing_layer_scale:
        fresh = {k: v for k, v in model_sd.items() if k not in sd and _LAYER_SCALE.match(k)}
        if fresh:
            _logger.info('checkpoint has no layer scale: %d gammas keep the model\'s init_values', len(fresh))
        sd.update(fresh)
    if not any(is_head(k) or k.startswith('norm.') for k in sd):
        # a segmentation backbone (ours prunes the final norm its features do not use): the model's norm keeps
        # its init, which features_only and forward_intermediates(norm=False) do not use either
        final_norm = {k: v for k, v in model_sd.items() if k.startswith('norm.')}
        if final_norm:
            warnings.warn(f'checkpoint holds no final norm ({", ".join(sorted(final_norm))}), as segmentation '
                          'backbones do: the model\'s final norm keeps its initialisation (identity); features_only '
                          'and forward_intermediates(norm=False) do not use it, pooled features and a classifier do',
                          stacklevel=2)
            sd.update(final_norm)
    missing = sorted(set(model_sd) - set(sd))
    if not any(is_head(k) for k in sd):
        # a backbone checkpoint: timm loads it non-strictly into a model with a new classifier (another class
        # count, or features_only) and reports the missing classifier itself when it loads strictly
        missing = [k for k in missing if not (is_head(k) or is_pre_logits(k))]
    unexpected = sorted(set(sd) - set(model_sd))
    def adaptable(k: str) -> bool:
        # timm re-creates the classifier for another class count and adapts the first conv to other in_chans
        if is_head(k):
            return True
        a, b = sd[k].shape, model_sd[k].shape
        return k == 'patch_embed.proj.weight' and len(a) == len(b) == 4 and a[0] == b[0] and a[2:] == b[2:]

    wrong_shape = sorted(
        f'{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(model_sd[k].shape)}'
        for k in set(sd) & set(model_sd) if sd[k].shape != model_sd[k].shape and not adaptable(k))
    if (missing or unexpected or wrong_shape) and not strict:
        warnings.warn(f'loading non-strictly into {type(model).__name__}: {len(missing)} missing keys keep their '
                      f'init, {len(unexpected)} unexpected keys and {len(wrong_shape)} tensors of another shape '
                      f'are dropped'
                      + (f'; {listed_keys(missing, "missing keys")}' if missing else '')
                      + (f'; {listed_keys(unexpected, "unexpected keys")}' if unexpected else '')
                      + (f'; {listed_keys(wrong_shape, "shape mismatches")}' if wrong_shape else ''), stacklevel=2)
        bad = set(unexpected) | {k for k in set(sd) & set(model_sd) if sd[k].shape != model_sd[k].shape
                                 and not adaptable(k)}
        return {k: v for k, v in sd.items() if k not in bad}
    if missing or unexpected or wrong_shape:
        raise CheckpointMismatchError(
            f'checkpoint does not fit {type(model).__name__}:'
            + (f'\n  {listed_keys(missing, "missing keys")}' if missing else '')
            + (f'\n  {listed_keys(unexpected, "unexpected keys")}' if unexpected else '')
            + (f'\n  {listed_keys(wrong_shape, "shape mismatches")}' if wrong_shape else ''))
    return sd


# ---------------------------------------------------------------------- original constructor arguments
# original VRWKV / VRWKV6 __init__ argument -> (our kwarg, converter); None = accepted and ignored
# with_cp (activation checkpointing) is a training choice, not architecture: build_from_original applies it
_IGNORED = ('out_indices', 'init_mode', 'init_cfg', 'output_cls_token', 'shift_mode', 'with_cp')
_REQUIRED_VALUES = {'shift_pixel': 1, 'channel_gamma': 0.25, 'interpolate_mode': 'bicubic', 'with_cls_token': False}
_RENAMES = {
    'img_size': 'img_size', 'patch_size': 'patch_size', 'in_channels': 'in_chans', 'embed_dims': 'embed_dim',
    'depth': 'depth', 'drop_rate': 'pos_drop_rate', 'drop_path_rate': 'drop_path_rate', 'post_norm': 'post_norm',
    'key_norm': 'key_norm', 'k_norm': 'key_norm', 'init_values': 'init_values', 'hidden_rate': 'mlp_ratio',
    'final_norm': 'final_norm', 'hidden_dims': 'head_hidden_size', 'num_classes': 'num_classes',
}


def model_kwargs_from_original(config: Mapping[str, Any], family: str) -> Dict[str, Any]:
    """Translate an original VRWKV / VRWKV6 constructor-argument dict to our kwargs (unknown keys raise)."""
    kwargs: Dict[str, Any] = {}
    unknown = []
    for key, value in config.items():
        if key in _IGNORED:
            continue
        if key in _REQUIRED_VALUES:
            if value != _REQUIRED_VALUES[key]:
                raise ValueError(f'original config {key}={value!r} is not supported (only {_REQUIRED_VALUES[key]!r})')
        elif key == 'num_heads':
            if family != 'vrwkv6':
                raise ValueError('num_heads is a VRWKV6 argument; this is a v4 checkpoint')
            embed = config.get('embed_dims', 256)
            if embed % value:
                raise ValueError(f'embed_dims {embed} is not divisible by num_heads {value}')
            kwargs['head_size'] = embed // value
        elif key in _RENAMES:
            kwargs[_RENAMES[key]] = value
        else:
            unknown.append(key)
    if unknown:
        raise ValueError(f'unknown original config keys: {sorted(unknown)}')
    # original defaults that differ from ours
    kwargs.setdefault('embed_dim', 256 if family == 'vrwkv' else 192)
    kwargs.setdefault('img_size', 224)
    kwargs.setdefault('patch_size', 16)
    if family == 'vrwkv6':
        kwargs.setdefault('head_size', kwargs['embed_dim'] // 3)  # original default num_heads=3
    return kwargs


def build_from_original(
        config: Mapping[str, Any],
        state_dict: Mapping[str, Any],
        wkv_mode: str = 'original',
        wkv_chunks: int = 32,
        prefix: Optional[str] = None,
) -> nn.Module:
    """Build our model from an original constructor-argument dict and load the converted ``state_dict``.

    The family comes from the state dict; the classifier size from its head (none: ``num_classes=0``).
    ``wkv_mode`` / ``wkv_chunks`` select the v4 Bi-WKV function (ignored for v6). Returns the model in eval mode;
    ``model.forward_features(x)`` gives (B, N, C) tokens and ``model.forward_features_map(x)`` the (B, C, H, W) map.
    """
    from .vrwkv import VRWKV
    from .vrwkv6 import VRWKV6

    sd = unwrap_state_dict(state_dict, prefix=prefix)
    family = detect_family(sd)
    if is_original_layout(sd):
        sd = original_to_ours(sd)
    kwargs = model_kwargs_from_original(config, family)
    if 'head.weight' in sd:
        kwargs.setdefault('num_classes', sd['head.weight'].shape[0])
        if 'pre_logits.fc.weight' in sd:
            kwargs.setdefault('head_hidden_size', sd['pre_logits.fc.weight'].shape[0])
    else:
        kwargs['num_classes'] = 0
    if 'pos_embed' in sd:
        kwargs['pos_embed_grid'] = _stored_grid(sd['pos_embed'].shape[1], config.get('img_size'),
                                                kwargs.get('patch_size'))
    if family == 'vrwkv':
        model = VRWKV(wkv_mode=wkv_mode, wkv_chunks=wkv_chunks, **kwargs)
    else:
        model = VRWKV6(**kwargs)
    model.load_state_dict(checkpoint_filter_fn(sd, model))
    model.set_grad_checkpointing(bool(config.get('with_cp', False)))
    return model.eval()


# ---------------------------------------------------------------------- files
class CheckpointReadError(ValueError, RuntimeError):
    """A checkpoint file cannot be read: not a checkpoint, truncated, or holding pickled objects that
    ``weights_only=True`` refuses. A ValueError and a RuntimeError (each loader raised one of them before)."""


def load_checkpoint_file(path: str | os.PathLike, map_location: Any = 'cpu', mmap: bool = False) -> Any:
    """Read a ``.safetensors`` file or a ``.pth`` / ``.pt`` / ``.bin`` (``torch.load(weights_only=True)``): the one
    checkpoint reader of every loader here. A missing file raises FileNotFoundError, an unreadable one
    :class:`CheckpointReadError` naming the file and what is wrong (torch's own message would suggest
    ``weights_only=False``). ``mmap``: map a torch file's storage instead of reading it."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f'checkpoint file not found: {path}')
    problem = checkpoint_format_problem(path)
    if problem:
        raise CheckpointReadError(f'cannot read checkpoint {path}: {problem}')
    if path.endswith('.safetensors'):
        from safetensors.torch import load_file
        try:
            return load_file(path, device=str(map_location))
        except Exception as e:  # a damaged tensor table
            raise CheckpointReadError(f'cannot read checkpoint {path}: {e}') from e
    try:
        return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as e:  # truncated archive, or pickled objects weights_only refuses
        raise CheckpointReadError(f'cannot read checkpoint {path} (weights_only=True): {e}') from e


_SAFETENSORS_MAX_HEADER = 100_000_000  # the safetensors library's own limit


def checkpoint_format_problem(path: str | os.PathLike) -> Optional[str]:
    """Why the file at ``path`` cannot be read as a checkpoint, judged from its first bytes (torch.load's own error
    for such a file suggests ``weights_only=False``), or None. A ``.safetensors`` file needs its header length, a
    JSON header that fits the file and tensor data that ends where the file ends (a truncated file's header is
    intact, its data is not); any other file must be a zip archive (torch.save since torch 1.6) or a legacy
    pickle."""
    import json
    import zipfile
    path = os.fspath(path)
    size = os.path.getsize(path)
    with open(path, 'rb') as f:
        head = f.read(8)
        if path.endswith('.safetensors'):
            n = int.from_bytes(head, 'little') if len(head) == 8 else -1
            if n < 0 or 8 + n > size:
                return f'not a valid safetensors file ({size} bytes, shorter than the header it announces)'
            if n > _SAFETENSORS_MAX_HEADER:
                return f'not a valid safetensors file (it announces a header of {n} bytes)'
            try:
                header = json.loads(f.read(n))
            except ValueError:
                return 'not a valid safetensors file (its header is not JSON)'
            return _safetensors_data_problem(header, size, 8 + n)
    if zipfile.is_zipfile(path) or head[:1] == b'\x80':  # a zip archive, or pickle protocol 2+: torch.save's legacy
        return None
    if head[:4] == b'PK\x03\x04':
        return 'a truncated or damaged zip archive (torch.save format): its end record is missing'
    return f'not a PyTorch checkpoint (neither a torch.save zip archive nor a legacy pickle; it starts with {head!r})'


def _safetensors_data_problem(header: Any, size: int, data_start: int) -> Optional[str]:
    """What is wrong with the tensor data of a safetensors file whose header (``data_start`` bytes with its length)
    parsed: the header's data offsets must end exactly at the end of the file."""
    try:
        ends = [int(entry['data_offsets'][1]) for name, entry in header.items() if name != '__metadata__']
    except (AttributeError, TypeError, KeyError, IndexError, ValueError):
        return 'not a valid safetensors file (its header is not a table of tensors with data offsets)'
    expected = data_start + max(ends, default=0)
    if expected > size:
        return (f'not a valid safetensors file (truncated: its header places tensor data up to byte {expected}, '
                f'the file has {size} bytes)')
    if expected < size:
        return (f'not a valid safetensors file ({size - expected} bytes after the last tensor its header describes, '
                f'{size} bytes in all: damaged or appended to)')
    return None


# ---------------------------------------------------------------------- which weights, trained how
EMA_ENTRIES = ('ema', 'state_dict_ema', 'model_ema')  # ours (timm ModelEmaV3, `module.` keys), timm's, DeiT's
_WEIGHT_ENTRIES = ('model', 'state_dict', 'model_state_dict')  # ours / timm's, mmcv's, a common PyTorch habit


def _describe(checkpoint: Mapping[str, Any]) -> str:
    names = sorted(map(str, checkpoint))
    return f"{names[:12]}{' ...' if len(names) > 12 else ''}"


def _no_ema_reason(checkpoint: Mapping[str, Any]) -> str:
    if 'ema' in checkpoint and checkpoint['ema'] is None:
        return "its 'ema' entry is empty, as the run trained without EMA (ema.enabled=false)"
    if any(isinstance(checkpoint.get(k), Mapping) for k in _WEIGHT_ENTRIES):
        return f"it has no {' / '.join(repr(k) for k in EMA_ENTRIES)} entry (entries: {_describe(checkpoint)})"
    return 'it is a plain state dict: its tensors are the (only) weights'


def select_weights(checkpoint: Any, weights: Optional[str] = 'auto',
                   path: Optional[str | os.PathLike] = None) -> Any:
    """The model weights of a loaded checkpoint ``checkpoint`` (of the file ``path``, named in errors).

    ``weights``: ``'auto'`` - the EMA weights when the file has them (:data:`EMA_ENTRIES`), else its ``model`` /
    ``state_dict`` entry, else the file itself (a plain state dict): timm's ``load_checkpoint(use_ema=True)`` rule;
    ``'ema'`` - the EMA weights, :class:`MissingWeightsError` if there are none; ``'model'`` - the raw weights (the
    ``model`` / ``state_dict`` entry, or a plain state dict); any other name - that entry; None - the file as is.
    EMA entries lose their ``module.`` prefix (timm's ModelEmaV3 state dict).
    """
    if weights is None or not isinstance(checkpoint, Mapping):
        return checkpoint
    name = f'checkpoint {os.fspath(path)}' if path is not None else 'the checkpoint'
    if weights in ('auto', 'ema'):
        for key in EMA_ENTRIES:
            if isinstance(checkpoint.get(key), Mapping):
                return {strip_key_prefixes(str(k), ('module.',)): v for k, v in checkpoint[key].items()}
        if weights == 'ema':
            raise MissingWeightsError(f'{name} holds no EMA weights: {_no_ema_reason(checkpoint)}; load its model '
                                      "weights instead (weights 'model' or 'auto', e.g. eval.weights=model)")
    if weights in ('auto', 'model'):
        return next((checkpoint[k] for k in _WEIGHT_ENTRIES if isinstance(checkpoint.get(k), Mapping)), checkpoint)
    if not isinstance(checkpoint.get(weights), Mapping):
        raise MissingWeightsError(f'{name} has no entry {weights!r} holding weights (entries: {_describe(checkpoint)})')
    return checkpoint[weights]


WkvRecord = Tuple[str, Optional[int]]  # (wkv_mode, wkv_chunks or None: the model's)


def _recorded_mode(mode: Any, chunks: Any, path: Any) -> Optional[WkvRecord]:
    if not mode:
        return None
    try:
        record = str(mode), (int(chunks) if chunks not in (None, '') else None)
    except (TypeError, ValueError):
        record = None
    if record is None or record[0] not in ('exact', 'original') or (record[1] is not None and record[1] < 1):
        name = f'checkpoint {os.fspath(path)}' if path is not None else 'the checkpoint'
        raise ValueError(f'{name} records an invalid Bi-WKV function: wkv_mode={mode!r}, wkv_chunks={chunks!r}')
    return record


def trained_wkv_mode(path: Optional[str | os.PathLike] = None, checkpoint: Optional[Mapping[str, Any]] = None,
                     state_dict: Optional[Mapping[str, Any]] = None) -> Optional[WkvRecord]:
    """The v4 Bi-WKV function (mode, chunks or None) the weights of a file were trained with, or None if unknown.

    Recorded: a ``.safetensors`` file's ``wkv_mode`` / ``wkv_chunks`` metadata (``tools/convert_checkpoint.py``), a
    training checkpoint's ``extra.wkv_mode`` / ``extra.wkv_chunks`` (``checkpoint``, the loaded file, or read from
    ``path``). Inferred: ``'original'`` for weights in the original layout (``state_dict``, unwrapped): the released
    checkpoints were all trained with the original kernel's function.
    """
    if path is not None and not os.path.isfile(path) and (checkpoint is None or _is_safetensors(path)):
        raise FileNotFoundError(f'checkpoint file not found: {os.fspath(path)}')
    if path is not None and _is_safetensors(path):
        from safetensors import safe_open
        with safe_open(os.fspath(path), 'pt') as f:
            meta = f.metadata() or {}
        record = _recorded_mode(meta.get('wkv_mode'), meta.get('wkv_chunks'), path)
    else:
        if checkpoint is None and path is not None:
            checkpoint = _load_for_metadata(path)
        extra = checkpoint.get('extra') if isinstance(checkpoint, Mapping) else None
        extra = extra if isinstance(extra, Mapping) else {}
        record = _recorded_mode(extra.get('wkv_mode'), extra.get('wkv_chunks'), path)
    if record is None and state_dict is not None:
        try:
            if is_original_layout(state_dict):
                record = ('original', None)
        except CheckpointMismatchError:  # not a Vision-RWKV state dict: nothing to infer
            pass
    return record


def _is_safetensors(path: str | os.PathLike) -> bool:
    return os.fspath(path).endswith('.safetensors')


def _load_for_metadata(path: str | os.PathLike) -> Any:
    """A torch checkpoint mapped rather than read (only its small entries are looked at); a legacy (non-zip) file,
    which cannot be mapped, is read."""
    try:
        return load_checkpoint_file(path, mmap=True)
    except CheckpointReadError:
        return load_checkpoint_file(path)


def read_weights_file(path: str | os.PathLike, weights: Optional[str] = 'auto', dropped: Optional[List[str]] = None
                      ) -> Tuple[Dict[str, torch.Tensor], Optional[WkvRecord]]:
    """The weights of a checkpoint file by :func:`select_weights` (unwrapped, prefixes stripped, our names and
    shapes unchanged) and, for v4 weights, :func:`trained_wkv_mode`. Errors name the file. ``dropped``: as for
    :func:`unwrap_state_dict` (a segmentor's neck and head weights)."""
    checkpoint = load_checkpoint_file(path)
    try:
        sd = unwrap_state_dict(select_weights(checkpoint, weights, path), dropped=dropped)
    except TypeError as err:  # e.g. a file holding one tensor
        raise CheckpointReadError(f'checkpoint {os.fspath(path)} holds no weights: {err}') from err
    return sd, trained_wkv_mode(path, checkpoint, sd)


def convert_file(
        src: str | os.PathLike,
        dst: str | os.PathLike,
        model_name: Optional[str] = None,
        weights: str = 'auto',
        **model_kwargs: Any,
) -> Dict[str, Any]:
    """Convert a checkpoint file (original layout, or ours: a training checkpoint, a state dict) to our layout and
    write it as safetensors.

    ``weights`` picks the weights of a training checkpoint (:func:`select_weights`: ``'auto'`` = EMA when present,
    ``'model'``, ``'ema'``). With ``model_name`` the converted weights are checked against
    ``timm.create_model(model_name, **model_kwargs)`` (class count taken from the checkpoint) and any mismatch
    raises before writing. The write is atomic. Returns a summary dict (family, number of tensors, num_classes,
    destination, wkv_mode, and ``dropped``: the names of a segmentor's neck and head weights, left out: the file
    is its backbone). The file's metadata records the family, our layout and, for v4, the Bi-WKV function the
    weights were trained with when known (:func:`trained_wkv_mode`: ``'original'`` for the released checkpoints,
    the recorded mode for our own; none recorded, none written).
    """
    from safetensors.torch import save_file

    dst = os.fspath(dst)
    if not dst.endswith('.safetensors'):
        raise ValueError(f'output must be a .safetensors file, got {dst}')
    dropped: List[str] = []
    sd, record = read_weights_file(src, weights, dropped=dropped)
    try:  # (the checkpoint errors name the file: the tool converts one)
        reject_clip_checkpoint(sd)
        family = detect_family(sd)
        if is_original_layout(sd):
            sd = original_to_ours(sd)
        num_classes = sd['head.weight'].shape[0] if 'head.weight' in sd else 0
        folder = os.path.dirname(os.path.abspath(dst))
        if not os.path.isdir(folder):
            raise FileNotFoundError(f'output folder not found: {folder}')
        if model_name is not None:  # a check: the weights are written as they are (not resized to the model's grid)
            import timm
            if not timm.is_model(model_name):
                raise ValueError(f'unknown timm model {model_name!r} (timm.list_models("vrwkv*") lists ours)')
            model_kwargs.setdefault('num_classes', num_classes)
            with torch.device('meta'):
                model = timm.create_model(model_name, **model_kwargs)
            checkpoint_filter_fn(sd, model)
    except CheckpointMismatchError as err:
        raise CheckpointFileMismatchError(with_file_named(err, f'checkpoint {os.fspath(src)}')) from None
    sd = {k: v.detach().contiguous().cpu() for k, v in sd.items()}
    metadata = {'format': 'pt', 'family': family, 'layout': 'vision_rwkv'}
    if family == 'vrwkv' and record is not None:  # the Bi-WKV function the weights were trained with
        metadata['wkv_mode'] = record[0]
        if record[1] is not None:
            metadata['wkv_chunks'] = str(record[1])

    tmp = dst + '.tmp'
    save_file(sd, tmp, metadata=metadata)
    os.replace(tmp, dst)
    return dict(family=family, num_tensors=len(sd), num_classes=num_classes, dst=dst,
                wkv_mode=metadata.get('wkv_mode'), dropped=dropped)
