"""Triton kernels for ``group_norm_mul``: per-token GroupNorm (affine) times a gate ``act(g)`` (act = identity or
SiLU: the VRWKV6 ``ln_x(y) * silu(gate)``), several rows per program; backward with per-program partials of
d weight / d bias. As torch custom ops.
"""
from __future__ import annotations

from typing import Optional

import torch
import triton.language as tl

from .._triton_utils import cdiv, new_empty, next_pow2, run_op, split_param_grads
from ..triton_jit import jit
from ._config import CONFIG, row_programs

__all__ = ["group_norm_mul_triton"]


@jit
def _gn_load(Y, G, rows, NROWS, C, GS, BR: tl.constexpr, BG: tl.constexpr, BS: tl.constexpr):
    gi = tl.arange(0, BG)
    si = tl.arange(0, BS)
    ch = gi[:, None] * GS + si[None, :]  # [BG, BS]
    cmask = (si < GS)[None, :] & (ch < C)
    mask = (rows < NROWS)[:, None, None] & cmask[None, :, :]
    offs = rows.to(tl.int64)[:, None, None] * C + ch[None, :, :]
    y = tl.load(Y + offs, mask=mask, other=0.0).to(tl.float32)
    g = tl.load(G + offs, mask=mask, other=0.0).to(tl.float32)
    return ch, cmask, mask, offs, y, g


@jit
def _gn_stats(y, mask, GS, eps):
    mean = tl.sum(y, axis=2) / GS
    d = tl.where(mask, y - mean[:, :, None], 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(d * d, axis=2) / GS + eps)
    return d * rstd[:, :, None], rstd


@jit
def _gn_mul_fwd_kernel(Y, G, WT, BS_, OUT, NROWS, C, GS, eps, SILU: tl.constexpr, BR: tl.constexpr,
                       BG: tl.constexpr, BS: tl.constexpr):
    rows = tl.program_id(0) * BR + tl.arange(0, BR)
    ch, cmask, mask, offs, y, g = _gn_load(Y, G, rows, NROWS, C, GS, BR, BG, BS)
    if SILU:
        g = g * tl.sigmoid(g)
    yhat, rstd = _gn_stats(y, mask, GS, eps)
    w = tl.load(WT + ch, mask=cmask, other=0.0).to(tl.float32)[None, :, :]
    b = tl.load(BS_ + ch, mask=cmask, other=0.0).to(tl.float32)[None, :, :]
    tl.store(OUT + offs, ((yhat * w + b) * g).to(OUT.dtype.element_ty), mask=mask)


@jit
def _gn_mul_bwd_kernel(Y, G, WT, BS_, GO, GY, GG, GWP, GBP, NROWS, C, GS, eps, iters, SILU: tl.constexpr,
                       BR: tl.constexpr, BG: tl.constexpr, BS: tl.constexpr):
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    gi = tl.arange(0, BG)
    si = tl.arange(0, BS)
    ch = gi[:, None] * GS + si[None, :]
    cmask = (si < GS)[None, :] & (ch < C)
    w = tl.load(WT + ch, mask=cmask, other=0.0).to(tl.float32)[None, :, :]
    b = tl.load(BS_ + ch, mask=cmask, other=0.0).to(tl.float32)[None, :, :]
    gw = tl.zeros([BG, BS], tl.float32)
    gb = tl.zeros([BG, BS], tl.float32)
    for it in range(iters):
        rows = (it * nprog + pid) * BR + tl.arange(0, BR)
        ch, cmask, mask, offs, y, g = _gn_load(Y, G, rows, NROWS, C, GS, BR, BG, BS)
        yhat, rstd = _gn_stats(y, mask, GS, eps)
        go = tl.load(GO + offs, mask=mask, other=0.0).to(tl.float32)
        ggate = go * (yhat * w + b)
        if SILU:
            sg = tl.sigmoid(g)
            ggate = ggate * sg * (1.0 + g * (1.0 - sg))
            g = g * sg
        tl.store(GG + offs, ggate.to(GG.dtype.element_ty), mask=mask)
        gog = go * g
        gw += tl.sum(gog * yhat, axis=0)
        gb += tl.sum(gog, axis=0)
        dyh = tl.where(mask, gog * w, 0.0)
        m1 = tl.sum(dyh, axis=2) / GS
        m2 = tl.sum(dyh * yhat, axis=2) / GS
        gy = rstd[:, :, None] * (dyh - m1[:, :, None] - yhat * m2[:, :, None])
        tl.store(GY + offs, gy.to(GY.dtype.element_ty), mask=mask)
    tl.store(GWP + pid.to(tl.int64) * C + ch, gw, mask=cmask)
    tl.store(GBP + pid.to(tl.int64) * C + ch, gb, mask=cmask)


def _gn_meta(nrows: int, c: int, groups: int):
    gs = c // groups
    bg, bs = next_pow2(groups), next_pow2(gs)
    br = max(1, min(next_pow2(nrows), CONFIG["gn_elems"] // (bg * bs)))
    return gs, dict(BR=br, BG=bg, BS=bs, num_warps=4)


def _gn_mul_fwd(y, g, groups, weight, bias, eps, silu, out_dtype):
    c = y.shape[-1]
    nrows = y.numel() // c
    gs, meta = _gn_meta(nrows, c, groups)
    out = new_empty(y.shape, out_dtype, y.device)
    _gn_mul_fwd_kernel[(cdiv(nrows, meta["BR"]),)](y, g, weight, bias, out, nrows, c, gs, eps, SILU=silu,
                                                        **meta)
    return out


@torch.library.custom_op("vision_rwkv::group_norm_mul", mutates_args=())
def _gn_mul_op(y: torch.Tensor, g: torch.Tensor, groups: int, weight: torch.Tensor, bias: torch.Tensor,
               eps: float, silu: bool, out_dtype: torch.dtype) -> torch.Tensor:
    return _gn_mul_fwd(y, g, groups, weight, bias, eps, silu, out_dtype)


@_gn_mul_op.register_fake
def _(y, g, groups, weight, bias, eps, silu, out_dtype):
    return y.new_empty(y.shape, dtype=out_dtype)


def _gn_mul_bwd(y, g, groups, weight, bias, eps, silu, gout, gg_out=None):
    """(d y, d g, d weight and d bias stacked) of the GroupNorm * gate; ``gg_out``: a contiguous buffer of g's shape
    and dtype to write d g into (e.g. a slice of one stacked gradient)."""
    gout = gout.contiguous()
    c = y.shape[-1]
    nrows = y.numel() // c
    gs, meta = _gn_meta(nrows, c, groups)
    nblocks = cdiv(nrows, meta["BR"])
    nprog, iters = row_programs(nblocks)
    gy = new_empty(y.shape, y.dtype, y.device)
    gg = new_empty(g.shape, g.dtype, g.device) if gg_out is None else gg_out
    parts = new_empty((2, nprog, c), torch.float32, y.device)  # per-program partial sums of d weight, d bias
    _gn_mul_bwd_kernel[(nprog,)](y, g, weight, bias, gout, gy, gg, parts[0], parts[1], nrows, c, gs, eps, iters,
                                 SILU=silu, **meta)
    return gy, gg, parts.sum(1)  # d weight and d bias stacked: one reduction launch


@torch.library.custom_op("vision_rwkv::group_norm_mul_bwd", mutates_args=())
def _gn_mul_bwd_op(y: torch.Tensor, g: torch.Tensor, groups: int, weight: torch.Tensor, bias: torch.Tensor,
                   eps: float, silu: bool, gout: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _gn_mul_bwd(y, g, groups, weight, bias, eps, silu, gout)


@_gn_mul_bwd_op.register_fake
def _(y, g, groups, weight, bias, eps, silu, gout):
    return y.new_empty(y.shape), g.new_empty(g.shape), weight.new_empty((2,) + tuple(weight.shape),
                                                                        dtype=torch.float32)


def _gn_setup(ctx, inputs, output):
    y, g, groups, weight, bias, eps, silu, _ = inputs
    ctx.meta = (groups, eps, silu)
    ctx.save_for_backward(y, g, weight, bias)


def _gn_backward(ctx, gout):
    y, g, weight, bias = ctx.saved_tensors
    groups, eps, silu = ctx.meta
    gy, gg, gwb = _gn_mul_bwd_op(y, g, groups, weight, bias, eps, silu, gout)
    return (gy, gg, None, *split_param_grads(gwb, weight, bias), None, None, None)


torch.library.register_autograd("vision_rwkv::group_norm_mul", _gn_backward, setup_context=_gn_setup)


class _GroupNormMul(torch.autograd.Function):
    @staticmethod
    def forward(ctx, y, g, groups, weight, bias, eps, silu, out_dtype):
        ctx.meta = (groups, eps, silu)
        ctx.save_for_backward(y, g, weight, bias)
        return _gn_mul_fwd(y, g, groups, weight, bias, eps, silu, out_dtype)

    @staticmethod
    def backward(ctx, gout):
        y, g, weight, bias = ctx.saved_tensors
        groups, eps, silu = ctx.meta
        gy, gg, gwb = _gn_mul_bwd(y, g, groups, weight, bias, eps, silu, gout)
        return (gy, gg, None, *split_param_grads(gwb, weight, bias), None, None, None)


def group_norm_mul_triton(y: torch.Tensor, g: torch.Tensor, num_groups: int, weight: torch.Tensor,
                          bias: torch.Tensor, eps: float = 1e-5, gate_act: Optional[str] = None,
                          out_dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """Fused per-token ``GroupNorm(num_groups)(y) * act(g)`` over the last dim (act: None or 'silu'); result in
    ``out_dtype``."""
    args = (y.contiguous(), g.contiguous(), int(num_groups), weight.contiguous(), bias.contiguous(), float(eps),
            gate_act == "silu", out_dtype or torch.promote_types(y.dtype, g.dtype))
    return run_op(_gn_mul_op, _GroupNormMul, _gn_mul_fwd, *args)
