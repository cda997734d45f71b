"""Fixes for Triton's CPU interpreter, so that the kernels' bf16 paths can be tested without a GPU.

The interpreter holds bfloat16 values as their raw 16 bits (``np.uint16``), and two of its operations get them
wrong (Triton 3.6 - 3.8):

* ``tl.dot`` multiplies those raw bits as integers: a bf16 x bf16 product comes back as garbage (~1e10 where the
  true value is ~10), so every GEMM kernel fed bf16 operands - the path autocast takes on a GPU - could only be
  checked on a GPU. Fixed: bfloat16 operands are widened to float32 first (exact: a bf16 value is a float32 with its
  low 16 mantissa bits zero, and so is every product of two of them), then multiplied and accumulated in the
  accumulator's dtype - what a GPU's bf16 MMA does, up to the order of the sums.
* a float32 -> bfloat16 cast (``x.to(tl.bfloat16)``, every bf16 store) drops the low 16 bits: rounding toward zero,
  where a GPU rounds to nearest even. Each bf16 output of a CPU test was off by up to one bf16 ulp more than on a
  GPU, always toward zero (a bias that sums instead of averaging). Fixed: round to nearest, ties to even, NaN kept.

:func:`install` patches both; other dtypes are untouched. :mod:`vision_rwkv.ops.triton_jit` installs it whenever
``TRITON_INTERPRET=1``.
"""
from __future__ import annotations

import numpy as np

__all__ = ["install", "installed", "bf16_bits_to_float32", "float32_to_bf16_bits"]

_INSTALLED = [False]


def bf16_bits_to_float32(bits: np.ndarray) -> np.ndarray:
    """float32 values of bfloat16 numbers held as their raw bits (uint16), exactly."""
    return (bits.astype(np.uint32) << np.uint32(16)).view(np.float32)


def float32_to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """The raw bits (uint16) of float32 values rounded to bfloat16: to nearest, ties to even (a carry out of the
    mantissa steps the exponent, past the largest finite value to inf), NaN stays NaN (quiet, its sign kept)."""
    bits = np.array(x, dtype=np.float32).view(np.uint32)  # (a copy: contiguous, 0-d kept 0-d)
    with np.errstate(over="ignore"):  # (NaN bit patterns may wrap: they are replaced below)
        rounded = ((bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16))
    nan = ((bits >> np.uint32(16)) | np.uint32(0x0040)).astype(np.uint16)
    return np.where(np.isnan(x), nan, rounded.astype(np.uint16))


def installed() -> bool:
    """Whether :func:`install` has patched the interpreter in this process."""
    return _INSTALLED[0]


def install() -> bool:
    """Patch the interpreter's ``create_dot`` and ``create_fp_trunc`` (this process, once). Returns whether they are
    patched: False on a Triton whose interpreter lacks them (nothing changed then)."""
    if _INSTALLED[0]:
        return True
    import triton.language as tl
    from triton.runtime import interpreter as ti

    builder_cls = getattr(ti, "InterpreterBuilder", None)
    dot = getattr(builder_cls, "create_dot", None)
    trunc = getattr(builder_cls, "create_fp_trunc", None)
    if dot is None or trunc is None or not hasattr(ti, "TensorHandle"):
        return False

    def create_dot(self, a, b, d, *args, **kwargs):
        if tl.bfloat16 not in (a.dtype.scalar, b.dtype.scalar):
            return dot(self, a, b, d, *args, **kwargs)
        a_data, b_data = (bf16_bits_to_float32(t.data) if t.dtype.scalar == tl.bfloat16 else t.data for t in (a, b))
        return ti.TensorHandle(np.matmul(a_data, b_data, dtype=d.data.dtype) + d.data, d.dtype.scalar)

    def create_fp_trunc(self, src, dst_type):
        if src.dtype.scalar != tl.float32 or dst_type.scalar != tl.bfloat16:
            return trunc(self, src, dst_type)
        return ti.TensorHandle(float32_to_bf16_bits(src.data), dst_type.scalar)

    builder_cls.create_dot = create_dot
    builder_cls.create_fp_trunc = create_fp_trunc
    _INSTALLED[0] = True
    return True
