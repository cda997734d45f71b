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

Launch settings: ``CONFIG`` (``VRWKV_TRITON_NORM_GEMM="bm=..,bn=..,warps=..,stages=..,group_m=.."``; bn 0 = 64 or 128
from N). Outputs come from :func:`vision_rwkv.ops._triton_utils.new_empty` (NaN-poisoned in debug mode).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._triton_utils import cdiv, config_from_env, new_empty, run_op
from .linear_triton import EPI_NONE, _epilogue_store, _grouped_tile, _precision, _weight_grad
from .triton import _gn_mul_bwd, _gn_mul_fwd

__all__ = ["group_norm_mul_linear_triton", "CONFIG"]

CONFIG = config_from_env(dict(bm=64, bn=0, warps=4, stages=2, group_m=8), "VRWKV_TRITON_NORM_GEMM")


@triton.jit
def _norm_linear_kernel(Y, G, GW, GB, WT, OUT, M, N, K, eps, swn, swk, SILU: tl.constexpr, EPI: tl.constexpr,
                      PREC: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, HS: tl.constexpr,
                      GROUP_M: tl.constexpr):
    pid_m, pid_n = _grouped_tile(M, N, BM, BN, GROUP_M)
    rm = pid_m.to(tl.int64) * BM + tl.arange(0, BM)
    rn = pid_n * BN + tl.arange(0, BN)
    rk = tl.arange(0, HS)
    m_ok = rm < M
    n_ok = rn < N
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
    _epilogue_store(acc, OUT, OUT, OUT, rm, rn, m_ok, n_ok, N, EPI, False)


def _fwd(y, g, groups, gn_weight, gn_bias, eps, silu, weight):
    c = y.shape[-1]
    rows, n = y.numel() // c, weight.shape[0]
    out = new_empty((rows, n), weight.dtype, y.device)
    cfg = CONFIG
    bn = cfg["bn"] or (128 if n % 128 == 0 else 64)
    grid = (cdiv(rows, cfg["bm"]) * cdiv(n, bn),)
    _norm_linear_kernel[grid](y, g, gn_weight, gn_bias, weight, out, rows, n, c, eps, weight.stride(0),
                            weight.stride(1), SILU=silu, EPI=EPI_NONE, PREC=_precision(weight.dtype), BM=cfg["bm"],
                            BN=bn, HS=c // groups, GROUP_M=cfg["group_m"], num_warps=cfg["warps"],
                            num_stages=cfg["stages"])
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
            weight.new_empty(weight.shape))


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
