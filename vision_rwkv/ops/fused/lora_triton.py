"""The RWKV-6 decay LoRA ``z = tanh(x @ w1) @ w2`` as one Triton kernel each way (:func:`vision_rwkv.ops.fused.
lora_mlp`).

cuBLAS takes three launches for it - the first product, a tanh pass over the rank-R hidden, the second product -
and in training five more for the backward (two products for the hidden's gradient and w2's, the tanh's derivative,
two for x's and w1's). Here one program owns BM rows: it forms the hidden in registers (fp32 accumulation), applies
the tanh and rounds it to the compute dtype (as the cuBLAS path stores it), writes it only when the backward needs
it, and multiplies it by w2 block by block. The backward kernel forms the hidden's gradient from z's and w2 in
registers, applies the tanh's derivative and writes it (the weight gradients' GEMM reads it) together with x's
gradient; w1's and w2's gradients stay two cuBLAS products (sums over every row). The products run on tensor cores
with tf32 operands for 16-bit inputs (exact for them) and in full fp32 for fp32 inputs.
"""
from __future__ import annotations

import torch
import triton.language as tl

from .._triton_utils import cdiv, new_empty, next_pow2
from ..triton_jit import jit

__all__ = ["lora_mlp_triton", "CONFIG"]

CONFIG = dict(block_m=64, block_k=64, block_n=64, warps=4)


@jit
def _tanh(x):
    """tanh in fp32, saturating for large |x| (2 sigmoid(2x) - 1) and accurate near 0 (its series below 1/16,
    where the sigmoid form would lose relative precision to cancellation)."""
    x2 = x * x
    return tl.where(tl.abs(x) < 0.0625, x * (1.0 - x2 / 3.0 * (1.0 - 0.4 * x2)), 2.0 * tl.sigmoid(2.0 * x) - 1.0)


@jit
def _tile(P, rows, cols, srow, scol, rmask, cmask):
    """The [rows, cols] tile of a 2-D tensor at P (strides srow, scol; 0 outside the masks), in fp32."""
    ptrs = P + rows.to(tl.int64)[:, None] * srow + cols.to(tl.int64)[None, :] * scol
    return tl.load(ptrs, mask=rmask[:, None] & cmask[None, :], other=0.0).to(tl.float32)


@jit
def _rows_times(A, B, rows, rmask, rr, rrmask, L, sar, sac, sbr, sbc, BM: tl.constexpr, BR: tl.constexpr,
                BL: tl.constexpr, PREC: tl.constexpr):
    """The [BM, BR] fp32 product A[rows, :L] @ B[:L, rr] (strides sar, sac / sbr, sbc), L in blocks of BL."""
    acc = tl.zeros([BM, BR], tl.float32)
    for l0 in range(0, L, BL):
        ll = l0 + tl.arange(0, BL)
        lmask = ll < L
        acc += tl.dot(_tile(A, rows, ll, sar, sac, rmask, lmask), _tile(B, ll, rr, sbr, sbc, lmask, rrmask),
                      input_precision=PREC)
    return acc


@jit
def _store_times(hf, B, OUT, rows, rmask, rr, rrmask, L, sbr, sbc, BL: tl.constexpr, PREC: tl.constexpr):
    """OUT[rows, :L] = hf @ B[rr, :L] (B's strides sbr, sbc; OUT row-major (M, L)), stored block by block."""
    for l0 in range(0, L, BL):
        ll = l0 + tl.arange(0, BL)
        lmask = ll < L
        out = tl.dot(hf, _tile(B, rr, ll, sbr, sbc, rrmask, lmask), input_precision=PREC)
        tl.store(OUT + rows.to(tl.int64)[:, None] * L + ll[None, :], out.to(OUT.dtype.element_ty),
                 mask=rmask[:, None] & lmask[None, :])


@jit
def _lora_mlp_fwd_kernel(X, W1, W2, Z, HOUT, M, K, R, N, sxm, sxk, BM: tl.constexpr, BK: tl.constexpr,
                         BR: tl.constexpr, BN: tl.constexpr, PREC: tl.constexpr, SAVE_H: tl.constexpr):
    rows = tl.program_id(0) * BM + tl.arange(0, BM)
    rmask = rows < M
    rr = tl.arange(0, BR)
    rrmask = rr < R
    acc = _rows_times(X, W1, rows, rmask, rr, rrmask, K, sxm, sxk, R, 1, BM, BR, BK, PREC)  # x @ w1
    h = _tanh(acc).to(Z.dtype.element_ty)  # (rounded as a stored hidden would be)
    if SAVE_H:
        tl.store(HOUT + rows.to(tl.int64)[:, None] * R + rr[None, :], h, mask=rmask[:, None] & rrmask[None, :])
    _store_times(h.to(tl.float32), W2, Z, rows, rmask, rr, rrmask, N, N, 1, BN, PREC)  # z = h @ w2


@jit
def _lora_mlp_bwd_kernel(GZ, H, W1, W2, GP, GX, M, K, R, N, sgm, sgn, BM: tl.constexpr, BK: tl.constexpr,
                         BR: tl.constexpr, BN: tl.constexpr, PREC: tl.constexpr):
    rows = tl.program_id(0) * BM + tl.arange(0, BM)
    rmask = rows < M
    rr = tl.arange(0, BR)
    rrmask = rr < R
    gh = _rows_times(GZ, W2, rows, rmask, rr, rrmask, N, sgm, sgn, 1, N, BM, BR, BN, PREC)  # d z @ w2^T
    h = _tile(H, rows, rr, R, 1, rmask, rrmask)
    gp = (gh * (1.0 - h * h)).to(GP.dtype.element_ty)  # the tanh's derivative from its output
    tl.store(GP + rows.to(tl.int64)[:, None] * R + rr[None, :], gp, mask=rmask[:, None] & rrmask[None, :])
    # d x = d hidden @ w1^T, from the stored d hidden (as the weight gradient's GEMM reads it)
    _store_times(gp.to(tl.float32), W1, GX, rows, rmask, rr, rrmask, K, 1, R, BK, PREC)


def _blocks(M: int, K: int, R: int, N: int, dtype: torch.dtype) -> dict:
    """Tile sizes (each >= 16: ``tl.dot``'s smallest) and warps; half the rows for fp32 inputs (their full-precision
    products keep more in registers: sm_90, 64 rows, rank 64: 255 registers and spills; bf16 158, none)."""
    bm = CONFIG["block_m"] if dtype != torch.float32 else CONFIG["block_m"] // 2
    return dict(BM=max(16, min(bm, next_pow2(M))), BK=max(16, min(CONFIG["block_k"], next_pow2(K))),
                BR=max(16, next_pow2(R)), BN=max(16, min(CONFIG["block_n"], next_pow2(N))),
                num_warps=CONFIG["warps"])


def _prec(x: torch.Tensor) -> str:
    return "ieee" if x.dtype == torch.float32 else "tf32"  # (16-bit values are exact in tf32)


def lora_mlp_fwd(x: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor, save_h: bool):
    """(z, the tanh'd hidden or None) of ``z = tanh(x @ w1) @ w2``: x (M, K) with any strides, w1 (K, R), w2 (R, N),
    all of x's dtype; z (M, N) and the hidden (M, R) in x's dtype. ``save_h``: also write the hidden (the
    backward's input)."""
    M, K = x.shape
    R, N = w2.shape
    w1, w2 = w1.contiguous(), w2.contiguous()
    z = new_empty((M, N), x.dtype, x.device)
    h = new_empty((M, R), x.dtype, x.device) if save_h else None
    meta = _blocks(M, K, R, N, x.dtype)
    _lora_mlp_fwd_kernel[(cdiv(M, meta["BM"]),)](x, w1, w2, z, z if h is None else h, M, K, R, N, *x.stride(),
                                                 PREC=_prec(x), SAVE_H=save_h, **meta)
    return z, h


def lora_mlp_bwd(gz: torch.Tensor, x: torch.Tensor, h: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor):
    """Gradients (x, w1, w2) of :func:`lora_mlp_fwd` from z's gradient ``gz`` (M, N) (any strides), the saved
    hidden ``h``: x's by the kernel (with the hidden's, which it writes), the weights' by two GEMMs."""
    M, K = x.shape
    R, N = w2.shape
    w1, w2, gz = w1.contiguous(), w2.contiguous(), gz.to(x.dtype)
    gp = new_empty((M, R), x.dtype, x.device)
    gx = new_empty((M, K), x.dtype, x.device)
    meta = _blocks(M, K, R, N, x.dtype)
    _lora_mlp_bwd_kernel[(cdiv(M, meta["BM"]),)](gz, h, w1, w2, gp, gx, M, K, R, N, *gz.stride(), PREC=_prec(x),
                                                 **meta)
    return gx, torch.mm(x.t(), gp), torch.mm(h.t(), gz)


@torch.library.custom_op("vision_rwkv::lora_mlp", mutates_args=())
def _lora_mlp_op(x: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    z, h = lora_mlp_fwd(x, w1, w2, True)
    return z, h


@_lora_mlp_op.register_fake
def _(x, w1, w2):
    return x.new_empty((x.shape[0], w2.shape[1])), x.new_empty((x.shape[0], w2.shape[0]))


@torch.library.custom_op("vision_rwkv::lora_mlp_bwd", mutates_args=())
def _lora_mlp_bwd_op(gz: torch.Tensor, x: torch.Tensor, h: torch.Tensor, w1: torch.Tensor,
                     w2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return lora_mlp_bwd(gz, x, h, w1, w2)


@_lora_mlp_bwd_op.register_fake
def _(gz, x, h, w1, w2):
    return x.new_empty(x.shape), w1.new_empty(w1.shape), w2.new_empty(w2.shape)


def _setup(ctx, inputs, output):
    x, w1, w2 = inputs
    ctx.save_for_backward(x, output[1], w1, w2)
    ctx.mark_non_differentiable(output[1])


def _backward(ctx, gz, _gh):
    x, h, w1, w2 = ctx.saved_tensors
    return _lora_mlp_bwd_op(gz, x, h, w1, w2)


torch.library.register_autograd("vision_rwkv::lora_mlp", _backward, setup_context=_setup)


class _LoraMlp(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w1, w2):
        z, h = lora_mlp_fwd(x, w1, w2, True)
        ctx.save_for_backward(x, h, w1, w2)
        return z

    @staticmethod
    def backward(ctx, gz):
        return lora_mlp_bwd(gz, *ctx.saved_tensors)


def lora_mlp_triton(x: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor) -> torch.Tensor:
    """``tanh(x @ w1) @ w2`` for 2-D x (M, K) and w1 (K, R), w2 (R, N) of x's dtype; differentiable in all three
    (the custom op while torch.compile traces)."""
    if torch.compiler.is_compiling():
        return _lora_mlp_op(x, w1, w2)[0]
    if torch.is_grad_enabled() and any(t.requires_grad for t in (x, w1, w2)):
        return _LoraMlp.apply(x, w1, w2)
    return lora_mlp_fwd(x, w1, w2, False)[0]
