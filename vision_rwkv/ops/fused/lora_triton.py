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
def _lora_mlp_fwd_kernel(X, W1, W2, Z, HOUT, M, K, R, N, sxm, sxk, BM: tl.constexpr, BK: tl.constexpr,
                         BR: tl.constexpr, BN: tl.constexpr, PREC: tl.constexpr, SAVE_H: tl.constexpr):
    rows = tl.program_id(0) * BM + tl.arange(0, BM)
    rmask = rows < M
    rr = tl.arange(0, BR)
    rrmask = rr < R
    acc = tl.zeros([BM, BR], tl.float32)
    for k0 in range(0, K, BK):
        kk = k0 + tl.arange(0, BK)
        kmask = kk < K
        acc += tl.dot(_tile(X, rows, kk, sxm, sxk, rmask, kmask), _tile(W1, kk, rr, R, 1, kmask, rrmask),
                      input_precision=PREC)
    h = _tanh(acc).to(Z.dtype.element_ty)  # (rounded as a stored hidden would be)
    if SAVE_H:
        tl.store(HOUT + rows.to(tl.int64)[:, None] * R + rr[None, :], h, mask=rmask[:, None] & rrmask[None, :])
    hf = h.to(tl.float32)
    for n0 in range(0, N, BN):
        nn = n0 + tl.arange(0, BN)
        nmask = nn < N
        z = tl.dot(hf, _tile(W2, rr, nn, N, 1, rrmask, nmask), input_precision=PREC)
        tl.store(Z + rows.to(tl.int64)[:, None] * N + nn[None, :], z.to(Z.dtype.element_ty),
                 mask=rmask[:, None] & nmask[None, :])


@jit
def _lora_mlp_bwd_kernel(GZ, H, W1, W2, GP, GX, M, K, R, N, sgm, sgn, BM: tl.constexpr, BK: tl.constexpr,
                         BR: tl.constexpr, BN: tl.constexpr, PREC: tl.constexpr):
    rows = tl.program_id(0) * BM + tl.arange(0, BM)
    rmask = rows < M
    rr = tl.arange(0, BR)
    rrmask = rr < R
    gh = tl.zeros([BM, BR], tl.float32)
    for n0 in range(0, N, BN):
        nn = n0 + tl.arange(0, BN)
        nmask = nn < N
        gh += tl.dot(_tile(GZ, rows, nn, sgm, sgn, rmask, nmask), _tile(W2, nn, rr, 1, N, nmask, rrmask),
                     input_precision=PREC)  # (w2 read transposed: [BN, BR])
    h = _tile(H, rows, rr, R, 1, rmask, rrmask)
    gp = (gh * (1.0 - h * h)).to(GP.dtype.element_ty)  # the tanh's derivative from its output
    tl.store(GP + rows.to(tl.int64)[:, None] * R + rr[None, :], gp, mask=rmask[:, None] & rrmask[None, :])
    gpf = gp.to(tl.float32)  # (x's gradient from the stored value, as the weight gradient's GEMM reads it)
    for k0 in range(0, K, BK):
        kk = k0 + tl.arange(0, BK)
        kmask = kk < K
        gx = tl.dot(gpf, _tile(W1, rr, kk, 1, R, rrmask, kmask), input_precision=PREC)  # (w1 transposed: [BR, BK])
        tl.store(GX + rows.to(tl.int64)[:, None] * K + kk[None, :], gx.to(GX.dtype.element_ty),
                 mask=rmask[:, None] & kmask[None, :])


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
