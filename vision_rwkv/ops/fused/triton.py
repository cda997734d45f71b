"""The fused elementwise Triton kernels around the WKV operators, forward and backward, as torch custom ops - one
import for :mod:`vision_rwkv.ops.fused`'s dispatch (loaded lazily: importing it checks that Triton works here):

* ``shift_triton.py`` - ``token_shift_mix`` (Q-Shift + interpolation in one pass, the M mixed inputs written in the
  compute dtype) and ``token_shift_mix_lora`` (the RWKV-6 ddlerp, its LoRA's m formed per tile, never stored).
* ``elementwise_triton.py`` - ``sigmoid_mul``, ``relu_square`` (also in place), ``decay_logd`` (``-exp(w0 + z)``).
* ``group_norm_triton.py`` - ``group_norm_mul``: per-token GroupNorm times a (SiLU) gate.
* ``add_norm_triton.py`` - ``add_norm``: a block's residual add + LayerNorm (pre- or post-norm, layer scale, drop
  path's per-sample factor).

In eager mode each op is a ``torch.autograd.Function`` over the kernels (less call overhead); while torch.compile
traces, the same kernels run as the custom ops (with fake implementations: no graph breaks). Outputs are allocated
with :func:`vision_rwkv.ops._triton_utils.new_empty` (NaN-poisoned when ``VRWKV_TRITON_DEBUG=1``). Shapes and dtypes
are checked by the public wrappers in ``__init__.py``. ``CONFIG`` (``_config.py``): the launch settings they share.
"""
from __future__ import annotations

from ._config import CONFIG
from .add_norm_triton import add_norm_triton
from .elementwise_triton import decay_logd_triton, relu_square_inplace_triton, relu_square_triton, sigmoid_mul_triton
from .group_norm_triton import group_norm_mul_triton
from .shift_triton import token_shift_mix_lora_triton, token_shift_mix_triton

__all__ = ["token_shift_mix_triton", "sigmoid_mul_triton", "relu_square_triton", "group_norm_mul_triton",
           "decay_logd_triton", "add_norm_triton", "token_shift_mix_lora_triton", "relu_square_inplace_triton",
           "CONFIG"]
