"""Triton kernels for the elementwise work around the WKV operators, forward and backward, as torch custom ops.

* ``token_shift_mix``: Q-Shift + interpolation in one pass. ``out[i] = x + (shift(x) - x) * (a[i] + m[i])`` for
  i < M: each program reads a (tokens x channels) tile of x and, per channel quarter, the neighbour token's value
  (left / right / up / down, inside the same image, zero outside), and writes the M mixed inputs of the next
  projections directly in the compute dtype (bf16 under autocast) - no shifted copy, no fp32 intermediates.
  Backward: one pass writes dx (own-token term + the inverse shift of the neighbour terms: quarter q's inverse is
  q ^ 1), d m[i] = g[i] * xx, and per-tile partial sums of d a[i] (summed by torch: deterministic).
* ``token_shift_mix_lora``: the same with ``m[i] = h_i @ W2[i]`` (the RWKV-6 ddlerp LoRA, rank R) computed per
  tile with ``tl.dot`` instead of read from memory (the (5, B, N, C) m is never stored in the forward).
* ``sigmoid_mul``: ``sigmoid(r) * y``; ``relu_square``: ``relu(x)^2`` (fp32 math, I/O in the tensors' dtypes).
* ``group_norm_mul``: per-token GroupNorm (affine) times a gate ``act(g)`` (act = identity or SiLU: the VRWKV6
  ``ln_x(y) * silu(gate)``), several rows per program; backward with per-program partials of d weight / d bias.
* ``decay_logd``: ``-exp(w0[c] + z)`` in float32 (the VRWKV6 per-token log decay from the decay LoRA output).
* ``add_norm``: residual + LayerNorm per token, one read of each input: post-norm ``s = x + gamma * LN(y)``;
  pre-norm ``s = x + gamma * y`` and ``n = LN(s)`` (n in the compute dtype: the next token mix reads it); an optional
  per-sample factor of the branch (drop path's mask / keep_prob) is read per row.

In eager mode each op is a ``torch.autograd.Function`` over the kernels (less call overhead); while torch.compile
traces, the same kernels run as the custom ops (with fake implementations: no graph breaks).

Outputs are allocated with :func:`vision_rwkv.ops._triton_utils.new_empty` (NaN-poisoned when
``VRWKV_TRITON_DEBUG=1``). Shapes and dtypes are checked by the public wrappers in ``__init__.py``.
"""
from __future__ import annotations

from typing import Optional

import torch
import triton.language as tl

from .._triton_utils import (cdiv, check_out, coef_grads, new_empty, next_pow2, plane_grads, run_op,
                             run_split_op, split_outputs, split_param_grads)
from ..triton_jit import jit

__all__ = ["token_shift_mix_triton", "sigmoid_mul_triton", "relu_square_triton", "group_norm_mul_triton",
           "decay_logd_triton", "add_norm_triton", "token_shift_mix_lora_triton", "relu_square_inplace_triton",
           "CONFIG"]

# bwd_programs: the most programs of the row-reducing backward kernels (GroupNorm * gate, residual add + LayerNorm);
# each walks its share of row blocks and writes one partial sum of the parameter gradients
# lora_bwd_*: the tiles of the mixing backward that forms the ddlerp LoRA's m itself (``_tsm_lora_bwd``)
CONFIG = dict(block_t=32, block_c=64, warps=4, block_elem=2048, elem_warps=8, gn_elems=4096, bwd_programs=1024,
              lora_bwd_block_t=16, lora_bwd_warps=8)


def _row_programs(nblocks: int) -> tuple[int, int]:
    """(programs, row blocks per program) of a row-reducing backward kernel over ``nblocks`` row blocks."""
    nprog = max(1, min(nblocks, int(CONFIG["bwd_programs"])))
    return nprog, cdiv(nblocks, nprog)


# ---------------------------------------------------------------------------------------------- token shift + mix
@jit
def _neighbour(n, q, H, W):
    """Token offset and validity of the neighbour that quarter q reads (0 left, 1 right, 2 up, 3 down) for the
    tokens n (index inside their image, row-major on an H x W grid)."""
    row = n // W
    col = n - row * W
    delta = tl.where(q == 0, -1, tl.where(q == 1, 1, tl.where(q == 2, -W, W)))
    valid = tl.where(q == 0, col > 0, tl.where(q == 1, col < W - 1, tl.where(q == 2, row > 0, row < H - 1)))
    return delta, valid


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
    c, cmask, mask, n, q, offs = _tile(NTOK, N, C, H, W, HS, Q1, Q2, Q3, BT, BC)
    delta, valid = _neighbour(n, q, H, W)
    valid = valid & mask
    x = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
    src = offs + tl.where(valid, delta, 0).to(tl.int64) * C
    xx = tl.load(X + src, mask=valid, other=0.0).to(tl.float32) - x
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
    c, cmask, mask, n, q, offs = _tile(NTOK, N, C, H, W, HS, Q1, Q2, Q3, BT, BC)
    delta, valid = _neighbour(n, q, H, W)
    valid = valid & mask
    # the tokens whose quarter-q neighbour is this token: the neighbour in the opposite direction (q ^ 1)
    idelta, ivalid = _neighbour(n, q ^ 1, H, W)
    ivalid = ivalid & mask
    x = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
    src = offs + tl.where(valid, delta, 0).to(tl.int64) * C
    xx = tl.load(X + src, mask=valid, other=0.0).to(tl.float32) - x
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


# ---------------------------------------------------------------------------------------------- elementwise
@jit
def _offsets(n, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    return offs, offs < n


@jit
def _sigmoid_mul_fwd_kernel(R, Y, OUT, n, BLOCK: tl.constexpr):
    offs, mask = _offsets(n, BLOCK)
    r = tl.load(R + offs, mask=mask, other=0.0).to(tl.float32)
    y = tl.load(Y + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(OUT + offs, (tl.sigmoid(r) * y).to(OUT.dtype.element_ty), mask=mask)


@jit
def _sigmoid_mul_bwd_kernel(R, Y, G, GR, GY, n, BLOCK: tl.constexpr):
    offs, mask = _offsets(n, BLOCK)
    r = tl.load(R + offs, mask=mask, other=0.0).to(tl.float32)
    y = tl.load(Y + offs, mask=mask, other=0.0).to(tl.float32)
    g = tl.load(G + offs, mask=mask, other=0.0).to(tl.float32)
    s = tl.sigmoid(r)
    tl.store(GY + offs, (g * s).to(GY.dtype.element_ty), mask=mask)
    tl.store(GR + offs, (g * y * s * (1.0 - s)).to(GR.dtype.element_ty), mask=mask)


@jit
def _relu_square_fwd_kernel(X, OUT, n, BLOCK: tl.constexpr):
    offs, mask = _offsets(n, BLOCK)
    x = tl.maximum(tl.load(X + offs, mask=mask, other=0.0).to(tl.float32), 0.0)
    tl.store(OUT + offs, (x * x).to(OUT.dtype.element_ty), mask=mask)


@jit
def _relu_square_bwd_kernel(X, G, GX, n, BLOCK: tl.constexpr):
    offs, mask = _offsets(n, BLOCK)
    x = tl.maximum(tl.load(X + offs, mask=mask, other=0.0).to(tl.float32), 0.0)
    g = tl.load(G + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(GX + offs, (2.0 * x * g).to(GX.dtype.element_ty), mask=mask)


def _elem_grid(n: int):
    return (cdiv(n, CONFIG["block_elem"]),), dict(BLOCK=CONFIG["block_elem"], num_warps=CONFIG["elem_warps"])


def _sigmoid_mul_fwd(r, y):
    out = new_empty(y.shape, torch.promote_types(r.dtype, y.dtype), y.device)
    grid, meta = _elem_grid(y.numel())
    _sigmoid_mul_fwd_kernel[grid](r, y, out, y.numel(), **meta)
    return out


@torch.library.custom_op("vision_rwkv::sigmoid_mul", mutates_args=())
def _sigmoid_mul_op(r: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return _sigmoid_mul_fwd(r, y)


@_sigmoid_mul_op.register_fake
def _(r, y):
    return y.new_empty(y.shape, dtype=torch.promote_types(r.dtype, y.dtype))


def _sigmoid_mul_bwd(r, y, g, gr_out=None):
    """(d r, d y) of ``sigmoid(r) * y`` (contiguous operands); ``gr_out``: a contiguous buffer of r's shape and dtype
    to write d r into (e.g. a slice of one stacked gradient)."""
    g = g.contiguous()
    gr = new_empty(r.shape, r.dtype, r.device) if gr_out is None else gr_out
    gy = new_empty(y.shape, y.dtype, y.device)
    grid, meta = _elem_grid(y.numel())
    _sigmoid_mul_bwd_kernel[grid](r, y, g, gr, gy, y.numel(), **meta)
    return gr, gy


@torch.library.custom_op("vision_rwkv::sigmoid_mul_bwd", mutates_args=())
def _sigmoid_mul_bwd_op(r: torch.Tensor, y: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return _sigmoid_mul_bwd(r, y, g)


@_sigmoid_mul_bwd_op.register_fake
def _(r, y, g):
    return r.new_empty(r.shape), y.new_empty(y.shape)


def _sm_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _sm_backward(ctx, g):
    r, y = ctx.saved_tensors
    return _sigmoid_mul_bwd_op(r, y, g)


torch.library.register_autograd("vision_rwkv::sigmoid_mul", _sm_backward, setup_context=_sm_setup)


class _SigmoidMul(torch.autograd.Function):
    @staticmethod
    def forward(ctx, r, y):
        ctx.save_for_backward(r, y)
        return _sigmoid_mul_fwd(r, y)

    @staticmethod
    def backward(ctx, g):
        return _sigmoid_mul_bwd(*ctx.saved_tensors, g)


def sigmoid_mul_triton(r: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Fused ``sigmoid(r) * y`` (same shapes), fp32 math, result in ``result_type(r, y)``."""
    r, y = r.contiguous(), y.contiguous()
    return run_op(_sigmoid_mul_op, _SigmoidMul, _sigmoid_mul_fwd, r, y)


def _relu_square_fwd(x):
    out = new_empty(x.shape, x.dtype, x.device)
    grid, meta = _elem_grid(x.numel())
    _relu_square_fwd_kernel[grid](x, out, x.numel(), **meta)
    return out


@torch.library.custom_op("vision_rwkv::relu_square", mutates_args=())
def _relu_square_op(x: torch.Tensor) -> torch.Tensor:
    return _relu_square_fwd(x)


@_relu_square_op.register_fake
def _(x):
    return x.new_empty(x.shape)


def _elem_bwd(kernel, t, g):
    """One elementwise backward launch ``kernel(t, g, gx, n)``: the input gradient gx (t's shape and dtype) from a
    saved tensor t and the output gradient g."""
    g = g.contiguous()
    gx = new_empty(t.shape, t.dtype, t.device)
    grid, meta = _elem_grid(t.numel())
    kernel[grid](t, g, gx, t.numel(), **meta)
    return gx


def _relu_square_bwd(x, g):
    return _elem_bwd(_relu_square_bwd_kernel, x, g)


@torch.library.custom_op("vision_rwkv::relu_square_bwd", mutates_args=())
def _relu_square_bwd_op(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    return _relu_square_bwd(x, g)


@_relu_square_bwd_op.register_fake
def _(x, g):
    return x.new_empty(x.shape)


def _rs_setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[0])


def _rs_backward(ctx, g):
    (x,) = ctx.saved_tensors
    return _relu_square_bwd_op(x, g)


torch.library.register_autograd("vision_rwkv::relu_square", _rs_backward, setup_context=_rs_setup)


class _ReluSquare(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return _relu_square_fwd(x)

    @staticmethod
    def backward(ctx, g):
        return _relu_square_bwd(ctx.saved_tensors[0], g)


@jit
def _relu_square_bwd_from_out_kernel(Y, G, GX, n, BLOCK: tl.constexpr):
    offs, mask = _offsets(n, BLOCK)
    y = tl.load(Y + offs, mask=mask, other=0.0).to(tl.float32)
    g = tl.load(G + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(GX + offs, (2.0 * tl.sqrt(y) * g).to(GX.dtype.element_ty), mask=mask)


@jit
def _tanh_bwd_from_out_kernel(Y, G, GX, n, BLOCK: tl.constexpr):
    """d tanh from its output: g * (1 - y^2) (the GEMM-epilogue tanh's backward)."""
    offs, mask = _offsets(n, BLOCK)
    y = tl.load(Y + offs, mask=mask, other=0.0).to(tl.float32)
    g = tl.load(G + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(GX + offs, (g * (1.0 - y * y)).to(GX.dtype.element_ty), mask=mask)


def _relu_square_inplace_fwd(x):
    grid, meta = _elem_grid(x.numel())
    _relu_square_fwd_kernel[grid](x, x, x.numel(), **meta)
    return x


class _ReluSquareInplace(torch.autograd.Function):
    """``relu(x)^2`` written over x (saves one hidden-sized buffer); backward from the output, relu(x) = sqrt(y)."""

    @staticmethod
    def forward(ctx, x):
        _relu_square_inplace_fwd(x)
        ctx.mark_dirty(x)
        ctx.save_for_backward(x)
        return x

    @staticmethod
    def backward(ctx, g):
        return _relu_square_bwd_from_out(ctx.saved_tensors[0], g)


def _relu_square_bwd_from_out(y, g):
    """d relu(x)^2 from the output y = relu(x)^2 (relu(x) = sqrt(y)) and the output gradient g."""
    return _elem_bwd(_relu_square_bwd_from_out_kernel, y, g)


def relu_square_inplace_triton(x: torch.Tensor) -> torch.Tensor:
    """``relu(x) ** 2`` written over a contiguous x in eager mode (out of place while torch.compile traces)."""
    if torch.compiler.is_compiling() or not x.is_contiguous():
        return relu_square_triton(x)
    return run_op(None, _ReluSquareInplace, _relu_square_inplace_fwd, x)


def relu_square_triton(x: torch.Tensor) -> torch.Tensor:
    """Fused ``relu(x) ** 2`` in x's dtype (fp32 math)."""
    x = x.contiguous()
    return run_op(_relu_square_op, _ReluSquare, _relu_square_fwd, x)


# ---------------------------------------------------------------------------------------------- group norm * gate
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
    nprog, iters = _row_programs(nblocks)
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


# ---------------------------------------------------------------------------------------------- v6 log decay
@jit
def _decay_fwd_kernel(W0, Z, OUT, n, C, BLOCK: tl.constexpr):
    offs, mask = _offsets(n, BLOCK)
    w0 = tl.load(W0 + offs % C, mask=mask, other=0.0).to(tl.float32)
    z = tl.load(Z + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(OUT + offs, -tl.exp(w0 + z), mask=mask)


def _decay_fwd(w0, z):
    out = new_empty(z.shape, torch.float32, z.device)
    grid, meta = _elem_grid(z.numel())
    _decay_fwd_kernel[grid](w0, z, out, z.numel(), z.shape[-1], **meta)
    return out


@torch.library.custom_op("vision_rwkv::decay_logd", mutates_args=())
def _decay_op(w0: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    return _decay_fwd(w0, z)


@_decay_op.register_fake
def _(w0, z):
    return z.new_empty(z.shape, dtype=torch.float32)


def _decay_setup(ctx, inputs, output):
    ctx.z_dtype = inputs[1].dtype
    ctx.w0_dtype = inputs[0].dtype
    ctx.save_for_backward(output)


def decay_grads(g: torch.Tensor, logd: torch.Tensor, w0_dtype: torch.dtype, z_dtype: torch.dtype):
    """Gradients of ``logd = -exp(w0 + z)`` from its output (its own derivative): d w0 (the column sums, in
    w0_dtype) and d z (in z_dtype). Shared with the decay GEMM epilogue's backward (``linear_triton.py``)."""
    gz = torch.mul(g, logd, out=new_empty(logd.shape, z_dtype, logd.device))  # in z's dtype in one launch
    return gz.reshape(-1, gz.shape[-1]).sum(0, dtype=torch.float32).to(w0_dtype), gz


def _decay_backward(ctx, g):
    (logd,) = ctx.saved_tensors
    return decay_grads(g, logd, ctx.w0_dtype, ctx.z_dtype)


torch.library.register_autograd("vision_rwkv::decay_logd", _decay_backward, setup_context=_decay_setup)


class _DecayLogd(torch.autograd.Function):
    @staticmethod
    def forward(ctx, w0, z):
        out = _decay_fwd(w0, z)
        _decay_setup(ctx, (w0, z), out)
        return out

    @staticmethod
    def backward(ctx, g):
        return _decay_backward(ctx, g)


def decay_logd_triton(w0: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Fused ``-exp(w0 + z)`` (w0 (C,) broadcast over z (..., C)), float32 result."""
    w0, z = w0.contiguous(), z.contiguous()
    return run_op(_decay_op, _DecayLogd, _decay_fwd, w0, z)


# ---------------------------------------------------------------------------------------------- residual + LayerNorm
@jit
def _ln_rows(v, mask, C, eps):
    mean = tl.sum(v, axis=1) / C
    d = tl.where(mask, v - mean[:, None], 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(d * d, axis=1) / C + eps)
    return d * rstd[:, None], rstd


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
    w = tl.load(LW + cols, mask=cmask, other=0.0).to(tl.float32)[None, :]
    b = tl.load(LB + cols, mask=cmask, other=0.0).to(tl.float32)[None, :]
    if HAS_GAMMA:
        g = tl.load(GAM + cols, mask=cmask, other=0.0).to(tl.float32)[None, :]
    else:
        g = tl.full([1, BC], 1.0, tl.float32)
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
    w = tl.load(LW + cols, mask=cmask, other=0.0).to(tl.float32)[None, :]
    b = tl.load(LB + cols, mask=cmask, other=0.0).to(tl.float32)[None, :]
    if HAS_GAMMA:
        g = tl.load(GAM + cols, mask=cmask, other=0.0).to(tl.float32)[None, :]
    else:
        g = tl.full([1, BC], 1.0, tl.float32)
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
    nprog, iters = _row_programs(nblocks)
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


def _an_backward(ctx, gs, gn):
    y, s, gamma, weight, bias, sample_scale = ctx.saved_tensors
    eps, post, x_dtype, y_dtype = ctx.meta
    gx, gy, sums = _add_norm_bwd_op(y, s if s is not None else y, gamma, weight, bias, eps, post, gs,
                                    None if post else gn, x_dtype, sample_scale, y_dtype)
    return (gx, gy, *split_param_grads(sums, gamma, weight, bias), None, None, None, None)


torch.library.register_autograd("vision_rwkv::add_norm", _an_backward, setup_context=_an_setup)


class _AddNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, y, gamma, weight, bias, eps, post, out_dtype, sample_scale):
        s, n = _add_norm_fwd(x, y, gamma, weight, bias, eps, post, out_dtype, sample_scale)
        _an_save(ctx, x, y, s, gamma, weight, bias, eps, post, sample_scale)
        return s, n

    @staticmethod
    def backward(ctx, gs, gn):
        y, s, gamma, weight, bias, sample_scale = ctx.saved_tensors
        eps, post, x_dtype, y_dtype = ctx.meta
        gx, gy, sums = _add_norm_bwd(y, s if s is not None else y, gamma, weight, bias, eps, post, gs,
                                     None if post else gn, x_dtype, sample_scale, y_dtype)
        return (gx, gy, *split_param_grads(sums, gamma, weight, bias), None, None, None, None)


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


# ---------------------------------------------------------------------------------------------- v6 ddlerp + LoRA
@jit
def _tsm_lora_fwd_kernel(X, A, HH, W2, OUT, A1, A2, A3, A4, NTOK, N, C, H, W, HS, Q1, Q2, Q3, plane,
                         M: tl.constexpr, R: tl.constexpr, SPLIT_A: tl.constexpr, BT: tl.constexpr, BC: tl.constexpr,
                         PREC: tl.constexpr, TANH: tl.constexpr):
    # TANH: HH holds the LoRA's pre-activation (eager inference: its tanh is formed here, no pass of its own)
    c, cmask, mask, n, q, offs = _tile(NTOK, N, C, H, W, HS, Q1, Q2, Q3, BT, BC)
    delta, valid = _neighbour(n, q, H, W)
    valid = valid & mask
    x = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
    src = offs + tl.where(valid, delta, 0).to(tl.int64) * C
    xx = tl.load(X + src, mask=valid, other=0.0).to(tl.float32) - x
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
