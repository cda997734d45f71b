"""Triton kernel for the channel mix's key-value MLP in one pass: ``relu(mix(x) @ Wk^T)^2 @ Wv^T``.

``mix_mlp``: each program owns BM tokens and every output channel. It forms the Q-Shift interpolation of its x tile
once (as ``mix_linear_triton.py`` does), then walks the hidden width in BH-wide chunks: the key product of the
chunk, relu^2 in registers (rounded to the compute dtype, as the stored hidden would be), and its product with the
matching value-weight rows accumulated into the (BM x C) output. The 4C-wide hidden - the largest activation of a
block, written once and read once by the two-GEMM path - never leaves the SM: 8 plane transfers (of C channels)
fewer per block, no extra FLOPs. The price is that every program reads both weight matrices (from L2), so the kernel
is for narrow models: C <= ``CONFIG["max_c"]`` (the public op falls back to the two GEMMs above it), and whether the
saved DRAM traffic outweighs the extra L2 traffic is for a GPU to tell (own opt-in, ``VRWKV_FUSED_MLP=1``).

Backward (training): recompute the interpolation and the hidden (``token_shift_mix`` + ``linear_relu_square``
kernels), then cuBLAS GEMMs, the relu^2 derivative from the hidden, and the ``token_shift_mix`` backward. The models
use this op for inference (``VRWKV_FUSED_MIX=1 VRWKV_FUSED_MLP=1``) and, with ``VRWKV_FUSED_MIX_TRAIN=1
VRWKV_FUSED_MLP=1``, in training (the 4C hidden is then never stored for the backward).

Launch settings: ``CONFIG`` (``VRWKV_TRITON_MLP="bm=..,bh=..,warps=..,stages=..,max_c=.."``; bm 0 = 64 for C <= 256,
else 32). Outputs come from :func:`vision_rwkv.ops._triton_utils.new_empty` (NaN-poisoned in debug mode).
"""
from __future__ import annotations

import torch
import triton.language as tl

from .._triton_utils import cdiv, config_from_env, new_empty, next_pow2, run_op
from ..triton_jit import jit
from .elementwise_triton import _elem_grid, _relu_square_bwd_from_out_kernel
from .linear_triton import EPI_RELU_SQUARE, _launch, _precision
from .shift_triton import _neighbour, _quarters, _tsm_bwd, _tsm_fwd

__all__ = ["mix_mlp_triton", "CONFIG"]

# sm_90, bf16, C 192: bm 64 / bh 32 -> 218 registers, 96 KB shared memory, no spill (bh 64: 253 registers, 160 KB;
# bm 128: spills). Each program reads both weight matrices from L2 (C x 8C x 2 bytes: 590 KB at C 192), so a smaller
# bm trades registers for L2 traffic.
CONFIG = config_from_env(dict(bm=0, bh=32, warps=8, stages=2, max_c=256), "VRWKV_TRITON_MLP")


@jit
def _mix_mlp_kernel(X, A, WK, WV, OUT, M, C, HID, NTOK, H, W, HS, Q1, Q2, Q3, skn, skk, svn, svk,
                    ONE_MINUS: tl.constexpr, PREC: tl.constexpr, BM: tl.constexpr, BC: tl.constexpr,
                    BH: tl.constexpr):
    rm = tl.program_id(0).to(tl.int64) * BM + tl.arange(0, BM)
    c = tl.arange(0, BC)
    m_ok = rm < M
    c_ok = c < C
    cc = c % HS
    q = ((cc >= Q1).to(tl.int32) + (cc >= Q2).to(tl.int32) + (cc >= Q3).to(tl.int32))[None, :]
    delta, valid = _neighbour((rm % NTOK)[:, None], q, H, W)
    ok = m_ok[:, None] & c_ok[None, :]
    valid = valid & ok
    offs = rm[:, None] * C + c[None, :]
    x = tl.load(X + offs, mask=ok, other=0.0).to(tl.float32)
    xx = tl.load(X + offs + tl.where(valid, delta, 0).to(tl.int64) * C, mask=valid, other=0.0).to(tl.float32) - x
    coef = tl.load(A + c, mask=c_ok, other=0.0).to(tl.float32)[None, :]
    if ONE_MINUS:
        coef = 1.0 - coef
    amix = (x + xx * coef).to(WK.dtype.element_ty)
    acc = tl.zeros((BM, BC), dtype=tl.float32)
    hh = tl.arange(0, BH)
    pk = WK + hh[None, :] * skn + c[:, None] * skk  # (BC x BH) slice of Wk^T
    pv = WV + c[None, :] * svn + hh[:, None] * svk  # (BH x BC) slice of Wv^T
    for h0 in range(0, HID, BH):
        h_ok = (h0 + hh) < HID
        wk = tl.load(pk, mask=c_ok[:, None] & h_ok[None, :], other=0.0)
        pos = tl.maximum(tl.dot(amix, wk, input_precision=PREC), 0.0)
        wv = tl.load(pv, mask=h_ok[:, None] & c_ok[None, :], other=0.0)
        acc = tl.dot((pos * pos).to(wv.dtype), wv, acc, input_precision=PREC)
        pk += BH * skn
        pv += BH * svk
    tl.store(OUT + offs, acc.to(OUT.dtype.element_ty), mask=ok)


def _fwd(x, H, W, head_size, a, wk, wv, one_minus):
    B, T, C = x.shape
    rows = B * T
    out = new_empty((rows, C), wk.dtype, x.device)
    cfg = CONFIG
    bc = next_pow2(max(C, 16))
    bm = cfg["bm"] or (64 if bc <= 256 else 32)
    hs, q1, q2, q3 = _quarters(C, head_size)
    _mix_mlp_kernel[(cdiv(rows, bm),)](
        x, a, wk, wv, out, rows, C, wk.shape[0], T, H, W, hs, q1, q2, q3, wk.stride(0), wk.stride(1),
        wv.stride(0), wv.stride(1), ONE_MINUS=one_minus, PREC=_precision(wk.dtype), BM=bm, BC=bc, BH=cfg["bh"],
        num_warps=cfg["warps"], num_stages=cfg["stages"])
    return out.view(B, T, C)


def _bwd(x, H, W, head_size, a, wk, wv, one_minus, g):
    """(d x, d a, d wk, d wv): recompute the interpolation and the hidden, then GEMMs and the shift backward."""
    a1 = a.reshape(1, -1)
    mix = _tsm_fwd(x, H, W, head_size, a1, None, wk.dtype, one_minus)[0].reshape(-1, x.shape[-1])
    hidden = new_empty((mix.shape[0], wk.shape[0]), wk.dtype, x.device)
    _launch(mix, wk, None, hidden, None, EPI_RELU_SQUARE)
    g2 = g.reshape(-1, wv.shape[0]).to(wv.dtype)
    gwv = g2.t() @ hidden
    ghidden = g2 @ wv
    gpre = new_empty(ghidden.shape, wk.dtype, x.device)
    grid, meta = _elem_grid(gpre.numel())
    _relu_square_bwd_from_out_kernel[grid](hidden, ghidden, gpre, gpre.numel(), **meta)
    gwk = gpre.t() @ mix
    gx, ga, _ = _tsm_bwd(x, H, W, head_size, a1, None, (gpre @ wk).view((1,) + tuple(x.shape)), one_minus)
    return gx, ga.view(a.shape), gwk, gwv


@torch.library.custom_op("vision_rwkv::mix_mlp", mutates_args=())
def _op(x: torch.Tensor, H: int, W: int, head_size: int, a: torch.Tensor, wk: torch.Tensor, wv: torch.Tensor,
        one_minus: bool) -> torch.Tensor:
    return _fwd(x, H, W, head_size, a, wk, wv, one_minus)


@_op.register_fake
def _(x, H, W, head_size, a, wk, wv, one_minus):
    return x.new_empty(x.shape, dtype=wk.dtype)


@torch.library.custom_op("vision_rwkv::mix_mlp_bwd", mutates_args=())
def _bwd_op(x: torch.Tensor, H: int, W: int, head_size: int, a: torch.Tensor, wk: torch.Tensor, wv: torch.Tensor,
            one_minus: bool, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return _bwd(x, H, W, head_size, a, wk, wv, one_minus, g)


@_bwd_op.register_fake
def _(x, H, W, head_size, a, wk, wv, one_minus, g):
    return x.new_empty(x.shape), a.new_empty(a.shape), wk.new_empty(wk.shape), wv.new_empty(wv.shape)


def _input_grads(grads):
    """The gradients of (x, H, W, head_size, a, wk, wv, one_minus) from ``_bwd``'s four."""
    gx, ga, gwk, gwv = grads
    return gx, None, None, None, ga, gwk, gwv, None


def _setup(ctx, inputs, output):
    x, H, W, head_size, a, wk, wv, one_minus = inputs
    ctx.meta = (H, W, head_size, one_minus)
    ctx.save_for_backward(x, a, wk, wv)


def _backward(ctx, g):
    x, a, wk, wv = ctx.saved_tensors
    H, W, head_size, one_minus = ctx.meta
    return _input_grads(_bwd_op(x, H, W, head_size, a, wk, wv, one_minus, g))


torch.library.register_autograd("vision_rwkv::mix_mlp", _backward, setup_context=_setup)


class _MixMLP(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, H, W, head_size, a, wk, wv, one_minus):
        ctx.meta = (H, W, head_size, one_minus)
        ctx.save_for_backward(x, a, wk, wv)
        return _fwd(x, H, W, head_size, a, wk, wv, one_minus)

    @staticmethod
    def backward(ctx, g):
        x, a, wk, wv = ctx.saved_tensors
        H, W, head_size, one_minus = ctx.meta
        return _input_grads(_bwd(x, H, W, head_size, a, wk, wv, one_minus, g))


def mix_mlp_triton(x: torch.Tensor, grid_size: tuple[int, int], a: torch.Tensor, wk: torch.Tensor, wv: torch.Tensor,
                   head_size=None, one_minus: bool = False) -> torch.Tensor:
    """``relu(mix @ wk^T)^2 @ wv^T`` with ``mix = x + (q_shift(x) - x) * a`` (``1 - a`` with ``one_minus``): x
    (B, T, C) with C <= ``CONFIG["max_c"]``, a (C,), wk (HID, C), wv (C, HID) in the compute dtype (any strides) ->
    (B, T, C) in wk's dtype."""
    args = (x.contiguous(), int(grid_size[0]), int(grid_size[1]), int(head_size or 0), a.contiguous(), wk, wv,
            bool(one_minus))
    return run_op(_op, _MixMLP, _fwd, *args)
