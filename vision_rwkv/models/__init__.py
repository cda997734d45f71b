"""Vision-RWKV backbones registered with timm (importing this package registers them).

v4: ``vrwkv_{tiny,small,base}_patch16_224``, ``vrwkv_large_patch16_384`` (:class:`VRWKV`);
v6: ``vrwkv6_{tiny,small,base}_patch16_224`` (:class:`VRWKV6`). Original checkpoints: :mod:`.convert`.
"""
from .convert import build_from_original, checkpoint_filter_fn, convert_file, ours_to_original, original_to_ours
from .vrwkv import VRWKV, SpatialMix
from .vrwkv6 import VRWKV6, SpatialMixV6

__all__ = [
    'VRWKV', 'VRWKV6', 'SpatialMix', 'SpatialMixV6',
    'build_from_original', 'checkpoint_filter_fn', 'convert_file', 'original_to_ours', 'ours_to_original',
]
