"""Triton kernels for Q-Shift + interpolation (the token mixes' mixed inputs), forward and backward, as torch
custom ops.

* ``token_shift_mix``: Q-Shift + interpolation in one pass. ``out[i] = x + (shift(x) - x) * (a[i] + m[i])`` for
  i < M: each program reads a (tokens x channels) tile of x and, per channel quarter, the neighbour token's value
  (left / right / up / down, inside the same image, zero outside), and writes the M mixed inputs of the next
  projections directly in the compute dtype (bf16 under autocast) - no shifted copy, no fp32 intermediates.
  Backward: one pass writes dx (own-token term + the inverse shift of the neighbour terms: quarter q's inverse is
  q ^ 1), d m[i] = g[i] * xx, and per-tile partial sums of d a[i] (summed by torch: deterministic).
* ``token_shift_mix_lora``: the same with ``m[i] = h_i @ W2[i]`` (the RWKV-6 ddlerp LoRA, rank R) computed per
  tile with ``tl.dot`` instead of read from memory (the (5, B, N, C) m is never stored in the forward).
"""
from __future__ import annotations

from typing import Optional

import torch
import triton.language as tl

from .._triton_utils import (cdiv, check_out, coef_grads, new_empty, next_pow2, plane_grads, run_split_op,
                             split_outputs)
from ..triton_jit import jit
from ._config import CONFIG

__all__ = ["token_shift_mix_triton", "token_shift_mix_lora_triton", "coef_args", "MAX_SPLIT"]


@jit
def _by_quarter(q, left, right, up, down):
    """The value of quarter q's direction (0 left, 1 right, 2 up, 3 down)."""
    return tl.where(q == 0, left, tl.where(q == 1, right, tl.where(q == 2, up, down)))


@jit
def _edges(n, H, W):
    """Whether the tokens n (index inside their image, row-major on an H x W grid) have a left, right, up and down
    neighbour."""
    row = n // W
    col = n - row * W
    return col > 0, col < W - 1, row > 0, row < H - 1


@jit
def _neighbour(n, q, H, W):
    """Token offset and validity of the neighbour that quarter q reads for the tokens n."""
    ok_l, ok_r, ok_u, ok_d = _edges(n, H, W)
    return _by_quarter(q, -1, 1, -W, W), _by_quarter(q, ok_l, ok_r, ok_u, ok_d)


@jit
def _tile(NTOK, N, C, H, W, HS, Q1, Q2, Q3, BT: tl.constexpr, BC: tl.constexpr):
    t = tl.program_id(0) * BT + tl.arange(0, BT)
    c = tl.program_id(1) * BC + tl.arange(0, BC)
    cmask = c < C
    mask = (t < NTOK)[:, None] & cmask[None, :]
    n = (t % N)[:, None]
    cc = c % HS
    q = ((cc >= Q1).to(tl.int32) + (cc >= Q2).to(tl.int32) + (cc >= Q3).to(tl.int32))[None, :]
    offs = t.to(tl.int64)[:, None] * C + c[None, :]
    return c, cmask, mask, n, q, offs


@jit
def _shift_tile(X, NTOK, N, C, H, W, HS, Q1, Q2, Q3, BT: tl.constexpr, BC: tl.constexpr):
    """A program's (tokens x channels) tile (:func:`_tile`) with x there and ``xx = shift(x) - x`` (fp32; zero where
    the channel's quarter-q neighbour is outside the image)."""
    c, cmask, mask, n, q, offs = _tile(NTOK, N, C, H, W, HS, Q1, Q2, Q3, BT, BC)
    delta, valid = _neighbour(n, q, H, W)
    valid = valid & mask
    x = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
    src = offs + tl.where(valid, delta, 0).to(tl.int64) * C
    xx = tl.load(X + src, mask=valid, other=0.0).to(tl.float32) - x
    return c, cmask, mask, n, q, offs, x, xx


@jit
def _coef_ptr(pa, i: tl.constexpr, A1, A2, A3, A4, c, SPLIT_A: tl.constexpr):
    """Pointer to the i-th interpolation vector's channels c: the next row of the (M, C) A (``pa`` advanced by the
    caller) or, with SPLIT_A, the vector passed as its own argument (A for i = 0, then A1..A4)."""
    if SPLIT_A:
        if i == 1:
            pa = A1 + c
        if i == 2:
            pa = A2 + c
        if i == 3:
            pa = A3 + c
        if i == 4:
            pa = A4 + c
    return pa


@jit
def _tsm_fwd_kernel(X, A, MM, OUT, A1, A2, A3, A4, NTOK, N, C, H, W, HS, Q1, Q2, Q3, plane,
                    M: tl.constexpr, HAS_M: tl.constexpr, ONE_MINUS: tl.constexpr, SPLIT_A: tl.constexpr,
                    BT: tl.constexpr, BC: tl.constexpr):
    # the interpolation vectors: rows of one (M, C) tensor at A, or (SPLIT_A, M <= 5) one tensor each at A, A1, ..
    c, cmask, mask, n, q, offs, x, xx = _shift_tile(X, NTOK, N, C, H, W, HS, Q1, Q2, Q3, BT, BC)
    pa = A + c
    po = OUT + offs
    pm = MM + offs
    for i in tl.static_range(M):
        pa = _coef_ptr(pa, i, A1, A2, A3, A4, c, SPLIT_A)
        coef = tl.load(pa, mask=cmask, other=0.0).to(tl.float32)[None, :]
        if ONE_MINUS:
            coef = 1.0 - coef
        if HAS_M:
            coef = coef + tl.load(pm, mask=mask, other=0.0).to(tl.float32)
            pm += plane
        tl.store(po, (x + xx * coef).to(OUT.dtype.element_ty), mask=mask)
        po += plane
        pa += C


@jit
def _lora_rows(HH, W2, rows, rmask, c, cmask, C, i: tl.constexpr, M: tl.constexpr, R: tl.constexpr,
               PREC: tl.constexpr, TANH: tl.constexpr):
    """The ddlerp LoRA's m[i] of the tokens ``rows`` ([BT, 1], ``rmask`` false: 0) at channels c: h[rows, i*R:(i+1)*R]
    @ w2[i] in fp32, w2 rounded to h's dtype first (as autocast does; 16-bit values are exact in tf32). TANH: HH
    holds the pre-activation, and h = tanh(HH) is formed in fp32 as it is loaded."""
    rr = tl.arange(0, R)
    h = tl.load(HH + rows.to(tl.int64) * (M * R) + i * R + rr[None, :], mask=rmask, other=0.0)
    w2 = tl.load(W2 + i * R * C + rr[:, None] * C + c[None, :], mask=cmask[None, :], other=0.0)
    hf = h.to(tl.float32)
    if TANH:
        hf = 2.0 * tl.sigmoid(2.0 * hf) - 1.0  # (tanh, saturating to +-1 for large |x|)
    return tl.dot(hf, w2.to(h.dtype).to(tl.float32), input_precision=PREC)


@jit
def _lora_coefs(HH, W2, n, q, H, W, NTOK, c, cmask, C, i: tl.constexpr, M: tl.constexpr, R: tl.constexpr,
                PREC: tl.constexpr, BT: tl.constexpr):
    """(m[i] of this tile's tokens, m[i] of the tokens that read them as their quarter-q neighbour), both [BT, BC]:
    the second from one product per quarter (the neighbour's row depends on the channel's quarter q)."""
    t = (tl.program_id(0) * BT + tl.arange(0, BT))[:, None]
    tmask = t < NTOK
    own = _lora_rows(HH, W2, t, tmask, c, cmask, C, i, M, R, PREC, False)
    inv = tl.zeros_like(own)
    for qq in tl.static_range(4):
        delta, valid = _neighbour(n, tl.full([1, 1], qq ^ 1, tl.int32), H, W)
        rows = t + tl.where(valid, delta, 0)
        inv = tl.where(q == qq, _lora_rows(HH, W2, rows, valid & tmask, c, cmask, C, i, M, R, PREC, False), inv)
    return own, inv


@jit
def _tsm_bwd_kernel(X, A, MM, GO, GX, GAP, GM, G1, G2, G3, G4, A1, A2, A3, A4, HH, W2, NTOK, N, C, H, W, HS, Q1, Q2,
                    Q3, plane, M: tl.constexpr, HAS_M: tl.constexpr, ONE_MINUS: tl.constexpr, SPLIT: tl.constexpr,
                    SPLIT_A: tl.constexpr, LORA: tl.constexpr, R: tl.constexpr, PREC: tl.constexpr,
                    ACC: tl.constexpr, BT: tl.constexpr, BC: tl.constexpr):
    # the output gradients: one (M, ...) tensor at GO, or (SPLIT, M <= 5) one tensor per mixed input at GO, G1, ..;
    # the interpolation vectors as in the forward kernel (SPLIT_A); LORA (with HAS_M): m is not read from MM but
    # formed from the LoRA hidden HH (tokens, M*R) and W2 (M, R, C), as the forward kernel forms it; ACC: d x is added
    # to what GX holds (each program reads and writes its own tile)
    c, cmask, mask, n, q, offs, x, xx = _shift_tile(X, NTOK, N, C, H, W, HS, Q1, Q2, Q3, BT, BC)
    # the tokens whose quarter-q neighbour is this token: the neighbour in the opposite direction (q ^ 1)
    idelta, ivalid = _neighbour(n, q ^ 1, H, W)
    ivalid = ivalid & mask
    isrc = offs + tl.where(ivalid, idelta, 0).to(tl.int64) * C
    if ACC:
        gx = tl.load(GX + offs, mask=mask, other=0.0).to(tl.float32)
    else:
        gx = tl.zeros([BT, BC], tl.float32)
    pa = A + c
    pg = GO
    pm = MM
    pgm = GM
    pgap = GAP + tl.program_id(0).to(tl.int64) * M * C + c
    for i in tl.static_range(M):
        if SPLIT:
            if i == 1:
                pg = G1
            if i == 2:
                pg = G2
            if i == 3:
                pg = G3
            if i == 4:
                pg = G4
        pa = _coef_ptr(pa, i, A1, A2, A3, A4, c, SPLIT_A)
        a = tl.load(pa, mask=cmask, other=0.0).to(tl.float32)[None, :]
        if ONE_MINUS:
            a = 1.0 - a
        g = tl.load(pg + offs, mask=mask, other=0.0).to(tl.float32)
        gi = tl.load(pg + isrc, mask=ivalid, other=0.0).to(tl.float32)
        coef = a
        coefi = a
        if LORA:
            own, inv = _lora_coefs(HH, W2, n, q, H, W, NTOK, c, cmask, C, i, M, R, PREC, BT)
            coef = a + own
            coefi = a + inv
        elif HAS_M:
            coef = a + tl.load(pm + offs, mask=mask, other=0.0).to(tl.float32)
            coefi = a + tl.load(pm + isrc, mask=ivalid, other=0.0).to(tl.float32)
            pm += plane
        gx += g * (1.0 - coef) + gi * coefi
        gxx = g * xx
        if ONE_MINUS:  # d(1 - a) / da = -1
            tl.store(pgap, -tl.sum(gxx, axis=0), mask=cmask)
        else:
            tl.store(pgap, tl.sum(gxx, axis=0), mask=cmask)
        if HAS_M:
            tl.store(pgm + offs, gxx.to(GM.dtype.element_ty), mask=mask)
            pgm += plane
        if not SPLIT:
            pg += plane
        pa += C
        pgap += C
    tl.store(GX + offs, gx.to(GX.dtype.element_ty), mask=mask)


def _quarters(c: int, head_size: int) -> tuple[int, int, int, int]:
    """(period, b1, b2, b3): channel c's quarter is found from c % period (period = C for v4, head size for v6)."""
    hs = c if head_size <= 0 else head_size
    return (hs,) + tuple(int(hs * k / 4) for k in (1, 2, 3))  # type: ignore[return-value]


def _tsm_launch(x, H, W, head_size, nmix):
    B, N, C = x.shape
    ntok = B * N
    bt = CONFIG["block_t"]
    bc = min(CONFIG["block_c"], next_pow2(C))
    grid = (cdiv(ntok, bt), cdiv(C, bc))
    return (ntok, N, C, H, W, *_quarters(C, head_size), ntok * C), dict(M=nmix, BT=bt, BC=bc), grid


def coef_args(a):
    """The interpolation vectors as kernel arguments: ``(A, (A1, .., A4), SPLIT_A, M, dtype)`` from an (M, C) tensor
    (one pointer, rows) or a tuple of M <= 5 contiguous vectors of C elements (one pointer each: no stacked copy,
    no launch to make one - what training passes, where a stack would run every step)."""
    if isinstance(a, torch.Tensor):
        return a, (None,) * 4, False, a.shape[0], a.dtype
    extra = tuple(a[1:]) + (None,) * (5 - len(a))
    return a[0], extra, True, len(a), a[0].dtype


def _tsm_fwd(x, H, W, head_size, a, m, out_dtype, one_minus=False):
    a0, extra, split_a, nmix, _ = coef_args(a)
    args, meta, grid = _tsm_launch(x, H, W, head_size, nmix)
    out = new_empty((nmix,) + tuple(x.shape), out_dtype, x.device)
    _tsm_fwd_kernel[grid](x, a0, x if m is None else m, out, *extra, *args, HAS_M=m is not None, ONE_MINUS=one_minus,
                          SPLIT_A=split_a, num_warps=CONFIG["warps"], **meta)
    return out


@torch.library.custom_op("vision_rwkv::token_shift_mix", mutates_args=())
def _tsm_op(x: torch.Tensor, H: int, W: int, head_size: int, a: torch.Tensor, m: Optional[torch.Tensor],
            out_dtype: torch.dtype, one_minus: bool) -> torch.Tensor:
    return _tsm_fwd(x, H, W, head_size, a, m, out_dtype, one_minus)


@_tsm_op.register_fake
def _(x, H, W, head_size, a, m, out_dtype, one_minus):
    return x.new_empty((a.shape[0],) + tuple(x.shape), dtype=out_dtype)


MAX_SPLIT = 5  # mixed inputs whose gradients the backward kernel reads from separate tensors


def _tsm_bwd(x, H, W, head_size, a, m, gout, one_minus=False, lora=None, gx=None):
    """Gradients (x, a, m) of ``token_shift_mix``; ``gout`` the (M, ...) output gradient, or a sequence of the M
    outputs' gradients (each read in place: no stacked copy); ``a`` as for :func:`coef_args` (its gradient is
    (M, C) either way, in its dtype). ``lora``: ``(h, w2)`` of ``token_shift_mix_lora`` instead of ``m`` (None): the
    kernel forms m per tile as the forward does, and d m comes back in h's dtype. ``gx``: a contiguous gradient of x
    (x's shape and dtype) that d x is added to, in place (one rounding; no separate add), and returned."""
    a0, extra, split_a, nmix, a_dtype = coef_args(a)
    args, meta, grid = _tsm_launch(x, H, W, head_size, nmix)
    meta["num_warps"] = CONFIG["warps"]
    hh = w2 = None
    if lora is not None:
        hh, w2 = lora
        # five products per mixed input (its own tokens' m and the four quarters' neighbours'): sm_90, C 192, bf16:
        # 16 x 64 tiles at 8 warps take 120 registers a thread, no spills; 32-token tiles at 4 warps spilled
        meta["BT"], meta["num_warps"] = max(16, CONFIG["lora_bwd_block_t"]), CONFIG["lora_bwd_warps"]
        meta["BC"] = max(meta["BC"], 16)  # (tl.dot's smallest tile is 16 x 16)
        grid = (cdiv(args[0], meta["BT"]), cdiv(x.shape[-1], meta["BC"]))
    split = isinstance(gout, (list, tuple))
    if split and len(gout) > MAX_SPLIT:
        gout, split = torch.stack(gout), False
    gs = [g.contiguous() for g in gout] if split else [gout.contiguous()]
    gs += [None] * (MAX_SPLIT - len(gs))
    acc = gx is not None
    if acc:
        check_out("token_shift_mix", ("gx",), (gx,), (x,))
    else:
        gx = new_empty(x.shape, x.dtype, x.device)
    gap = new_empty((grid[0], nmix, x.shape[-1]), torch.float32, x.device)
    gm = None  # d m: in m's dtype, or in h's with the LoRA
    if lora is not None:
        gm = new_empty((nmix,) + tuple(x.shape), hh.dtype, x.device)
    elif m is not None:
        gm = new_empty(m.shape, m.dtype, m.device)
    _tsm_bwd_kernel[grid](x, a0, m, gs[0], gx, gap, gm, *gs[1:], *extra, hh, w2, *args, HAS_M=gm is not None,
                          ONE_MINUS=one_minus, SPLIT=split, SPLIT_A=split_a, LORA=lora is not None,
                          R=1 if lora is None else w2.shape[1], PREC=_lora_prec(hh), ACC=acc, **meta)
    return gx, gap.sum(0).to(a_dtype), (x.new_empty((0,)) if gm is None else gm)


@torch.library.custom_op("vision_rwkv::token_shift_mix_bwd", mutates_args=())
def _tsm_bwd_op(x: torch.Tensor, H: int, W: int, head_size: int, a: torch.Tensor, m: Optional[torch.Tensor],
                gout: torch.Tensor, one_minus: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _tsm_bwd(x, H, W, head_size, a, m, gout, one_minus)


@_tsm_bwd_op.register_fake
def _(x, H, W, head_size, a, m, gout, one_minus):
    return x.new_empty(x.shape), a.new_empty(a.shape), (m.new_empty(m.shape) if m is not None else x.new_empty((0,)))


def _tsm_setup(ctx, inputs, output):
    x, H, W, head_size, a, m, _, one_minus = inputs
    ctx.meta = (H, W, head_size, m is not None, one_minus)
    ctx.save_for_backward(x, a, m)


def _tsm_backward(ctx, gout):
    x, a, m = ctx.saved_tensors
    H, W, head_size, has_m, one_minus = ctx.meta
    gx, ga, gm = _tsm_bwd_op(x, H, W, head_size, a, m if has_m else None, gout, one_minus)
    return gx, None, None, None, ga, (gm if has_m else None), None, None


torch.library.register_autograd("vision_rwkv::token_shift_mix", _tsm_backward, setup_context=_tsm_setup)


class _TokenShiftMix(torch.autograd.Function):
    """Eager autograd of ``token_shift_mix``; after the op's arguments (without ``a``): ``split`` (see
    :func:`split_outputs`: the M mixed inputs come back as separate outputs, planes or groups of planes, whose
    gradients the backward kernel then reads where they are - unpacking one (M, ...) output instead would stack the
    M gradients again in the backward), ``vectors`` and the interpolation weights (one (M, C) tensor, or M vectors
    read in place: see :func:`run_split_op`)."""

    @staticmethod
    def forward(ctx, x, H, W, head_size, m, out_dtype, one_minus, split, vectors, *a):
        ctx.meta = (H, W, head_size, m is not None, one_minus, split, vectors)
        ctx.save_for_backward(x, m, *a)
        return split_outputs(_tsm_fwd(x, H, W, head_size, a if vectors else a[0], m, out_dtype, one_minus), split)

    @staticmethod
    def backward(ctx, *gout):
        x, m, *a = ctx.saved_tensors
        H, W, head_size, has_m, one_minus, split, vectors = ctx.meta
        gx, ga, gm = _tsm_bwd(x, H, W, head_size, tuple(a) if vectors else a[0], m if has_m else None,
                              plane_grads(gout, split), one_minus)
        return (gx, None, None, None, (gm if has_m else None), None, None, None, None,
                *coef_grads(ga, a, vectors))


def token_shift_mix_triton(x: torch.Tensor, grid_size: tuple[int, int], a, m: Optional[torch.Tensor] = None,
                           head_size: Optional[int] = None, out_dtype: Optional[torch.dtype] = None,
                           one_minus: bool = False, split=False):
    """Fused ``x + (q_shift(x) - x) * (a[i] + m[i])`` -> (M, B, N, C) in ``out_dtype`` (see the module docstring;
    ``split``: its planes or groups of planes, see :func:`split_outputs`). Inputs are made contiguous; a is (M, C) or
    a tuple of M <= 5 vectors of C elements (read where they are), m (M, B, N, C) or None.
    ``one_minus``: a weights the unshifted token (the kernel uses 1 - a; no separate launch computes it)."""
    x = x.contiguous()
    m = m.contiguous() if m is not None else None
    args = (x, int(grid_size[0]), int(grid_size[1]), int(head_size or 0), m, out_dtype or x.dtype, bool(one_minus))
    return run_split_op(_tsm_op, _TokenShiftMix, _tsm_fwd, args, a, split)

@jit
def _tsm_lora_fwd_kernel(X, A, HH, W2, OUT, A1, A2, A3, A4, NTOK, N, C, H, W, HS, Q1, Q2, Q3, plane,
                         M: tl.constexpr, R: tl.constexpr, SPLIT_A: tl.constexpr, BT: tl.constexpr, BC: tl.constexpr,
                         PREC: tl.constexpr, TANH: tl.constexpr):
    # TANH: HH holds the LoRA's pre-activation (eager inference: its tanh is formed here, no pass of its own)
    c, cmask, mask, n, q, offs, x, xx = _shift_tile(X, NTOK, N, C, H, W, HS, Q1, Q2, Q3, BT, BC)
    t = (tl.program_id(0) * BT + tl.arange(0, BT))[:, None]
    pa = A + c
    po = OUT + offs
    for i in tl.static_range(M):
        pa = _coef_ptr(pa, i, A1, A2, A3, A4, c, SPLIT_A)
        coef = (_lora_rows(HH, W2, t, t < NTOK, c, cmask, C, i, M, R, PREC, TANH)
                + tl.load(pa, mask=cmask, other=0.0).to(tl.float32)[None, :])
        tl.store(po, (x + xx * coef).to(OUT.dtype.element_ty), mask=mask)
        pa += C
        po += plane


def _lora_prec(h) -> str:
    """The precision of the LoRA products inside the mixing kernels: exact fp32 for fp32 h, tf32 for 16-bit h (whose
    values tf32 holds exactly); "ieee" without h (no product)."""
    return "tf32" if h is not None and h.dtype != torch.float32 else "ieee"


def _tsm_lora_fwd(x, H, W, head_size, a, h, w2, out_dtype, tanh: bool = False):
    """``token_shift_mix_lora``'s forward; ``tanh``: h is the LoRA's pre-activation, tanh'd by the kernel as it loads
    it (fp32, not rounded to h's dtype first)."""
    nmix, rank, _ = w2.shape
    args, meta, grid = _tsm_launch(x, H, W, head_size, nmix)
    meta["BT"] = max(meta["BT"], 16)
    meta["BC"] = max(meta["BC"], 16)
    grid = (cdiv(args[0], meta["BT"]), cdiv(x.shape[-1], meta["BC"]))
    out = new_empty((nmix,) + tuple(x.shape), out_dtype, x.device)
    prec = _lora_prec(h)
    a0, extra, split_a, _, _ = coef_args(a)
    _tsm_lora_fwd_kernel[grid](x, a0, h, w2, out, *extra, *args, R=rank, SPLIT_A=split_a, PREC=prec,
                               TANH=bool(tanh), num_warps=CONFIG["warps"], **meta)
    return out


def _tsm_lora_bwd(x, H, W, head_size, a, h, w2, gout):
    nmix, rank, c = w2.shape
    w2h = w2.to(h.dtype)  # (one cast for both products below)
    # m, the LoRA's output, recomputed per tile inside the kernel (not stored by the forward, not materialised here)
    gx, ga, gm = _tsm_bwd(x, H, W, head_size, a, None, gout, lora=(h.contiguous(), w2.contiguous()))
    gm = gm.view(nmix, -1, c)
    # d h[t, i*R:(i+1)*R] = gm[i, t] @ w2[i]^T, written in place through a (M, tokens, R) view of (tokens, M, R):
    # the batched GEMM takes the strided output (batch stride R), no transposing copy
    gh = torch.empty((gm.shape[1], nmix, rank), dtype=gm.dtype, device=gm.device)
    torch.bmm(gm, w2h.to(gm.dtype).transpose(1, 2), out=gh.transpose(0, 1))
    gh = gh.view(h.shape).to(h.dtype)
    hT = h.reshape(-1, nmix, rank).transpose(0, 1).transpose(1, 2)
    if gm.dtype == torch.bfloat16 and hT.dtype == torch.bfloat16:
        # as autocast's weight gradients: a bf16 product (fp32 accumulation inside the GEMM), no fp32 copies of the
        # (M, tokens, C) gradient; fp16 keeps fp32 operands (a sum over every token can leave fp16's range)
        gw2 = torch.bmm(hT, gm).to(w2.dtype)
    else:
        gw2 = torch.bmm(hT.float(), gm.float()).to(w2.dtype)
    return gx, ga, gh, gw2


@torch.library.custom_op("vision_rwkv::token_shift_mix_lora", mutates_args=())
def _tsm_lora_op(x: torch.Tensor, H: int, W: int, head_size: int, a: torch.Tensor, h: torch.Tensor,
                 w2: torch.Tensor, out_dtype: torch.dtype) -> torch.Tensor:
    return _tsm_lora_fwd(x, H, W, head_size, a, h, w2, out_dtype)


@_tsm_lora_op.register_fake
def _(x, H, W, head_size, a, h, w2, out_dtype):
    return x.new_empty((w2.shape[0],) + tuple(x.shape), dtype=out_dtype)


@torch.library.custom_op("vision_rwkv::token_shift_mix_lora_bwd", mutates_args=())
def _tsm_lora_bwd_op(x: torch.Tensor, H: int, W: int, head_size: int, a: torch.Tensor, h: torch.Tensor,
                     w2: torch.Tensor, gout: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return _tsm_lora_bwd(x, H, W, head_size, a, h, w2, gout)


@_tsm_lora_bwd_op.register_fake
def _(x, H, W, head_size, a, h, w2, gout):
    return x.new_empty(x.shape), a.new_empty(a.shape), h.new_empty(h.shape), w2.new_empty(w2.shape)


def _tsm_lora_setup(ctx, inputs, output):
    x, H, W, head_size, a, h, w2, _ = inputs
    ctx.meta = (H, W, head_size)
    ctx.save_for_backward(x, a, h, w2)


def _tsm_lora_backward(ctx, gout):
    x, a, h, w2 = ctx.saved_tensors
    gx, ga, gh, gw2 = _tsm_lora_bwd_op(x, *ctx.meta, a, h, w2, gout)
    return gx, None, None, None, ga, gh, gw2, None


torch.library.register_autograd("vision_rwkv::token_shift_mix_lora", _tsm_lora_backward,
                                setup_context=_tsm_lora_setup)


class _TokenShiftMixLora(torch.autograd.Function):
    """Eager autograd of ``token_shift_mix_lora``; ``split``, ``vectors`` and the interpolation weights last, as for
    :class:`_TokenShiftMix`."""

    @staticmethod
    def forward(ctx, x, H, W, head_size, h, w2, out_dtype, split, vectors, *a):
        ctx.meta = (H, W, head_size)
        ctx.split, ctx.vectors = split, vectors
        ctx.save_for_backward(x, h, w2, *a)
        return split_outputs(_tsm_lora_fwd(x, H, W, head_size, a if vectors else a[0], h, w2, out_dtype), split)

    @staticmethod
    def backward(ctx, *gout):
        x, h, w2, *a = ctx.saved_tensors
        gx, ga, gh, gw2 = _tsm_lora_bwd(x, *ctx.meta, tuple(a) if ctx.vectors else a[0], h, w2,
                                        plane_grads(gout, ctx.split))
        return (gx, None, None, None, gh, gw2, None, None, None, *coef_grads(ga, a, ctx.vectors))


def token_shift_mix_lora_triton(x: torch.Tensor, grid_size: tuple[int, int], a, h: torch.Tensor,
                                w2: torch.Tensor, head_size: Optional[int] = None,
                                out_dtype: Optional[torch.dtype] = None, split=False):
    """``token_shift_mix`` with ``m[i] = h[..., i*R:(i+1)*R] @ w2[i]`` computed in the kernel (never stored):
    the RWKV-6 ddlerp with its LoRA. h (B, N, M*R) (e.g. tanh(xxx @ W1)), w2 (M, R, C), R a power of two >= 16; a
    (M, C) or a tuple of M <= 5 vectors. ``split``: its planes or groups of planes instead of one (M, B, N, C)
    tensor (see :func:`split_outputs`)."""
    args = (x.contiguous(), int(grid_size[0]), int(grid_size[1]), int(head_size or 0), h.contiguous(),
            w2.contiguous(), out_dtype or x.dtype)
    return run_split_op(_tsm_lora_op, _TokenShiftMixLora, _tsm_lora_fwd, args, a, split)
