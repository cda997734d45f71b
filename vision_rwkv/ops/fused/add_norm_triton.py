"""Triton kernels for ``add_norm``: a block's residual + LayerNorm per token, one read of each input, forward and
backward, as torch custom ops. Post-norm ``s = x + gamma * LN(y)``; pre-norm ``s = x + gamma * y`` and ``n = LN(s)``
(n in the compute dtype: the next token mix reads it); an optional per-sample factor of the branch (drop path's
mask / keep_prob) is read per row.
"""
from __future__ import annotations

from typing import Optional

import torch
import triton.language as tl

from .._triton_utils import cdiv, new_empty, next_pow2, run_op, split_param_grads
from ..triton_jit import jit
from ._config import CONFIG, row_programs

__all__ = ["add_norm_triton"]


@jit
def _ln_rows(v, mask, C, eps):
    mean = tl.sum(v, axis=1) / C
    d = tl.where(mask, v - mean[:, None], 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(d * d, axis=1) / C + eps)
    return d * rstd[:, None], rstd


@jit
def _norm_params(LW, LB, GAM, cols, cmask, HAS_GAMMA: tl.constexpr, BC: tl.constexpr):
    """The LayerNorm's weight and bias and the layer scale gamma (ones without GAM) at channels ``cols``, each
    (1, BC) fp32."""
    w = tl.load(LW + cols, mask=cmask, other=0.0).to(tl.float32)[None, :]
    b = tl.load(LB + cols, mask=cmask, other=0.0).to(tl.float32)[None, :]
    if HAS_GAMMA:
        g = tl.load(GAM + cols, mask=cmask, other=0.0).to(tl.float32)[None, :]
    else:
        g = tl.full([1, BC], 1.0, tl.float32)
    return w, b, g


@jit
def _row_scale(KEEP, rows, R, RPS, HAS_KEEP: tl.constexpr):
    """Each row's sample scale (drop path's mask / keep_prob of sample ``row // RPS``) as (BR, 1); ones without
    KEEP (a constant the compiler folds away). One return of one type: the GPU compiler rejects returns of
    different shapes, which the interpreter accepts."""
    if HAS_KEEP:
        scale = tl.load(KEEP + rows // RPS, mask=rows < R, other=0.0).to(tl.float32)
    else:
        scale = tl.full(rows.shape, 1.0, tl.float32)
    return scale[:, None]


@jit
def _add_norm_fwd_kernel(X, Y, GATE, GAM, LW, LB, KEEP, S, NOUT, R, C, RPS, eps, POST: tl.constexpr,
                         HAS_GATE: tl.constexpr, HAS_GAMMA: tl.constexpr, HAS_KEEP: tl.constexpr, BR: tl.constexpr,
                         BC: tl.constexpr):
    rows = tl.program_id(0) * BR + tl.arange(0, BR)
    cols = tl.arange(0, BC)
    cmask = cols < C
    mask = (rows < R)[:, None] & cmask[None, :]
    offs = rows.to(tl.int64)[:, None] * C + cols[None, :]
    x = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
    y = tl.load(Y + offs, mask=mask, other=0.0).to(tl.float32)
    if HAS_GATE:  # the branch is sigmoid(gate) * y (the channel mix's receptance gate, never stored on its own)
        y = tl.sigmoid(tl.load(GATE + offs, mask=mask, other=0.0).to(tl.float32)) * y
    w, b, g = _norm_params(LW, LB, GAM, cols, cmask, HAS_GAMMA, BC)
    g = g * _row_scale(KEEP, rows, R, RPS, HAS_KEEP)  # the factor of the branch
    if POST:
        yhat, rstd = _ln_rows(y, mask, C, eps)
        tl.store(S + offs, (x + g * (yhat * w + b)).to(S.dtype.element_ty), mask=mask)
    else:
        s = x + g * y
        tl.store(S + offs, s.to(S.dtype.element_ty), mask=mask)
        shat, rstd = _ln_rows(s, mask, C, eps)
        tl.store(NOUT + offs, (shat * w + b).to(NOUT.dtype.element_ty), mask=mask)


@jit
def _add_norm_bwd_kernel(Y, GATE, SV, GAM, LW, LB, KEEP, GS, GN, GX, GY, GG, GGP, GWP, GBP, R, C, RPS, eps, iters,
                         POST: tl.constexpr, HAS_GATE: tl.constexpr, HAS_GAMMA: tl.constexpr, HAS_KEEP: tl.constexpr,
                         HAS_GS: tl.constexpr, HAS_GN: tl.constexpr, BR: tl.constexpr, BC: tl.constexpr):
    # (Y is read only where the gradients need the branch: post-norm, or the layer scale's gradient - or HAS_GATE: the
    # branch was sigmoid(GATE) * Y, and GY, GG get the gradients of Y and GATE)
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    cols = tl.arange(0, BC)
    cmask = cols < C
    w, b, g = _norm_params(LW, LB, GAM, cols, cmask, HAS_GAMMA, BC)
    acc_g = tl.zeros([BC], tl.float32)
    acc_w = tl.zeros([BC], tl.float32)
    acc_b = tl.zeros([BC], tl.float32)
    for it in range(iters):
        rows = (it * nprog + pid) * BR + tl.arange(0, BR)
        mask = (rows < R)[:, None] & cmask[None, :]
        offs = rows.to(tl.int64)[:, None] * C + cols[None, :]
        if HAS_GATE:
            v = tl.load(Y + offs, mask=mask, other=0.0).to(tl.float32)
            sg = tl.sigmoid(tl.load(GATE + offs, mask=mask, other=0.0).to(tl.float32))
            y = sg * v
        elif POST or HAS_GAMMA:
            y = tl.load(Y + offs, mask=mask, other=0.0).to(tl.float32)
        else:
            y = tl.zeros([BR, BC], tl.float32)
        kk = _row_scale(KEEP, rows, R, RPS, HAS_KEEP)
        gk = g * kk  # the factor of the branch
        if HAS_GS:
            gs = tl.load(GS + offs, mask=mask, other=0.0).to(tl.float32)
        else:
            gs = tl.zeros([BR, BC], tl.float32)
        if POST:
            # s = x + k * g * (yhat * w + b), k = the row's sample scale (1 without drop path)
            yhat, rstd = _ln_rows(y, mask, C, eps)
            gln = gs * gk
            acc_g += tl.sum(gs * kk * (yhat * w + b), axis=0)
            acc_w += tl.sum(gln * yhat, axis=0)
            acc_b += tl.sum(gln, axis=0)
            dyh = tl.where(mask, gln * w, 0.0)
            m1 = tl.sum(dyh, axis=1) / C
            m2 = tl.sum(dyh * yhat, axis=1) / C
            gy = rstd[:, None] * (dyh - m1[:, None] - yhat * m2[:, None])
            gx = gs
        else:
            # s = x + k * g * y, n = LN(s): the gradient reaching s is gs + LN'(gn)
            s = tl.load(SV + offs, mask=mask, other=0.0).to(tl.float32)
            shat, rstd = _ln_rows(s, mask, C, eps)
            gtot = gs
            if HAS_GN:
                gn = tl.load(GN + offs, mask=mask, other=0.0).to(tl.float32)
                acc_w += tl.sum(gn * shat, axis=0)
                acc_b += tl.sum(gn, axis=0)
                dsh = tl.where(mask, gn * w, 0.0)
                m1 = tl.sum(dsh, axis=1) / C
                m2 = tl.sum(dsh * shat, axis=1) / C
                gtot = gtot + rstd[:, None] * (dsh - m1[:, None] - shat * m2[:, None])
            acc_g += tl.sum(gtot * kk * y, axis=0)
            gy = gtot * gk
            gx = gtot
        if HAS_GATE:  # d gate = d branch * y * s (1 - s), d y = d branch * s
            tl.store(GG + offs, (gy * v * sg * (1.0 - sg)).to(GG.dtype.element_ty), mask=mask)
            gy = gy * sg
        tl.store(GX + offs, gx.to(GX.dtype.element_ty), mask=mask)
        tl.store(GY + offs, gy.to(GY.dtype.element_ty), mask=mask)
    base = pid.to(tl.int64) * C + cols
    tl.store(GGP + base, acc_g, mask=cmask)
    tl.store(GWP + base, acc_w, mask=cmask)
    tl.store(GBP + base, acc_b, mask=cmask)


def _an_meta(rows: int, c: int):
    bc = next_pow2(c)
    br = max(1, min(next_pow2(rows), CONFIG["gn_elems"] // bc))
    return dict(BR=br, BC=bc, num_warps=4 if bc <= 512 else 8)


def _rows_per_sample(x, sample_scale):
    """Rows (tokens) of x per entry of sample_scale (1 without one: the argument is unused then)."""
    return x.numel() // x.shape[-1] // x.shape[0] if sample_scale is not None and x.numel() else 1


def _add_norm_fwd(x, y, gamma, weight, bias, eps, post, out_dtype, sample_scale=None, inplace=False, gate=None):
    """(s, n) of ``add_norm`` (contiguous operands); ``gate`` (y's shape, contiguous): the branch is
    ``sigmoid(gate) * y``, formed in the kernel (inference: the gated product is never written)."""
    c = x.shape[-1]
    rows = x.numel() // c
    meta = _an_meta(rows, c)
    s = x if inplace else new_empty(x.shape, x.dtype, x.device)  # (each program reads its rows before writing them)
    n = x.new_empty((0,)) if post else new_empty(x.shape, out_dtype, x.device)
    _add_norm_fwd_kernel[(cdiv(rows, meta["BR"]),)](x, y, y if gate is None else gate,
                                                    weight if gamma is None else gamma, weight, bias,
                                                    weight if sample_scale is None else sample_scale, s,
                                                    s if post else n, rows, c, _rows_per_sample(x, sample_scale),
                                                    eps, POST=post, HAS_GATE=gate is not None,
                                                    HAS_GAMMA=gamma is not None, HAS_KEEP=sample_scale is not None,
                                                    **meta)
    return s, n


@torch.library.custom_op("vision_rwkv::add_norm", mutates_args=())
def _add_norm_op(x: torch.Tensor, y: torch.Tensor, gamma: Optional[torch.Tensor], weight: torch.Tensor,
                 bias: torch.Tensor, eps: float, post: bool, out_dtype: torch.dtype,
                 sample_scale: Optional[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    return _add_norm_fwd(x, y, gamma, weight, bias, eps, post, out_dtype, sample_scale)


@_add_norm_op.register_fake
def _(x, y, gamma, weight, bias, eps, post, out_dtype, sample_scale):
    return x.new_empty(x.shape), (x.new_empty((0,)) if post else x.new_empty(x.shape, dtype=out_dtype))


def _add_norm_needs_y(post: bool, gamma) -> bool:
    """Whether add_norm's backward reads the branch y: post-norm (LN(y)) or a layer scale (d gamma = sum(d s * y));
    a pre-norm add without one does not save it (one activation plane less per residual add in training)."""
    return post or gamma is not None


def _add_norm_bwd(y, s, gamma, weight, bias, eps, post, gs, gn, x_dtype, sample_scale=None, y_dtype=None,
                  gate=None):
    """Gradients (x, y, stacked param sums). ``y`` may be None when :func:`_add_norm_needs_y` is False (then
    ``y_dtype`` gives d y's dtype). ``gate`` (y's shape; y required): the branch was ``sigmoid(gate) * y``
    (``_add_norm_fwd(gate=)``), and the second result is ``(d y, d gate)`` - no gated product or its gradient stored."""
    if gate is not None and y is None:
        raise ValueError("add_norm backward: a gated branch needs y")
    ref = y if y is not None else s
    c = ref.shape[-1]
    rows = ref.numel() // c
    meta = _an_meta(rows, c)
    nblocks = cdiv(rows, meta["BR"])
    nprog, iters = row_programs(nblocks)
    gs = gs.contiguous() if gs is not None else None
    gn = gn.contiguous() if gn is not None else None
    gx = new_empty(ref.shape, x_dtype, ref.device)
    gy = new_empty(ref.shape, y.dtype if y is not None else y_dtype, ref.device)
    ggate = None if gate is None else new_empty(gate.shape, gate.dtype, gate.device)
    parts = new_empty((3, nprog, c), torch.float32, ref.device)
    dummy = ref
    y = ref if y is None else y
    _add_norm_bwd_kernel[(nprog,)](y, dummy if gate is None else gate.contiguous(), s if not post else dummy,
                                   weight if gamma is None else gamma, weight, bias,
                                   weight if sample_scale is None else sample_scale,
                                   gs if gs is not None else dummy, gn if gn is not None else dummy, gx, gy,
                                   gy if ggate is None else ggate, parts[0], parts[1], parts[2], rows, c,
                                   _rows_per_sample(y, sample_scale), eps, iters, POST=post,
                                   HAS_GATE=gate is not None, HAS_GAMMA=gamma is not None,
                                   HAS_KEEP=sample_scale is not None, HAS_GS=gs is not None, HAS_GN=gn is not None,
                                   **meta)
    # (d gamma, d weight, d bias stacked: one reduction launch)
    return gx, (gy if gate is None else (gy, ggate)), parts.sum(1)


@torch.library.custom_op("vision_rwkv::add_norm_bwd", mutates_args=())
def _add_norm_bwd_op(y: Optional[torch.Tensor], s: torch.Tensor, gamma: Optional[torch.Tensor], weight: torch.Tensor,
                     bias: torch.Tensor, eps: float, post: bool, gs: Optional[torch.Tensor], gn: Optional[torch.Tensor],
                     x_dtype: torch.dtype, sample_scale: Optional[torch.Tensor], y_dtype: torch.dtype
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _add_norm_bwd(y, s, gamma, weight, bias, eps, post, gs, gn, x_dtype, sample_scale, y_dtype)


@_add_norm_bwd_op.register_fake
def _(y, s, gamma, weight, bias, eps, post, gs, gn, x_dtype, sample_scale, y_dtype):
    ref = y if y is not None else s
    return (ref.new_empty(ref.shape, dtype=x_dtype), ref.new_empty(ref.shape, dtype=y_dtype),
            weight.new_empty((3,) + tuple(weight.shape), dtype=torch.float32))


def _an_save(ctx, x, y, s, gamma, weight, bias, eps, post, sample_scale):
    """What add_norm's backward keeps: y only where it is read (:func:`_add_norm_needs_y`), s for pre-norm."""
    ctx.meta = (eps, post, x.dtype, y.dtype)
    ctx.save_for_backward(y if _add_norm_needs_y(post, gamma) else None, None if post else s, gamma, weight, bias,
                          sample_scale)


def _an_setup(ctx, inputs, output):
    x, y, gamma, weight, bias, eps, post, _, sample_scale = inputs
    _an_save(ctx, x, y, output[0], gamma, weight, bias, eps, post, sample_scale)


def _an_grads(ctx, gs, gn, bwd):
    """The add + norm's input gradients from its saved context, the backward run by ``bwd`` (the custom op under
    torch.compile, the plain function in eager)."""
    y, s, gamma, weight, bias, sample_scale = ctx.saved_tensors
    eps, post, x_dtype, y_dtype = ctx.meta
    gx, gy, sums = bwd(y, s if s is not None else y, gamma, weight, bias, eps, post, gs, None if post else gn,
                       x_dtype, sample_scale, y_dtype)
    return (gx, gy, *split_param_grads(sums, gamma, weight, bias), None, None, None, None)


def _an_backward(ctx, gs, gn):
    return _an_grads(ctx, gs, gn, _add_norm_bwd_op)


torch.library.register_autograd("vision_rwkv::add_norm", _an_backward, setup_context=_an_setup)


class _AddNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, y, gamma, weight, bias, eps, post, out_dtype, sample_scale):
        s, n = _add_norm_fwd(x, y, gamma, weight, bias, eps, post, out_dtype, sample_scale)
        _an_save(ctx, x, y, s, gamma, weight, bias, eps, post, sample_scale)
        return s, n

    @staticmethod
    def backward(ctx, gs, gn):
        return _an_grads(ctx, gs, gn, _add_norm_bwd)


def add_norm_triton(x: torch.Tensor, y: torch.Tensor, gamma: Optional[torch.Tensor], weight: torch.Tensor,
                    bias: torch.Tensor, eps: float = 1e-5, post: bool = False, out_dtype: Optional[torch.dtype] = None,
                    sample_scale: Optional[torch.Tensor] = None,
                    inplace: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Fused residual + LayerNorm over the last dim (see ``add_norm`` in ``__init__.py``; ``inplace``: s written into
    x, eager inference only)."""
    args = (x.contiguous(), y.contiguous(), gamma.contiguous() if gamma is not None else None, weight.contiguous(),
            bias.contiguous(), float(eps), bool(post), out_dtype or x.dtype,
            sample_scale.contiguous() if sample_scale is not None else None)
    if inplace:  # (``add_norm`` checked: eager, no autograd)
        return _add_norm_fwd(*args, inplace=True)
    return run_op(_add_norm_op, _AddNorm, _add_norm_fwd, *args)
