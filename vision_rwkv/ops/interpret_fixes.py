"""Fixes for Triton's CPU interpreter, so that CPU tests see what a GPU computes (Triton 3.6 - 3.8).

The interpreter holds bfloat16 values as their raw 16 bits (``np.uint16``), and runs every float32 ``tl.dot`` in
exact float32, whatever its ``input_precision``:

* **bf16 dots.** ``tl.dot`` multiplied the raw bits as integers: a bf16 x bf16 product came back as garbage (~1e10
  where the true value is ~10), so every GEMM kernel fed bf16 operands - the path autocast takes on a GPU - could
  only be checked on a GPU. Now bfloat16 operands are widened to float32 first (exact: a bf16 value is a float32
  with its low 16 mantissa bits zero, and so is every product of two of them) and accumulated in the accumulator's
  dtype - what a GPU's bf16 MMA does, up to the order of the sums.
* **float32 -> bf16 casts** (``x.to(tl.bfloat16)``, every bf16 store) dropped the low 16 bits: rounding toward zero,
  where a GPU rounds to nearest even. Each bf16 output of a CPU test was off by up to one bf16 ulp more than on a
  GPU, always toward zero (a bias that sums instead of averaging). Now: to nearest, ties to even, NaN kept.
* **TF32.** A GPU's float32 dot with ``input_precision="tf32"`` (Triton's default) reads its operands as TF32 - the
  low 13 of 23 mantissa bits dropped, ~1e-3 relative error - and ``"tf32x3"`` splits each operand into a TF32 part
  (rounded, ``cvt.rna``) and the TF32 rest and sums three products (the small x small one left out: ~fp32, but
  not exactly). The interpreter computed both exactly, so a CPU test could not see the precision a GPU loses
  there. Now both are emulated; ``"ieee"`` stays exact.

And one fix of the interpreter itself: **scalar arguments as indices** (``range(0, N, BLOCK)`` over a kernel
argument N). Triton 3.6 converts such a scalar with ``int()`` of its one-element array, which NumPy >= 2.4 refuses
("only 0-dimensional arrays can be converted to Python scalars"): every such kernel failed there. Its tensors'
``__index__`` now reads the one element (what Triton 3.7 does).

:func:`install` patches the interpreter's ``create_dot`` and ``create_fp_trunc`` and, where it has the old
conversion, the language patch that sets ``__index__``; other dtypes and operations are untouched.
:mod:`vision_rwkv.ops.triton_jit` installs it whenever ``TRITON_INTERPRET=1``.
"""
from __future__ import annotations

import numpy as np

__all__ = ["install", "installed", "fix_scalar_index", "bf16_bits_to_float32", "float32_to_bf16_bits", "tf32_truncate",
           "tf32_round"]

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


def tf32_truncate(x: np.ndarray) -> np.ndarray:
    """float32 values as a tensor core reads them as TF32 operands: the low 13 of the 23 mantissa bits dropped."""
    return (np.array(x, dtype=np.float32).view(np.uint32) & np.uint32(0xFFFFE000)).view(np.float32)


def tf32_round(x: np.ndarray) -> np.ndarray:
    """float32 values rounded to TF32, to nearest with ties away from zero (PTX ``cvt.rna.tf32.f32``, how Triton
    splits an operand for ``tf32x3``); inf and NaN kept."""
    bits = np.array(x, dtype=np.float32).view(np.uint32)
    finite = np.isfinite(np.asarray(x, dtype=np.float32))
    with np.errstate(over="ignore"):
        rounded = (bits + np.uint32(0x1000)) & np.uint32(0xFFFFE000)
    return np.where(finite, rounded, bits).view(np.float32)


def _tf32_dot(a: np.ndarray, b: np.ndarray, out_dtype, three: bool) -> np.ndarray:
    """A float32 tl.dot on tensor cores: ``three`` (tf32x3) - each operand split into a TF32 big part and the
    TF32 rest, three products (small x big, big x small, big x big) summed; else one product of the truncated
    operands. Products of TF32 values are exact in float32; the sums are float32."""
    if not three:
        return np.matmul(tf32_truncate(a), tf32_truncate(b), dtype=out_dtype)
    a_big, b_big = tf32_round(a), tf32_round(b)
    a_small, b_small = tf32_truncate(a - a_big), tf32_truncate(b - b_big)
    return (np.matmul(a_small, b_big, dtype=out_dtype) + np.matmul(a_big, b_small, dtype=out_dtype)
            + np.matmul(a_big, b_big, dtype=out_dtype))


def _index_of(tensor) -> int:
    """A scalar interpreter tensor as a Python int (its handle's one element, whatever the array's rank; a block of
    several elements raises, as in Triton)."""
    return int(np.asarray(tensor.handle.data).item())


def fix_scalar_index(ti) -> bool:
    """Wrap ``ti._patch_lang_tensor`` (the interpreter module ``ti``'s patch of ``tl.tensor``) so that its
    ``__index__`` is :func:`_index_of`; only on an interpreter whose own conversion is ``int()`` of the array (Triton
    <= 3.6: NumPy >= 2.4 rejects it for a one-element 1-D array). Returns whether it wrapped."""
    import inspect

    patch = getattr(ti, "_patch_lang_tensor", None)
    if patch is None or getattr(patch, "_vrwkv_index", False):
        return False
    try:
        source = inspect.getsource(patch)
    except (OSError, TypeError):
        return False
    if "int(self.handle.data)" not in source:  # (Triton >= 3.7 squeezes first)
        return False

    def patch_lang_tensor(tensor, scope, *args, **kwargs):
        patch(tensor, scope, *args, **kwargs)
        scope.set_attr(tensor, "__index__", _index_of)  # (restored with the rest, last set first undone)

    patch_lang_tensor._vrwkv_index = True
    ti._patch_lang_tensor = patch_lang_tensor
    return True


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

    def create_dot(self, a, b, d, input_precision=None, *args, **kwargs):
        if tl.bfloat16 in (a.dtype.scalar, b.dtype.scalar):
            a_data, b_data = (bf16_bits_to_float32(t.data) if t.dtype.scalar == tl.bfloat16 else t.data
                              for t in (a, b))
            return ti.TensorHandle(np.matmul(a_data, b_data, dtype=d.data.dtype) + d.data, d.dtype.scalar)
        mode = getattr(input_precision, "name", "")
        if a.dtype.scalar == tl.float32 and b.dtype.scalar == tl.float32 and mode in ("TF32", "TF32x3"):
            return ti.TensorHandle(_tf32_dot(a.data, b.data, d.data.dtype, mode == "TF32x3") + d.data,
                                   d.dtype.scalar)
        return dot(self, a, b, d, input_precision, *args, **kwargs)

    def create_fp_trunc(self, src, dst_type):
        if src.dtype.scalar != tl.float32 or dst_type.scalar != tl.bfloat16:
            return trunc(self, src, dst_type)
        return ti.TensorHandle(float32_to_bf16_bits(src.data), dst_type.scalar)

    builder_cls.create_dot = create_dot
    builder_cls.create_fp_trunc = create_fp_trunc
    fix_scalar_index(ti)
    _INSTALLED[0] = True
    return True
