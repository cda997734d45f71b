"""Token-mixing operators of Vision-RWKV / RWKV-CLIP.

* :func:`q_shift`, :func:`bi_shift_1d` - token shifts (``shift.py``): plain PyTorch on every device (no backend; on
  a GPU the models' fused path shifts inside the fused mixing kernels of :mod:`vision_rwkv.ops.fused` instead).
* :func:`bi_wkv` - v4 bidirectional WKV, modes "exact" and "original" (``bi_wkv/``).
* :func:`bi_wkv6` - RWKV-6 bidirectional WKV (``bi_wkv6/``).

The two WKV operators have a plain-PyTorch reference and Triton kernels (registered as torch custom ops):
``backend=None`` picks Triton for CUDA tensors when available, else the reference; ``VRWKV_BACKEND`` forces one.
Importing this package salts torch's compile caches with a hash of these sources (``_cache_tag.py``), so a graph
compiled against older operators is not replayed.
"""
from ._cache_tag import tag_compile_caches
from .bi_wkv import bi_wkv, bi_wkv_naive, bi_wkv_reference
from .bi_wkv6 import bi_wkv6, bi_wkv6_naive, bi_wkv6_reference
from .shift import bi_shift_1d, q_shift

__all__ = ["q_shift", "bi_shift_1d", "bi_wkv", "bi_wkv6", "bi_wkv_reference", "bi_wkv_naive",
           "bi_wkv6_reference", "bi_wkv6_naive"]

tag_compile_caches()
