"""Triton GEMM whose operand is the per-head GroupNorm of the WKV output times its gate: the VRWKV6 output projection.

``group_norm_mul_linear``: ``(GroupNorm(y) * act(g)) @ W^T`` with the GroupNorm over the heads of each token (the
RWKV-6 ``ln_x``) and act = SiLU or identity. Each K step of the GEMM is one head (BK = head size): the program
loads that head's (BM x head size) tile of y and of the gate, takes the mean and variance of every row in
registers, normalises, applies the affine parameters and the gate and feeds the tile to the tensor-core product. The
normalised, gated tensor (one plane written by the ``group_norm_mul`` pass and read back by the projection) is
never stored: 2 plane transfers fewer per VRWKV6 block.

Backward (training): the gated tensor is recomputed by the ``group_norm_mul`` kernel, then two cuBLAS GEMMs
(d gated, d W) and the ``group_norm_mul`` backward (d y, d g, d weight, d bias). The models use this op for inference
(``VRWKV_FUSED_MIX=1``, with the mixed-operand GEMMs of ``mix_linear_triton.py``).

Launch settings: ``CONFIG`` (``VRWKV_TRITON_NORM_GEMM="bm=..,bn=..,warps=..,stages=..,group_m=.."``; bm, bn, warps 0
= chosen from the dtype and N by ``_tiles``). Outputs come from :func:`vision_rwkv.ops._triton_utils.new_empty`
(NaN-poisoned in debug mode).
"""
from __future__ import annotations

from typing import Optional

import torch
import triton.language as tl

from .._triton_utils import cdiv, config_from_env, new_empty, run_op
from ..triton_jit import jit
from .group_norm_triton import _gn_mul_bwd, _gn_mul_fwd
from .linear_triton import (EPI_NONE, _epilogue_store, _gemm_tile, _like_weight, _precision, _residual_norm_store,
                            _weight_grad, residual_launch)

__all__ = ["group_norm_mul_linear_triton", "group_norm_mul_linear_residual_triton", "CONFIG"]

# with the residual epilogue a program holds whole rows: bn = next_pow2(N), bm = res_elems / bn (16..bm), res_warps
# warps (sm_90, bf16: 128-186 registers, no spill, for C 192 / 384; rows of 1024 spill: the public ops take <= 512)
# bm / bn / warps 0: chosen by _tiles from the operand dtype and N
CONFIG = config_from_env(dict(bm=0, bn=0, warps=0, stages=2, group_m=8, res_warps=8, res_elems=8192),
                         "VRWKV_TRITON_NORM_GEMM")


def _tiles(n: int, dtype: torch.dtype, cfg: dict) -> tuple[int, int, int]:
    """(bm, bn, warps) of the projection with N = n outputs; a nonzero ``cfg`` entry wins. Every column tile of a
    row block normalises its rows again, so wider tiles do less of it: 16-bit operands take 128 x 128 tiles (64 x 64
    when N <= 64) on 8 warps (sm_90 static counts, VRWKV6-T at 1024 px: 28 against 41 M warp instructions for the
    former 64 x 64 on 4 warps; 187 registers, where 128 x 256 spills); fp32 operands 64 x 64 on 8 warps (wider
    tiles, and 4 warps at C >= 384, spill)."""
    wide = dtype != torch.float32 and n > 64
    return cfg["bm"] or (128 if wide else 64), cfg["bn"] or (128 if wide else 64), cfg["warps"] or 8


@jit
def _norm_linear_kernel(Y, G, GW, GB, WT, OUT, RX, GAMMA, LNW, LNB, NOUT, M, N, K, eps, swn, swk, ln_eps,
                        SILU: tl.constexpr, EPI: tl.constexpr, RES: tl.constexpr, HAS_GAMMA: tl.constexpr,
                        PREC: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, HS: tl.constexpr,
                        GROUP_M: tl.constexpr):
    rm, rn, m_ok, n_ok = _gemm_tile(M, N, BM, BN, GROUP_M)
    rk = tl.arange(0, HS)
    pw = WT + rn[None, :] * swn + rk[:, None] * swk
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for k0 in range(0, K, HS):  # one head per step
        c = k0 + rk
        offs = rm[:, None] * K + c[None, :]
        y = tl.load(Y + offs, mask=m_ok[:, None], other=0.0).to(tl.float32)
        g = tl.load(G + offs, mask=m_ok[:, None], other=0.0).to(tl.float32)
        if SILU:
            g = g * tl.sigmoid(g)
        mean = tl.sum(y, axis=1) / HS
        d = y - mean[:, None]
        rstd = 1.0 / tl.sqrt(tl.sum(d * d, axis=1) / HS + eps)
        w = tl.load(GW + c).to(tl.float32)[None, :]
        b = tl.load(GB + c).to(tl.float32)[None, :]
        wt = tl.load(pw, mask=n_ok[None, :], other=0.0)
        acc = tl.dot(((d * rstd[:, None] * w + b) * g).to(wt.dtype), wt, acc, input_precision=PREC)
        pw += HS * swk
    if RES == 0:
        _epilogue_store(acc, OUT, OUT, OUT, rm, rn, m_ok, n_ok, N, EPI, False)
    else:  # whole rows (one column tile): the block's residual add + LayerNorm, OUT = the new residual
        _residual_norm_store(acc, RX, GAMMA, LNW, LNB, OUT, NOUT, rm, rn, m_ok, n_ok, N, ln_eps, RES == 2, HAS_GAMMA)


def _fwd(y, g, groups, gn_weight, gn_bias, eps, silu, weight, residual=None, inplace=False):
    """The projection (..., N); with ``residual`` = (x_res, gamma, ln_weight, ln_bias, ln_eps, post, n_dtype) the
    block's residual add + LayerNorm in the epilogue instead: (s, n), n None for post-norm."""
    c = y.shape[-1]
    rows, n = y.numel() // c, weight.shape[0]
    cfg = CONFIG
    if residual is None:
        out = new_empty((rows, n), weight.dtype, y.device)
        bm, bn, warps = _tiles(n, weight.dtype, cfg)
        res_args, res_meta, ln_eps = (out,) * 5, dict(RES=0, HAS_GAMMA=False), 0.0
    else:
        rl = residual_launch(residual, rows, n, cfg, y.device, inplace)
        out, res_args, res_meta, ln_eps, bm, bn, warps = rl.s, rl.args, rl.meta, rl.eps, rl.bm, rl.bn, rl.warps
    grid = (cdiv(rows, bm) * cdiv(n, bn),)
    _norm_linear_kernel[grid](y, g, gn_weight, gn_bias, weight, out, *res_args, rows, n, c, eps, weight.stride(0),
                              weight.stride(1), float(ln_eps), SILU=silu, EPI=EPI_NONE, **res_meta,
                              PREC=_precision(weight.dtype), BM=bm, BN=bn, HS=c // groups, GROUP_M=cfg["group_m"],
                              num_warps=warps, num_stages=cfg["stages"])
    if residual is not None:
        return rl.results(residual[0].shape)
    return out.view(*y.shape[:-1], n)


def _bwd(y, g, groups, gn_weight, gn_bias, eps, silu, weight, gout):
    """(d y, d g, stacked (d gn_weight, d gn_bias), d weight)."""
    n = weight.shape[0]
    gated = _gn_mul_fwd(y, g, groups, gn_weight, gn_bias, eps, silu, weight.dtype)  # recomputed
    ggated, gw = _weight_grad(gout.reshape(-1, n).to(weight.dtype), gated.reshape(-1, gated.shape[-1]), gated,
                              weight)
    gy, gg, gwb = _gn_mul_bwd(y, g, groups, gn_weight, gn_bias, eps, silu, ggated)
    return gy, gg, gwb, gw


@torch.library.custom_op("vision_rwkv::group_norm_mul_linear", mutates_args=())
def _op(y: torch.Tensor, g: torch.Tensor, groups: int, gn_weight: torch.Tensor, gn_bias: torch.Tensor, eps: float,
        silu: bool, weight: torch.Tensor) -> torch.Tensor:
    return _fwd(y, g, groups, gn_weight, gn_bias, eps, silu, weight)


@_op.register_fake
def _(y, g, groups, gn_weight, gn_bias, eps, silu, weight):
    return y.new_empty((*y.shape[:-1], weight.shape[0]), dtype=weight.dtype)


@torch.library.custom_op("vision_rwkv::group_norm_mul_linear_bwd", mutates_args=())
def _bwd_op(y: torch.Tensor, g: torch.Tensor, groups: int, gn_weight: torch.Tensor, gn_bias: torch.Tensor,
            eps: float, silu: bool, weight: torch.Tensor, gout: torch.Tensor
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return _bwd(y, g, groups, gn_weight, gn_bias, eps, silu, weight, gout)


@_bwd_op.register_fake
def _(y, g, groups, gn_weight, gn_bias, eps, silu, weight, gout):
    return (y.new_empty(y.shape), g.new_empty(g.shape), gn_weight.new_empty((2,) + tuple(gn_weight.shape)),
            _like_weight(weight))


def _input_grads(grads, gn_weight, gn_bias):
    """The gradients of (y, g, groups, gn_weight, gn_bias, eps, silu, weight) from ``_bwd``'s four."""
    gy, gg, gwb, gw = grads
    return gy, gg, None, gwb[0].to(gn_weight.dtype), gwb[1].to(gn_bias.dtype), None, None, gw


def _setup(ctx, inputs, output):
    y, g, groups, gn_weight, gn_bias, eps, silu, weight = inputs
    ctx.meta = (groups, eps, silu)
    ctx.save_for_backward(y, g, gn_weight, gn_bias, weight)


def _backward(ctx, gout):
    y, g, gn_weight, gn_bias, weight = ctx.saved_tensors
    groups, eps, silu = ctx.meta
    return _input_grads(_bwd_op(y, g, groups, gn_weight, gn_bias, eps, silu, weight, gout), gn_weight, gn_bias)


torch.library.register_autograd("vision_rwkv::group_norm_mul_linear", _backward, setup_context=_setup)


class _GroupNormMulLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, y, g, groups, gn_weight, gn_bias, eps, silu, weight):
        ctx.meta = (groups, eps, silu)
        ctx.save_for_backward(y, g, gn_weight, gn_bias, weight)
        return _fwd(y, g, groups, gn_weight, gn_bias, eps, silu, weight)

    @staticmethod
    def backward(ctx, gout):
        y, g, gn_weight, gn_bias, weight = ctx.saved_tensors
        groups, eps, silu = ctx.meta
        return _input_grads(_bwd(y, g, groups, gn_weight, gn_bias, eps, silu, weight, gout), gn_weight, gn_bias)


def group_norm_mul_linear_triton(y: torch.Tensor, g: torch.Tensor, num_groups: int, gn_weight: torch.Tensor,
                                 gn_bias: torch.Tensor, eps: float, gate_act, weight: torch.Tensor) -> torch.Tensor:
    """``(GroupNorm(y) * act(g)) @ weight^T`` (see the module docstring): y, g (..., C) with C / num_groups a power
    of two >= 16, weight (N, C) in the compute dtype (any strides) -> (..., N) in weight's dtype."""
    args = (y.contiguous(), g.contiguous(), int(num_groups), gn_weight.contiguous(), gn_bias.contiguous(),
            float(eps), gate_act == "silu", weight)
    return run_op(_op, _GroupNormMulLinear, _fwd, *args)


# ------------------------------------------------------------ with the block's residual add + LayerNorm (inference)
@torch.library.custom_op("vision_rwkv::group_norm_mul_linear_residual", mutates_args=())
def _res_op(y: torch.Tensor, g: torch.Tensor, groups: int, gn_weight: torch.Tensor, gn_bias: torch.Tensor, eps: float,
            silu: bool, weight: torch.Tensor, x_res: torch.Tensor, gamma: Optional[torch.Tensor],
            ln_weight: torch.Tensor, ln_bias: torch.Tensor, ln_eps: float, post: bool,
            n_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    s, n = _fwd(y, g, groups, gn_weight, gn_bias, eps, silu, weight,
                residual=(x_res, gamma, ln_weight, ln_bias, ln_eps, post, n_dtype))
    return s, (s.new_empty((0,)) if n is None else n)  # custom ops return tensors, not None


@_res_op.register_fake
def _(y, g, groups, gn_weight, gn_bias, eps, silu, weight, x_res, gamma, ln_weight, ln_bias, ln_eps, post, n_dtype):
    return x_res.new_empty(x_res.shape), x_res.new_empty((0,) if post else x_res.shape, dtype=n_dtype)


def group_norm_mul_linear_residual_triton(y, g, num_groups, gn_weight, gn_bias, eps, gate_act, weight, x_res, gamma,
                                          ln_weight, ln_bias, ln_eps, post, n_dtype, inplace: bool = False):
    """:func:`group_norm_mul_linear_triton` whose epilogue is the block's residual add + LayerNorm (``add_norm`` of
    x_res and the projection's output; whole rows per program) -> ``(s, n)`` (n None for post-norm). Inference only
    (the public wrapper composes the op and ``add_norm`` when a gradient is needed). ``inplace``: s written into
    x_res (eager)."""
    args = (y.contiguous(), g.contiguous(), int(num_groups), gn_weight.contiguous(), gn_bias.contiguous(),
            float(eps), gate_act == "silu", weight, x_res.contiguous(), None if gamma is None else gamma.contiguous(),
            ln_weight.contiguous(), ln_bias.contiguous(), float(ln_eps), bool(post), n_dtype)
    if torch.compiler.is_compiling():
        s, n = _res_op(*args)
        return s, (None if post else n)
    return _fwd(*args[:8], residual=args[8:], inplace=inplace)
