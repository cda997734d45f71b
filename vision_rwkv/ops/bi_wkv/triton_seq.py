"""Register-sequential Triton kernels for the v4 Bi-WKV (defined in ``reference.py``), both modes, forward and backward.

The scan kernels in ``triton.py`` hold a (tokens x channels) tile per program and scan it across threads
(``tl.associative_scan`` with 3-6 operands): most of their instructions are warp shuffles (see
``tools/kernel_report.py``). Here every thread owns whole channels: a chunk of L tokens (unrolled at compile time)
is walked token by token with the states in registers, loads are rows of channels (coalesced, vectorized when a
thread owns several adjacent channels), and nothing crosses threads. Values needed by a later walk in the other
direction are kept in compile-time tuples (registers).

Same math, chunk geometry, chunk summaries and carries as ``triton.py`` (whose carry kernel scans them over chunks;
see its docstring for the "original" mode's extra local streams h, J): per (b, c), x_t = e^{k_t - m} with one max
m, lam = e^{-w}, gam = e^{w};
    a_t = sum_{i<t} lam^{t-1-i} x_i v_i (and with v := 1),   b_t = sum_{i>t} lam^{i-t-1} x_i v_i,
    exact:    y_t = (a_t + b_t + e^u x_t v_t) / (same with v := 1),
    original: num_t = lam (a_t + b_t) + (1 - lam) h_t + kap J_t + D_t x_t v_t.
Backward with p = gy / den, q = -p y and the adjoint (transposed) states at, bt (and ht, jt) of p, q:
    gv = x gxv,  gk = x (v gxv + gx),  gxv = at_p + bt_p + e^u p (exact),  gu = e^u sum_t x (p v + q),
    gw = -lam sum_t (a_t . at_t + b_t . bt_t) (exact; "original" adds the coefficient derivatives).
"""
from __future__ import annotations

import torch
import triton.language as tl

from .._triton_utils import cdiv, check_out, launch_opts, new_empty, next_pow2
from ..triton_jit import jit
from .triton import _geometry, _load_bwd_carries, _load_fwd_carries, bwd_buffers, fwd_buffers, launch_carry

__all__ = ["seq_fwd", "seq_bwd", "seq_plan"]

_SIZES = ["T", "S", "NSUB", "NC"]  # C stays specializable: C % 16 == 0 lets the channel loads vectorize


@jit
def _row(p0, r, st, ok, other):
    """Row r (a compile-time offset from the chunk's first token, row pointers ``p0``) as fp32."""
    return tl.load(p0 + r * st, mask=ok, other=other).to(tl.float32)


@jit
def _chunk(K, V, W, skb, skt, skc, svb, svt, svc, T, C, S, NSUB, SCALE, L: tl.constexpr, BC: tl.constexpr):
    """Program (batch, channel block, chunk) -> b, chunk j, its first token s, valid length n, index q inside its
    original chunk, is-last flag, channels, mask, k / v row pointers, lam = e^{-w} (w = SCALE * the stored w)."""
    b = tl.program_id(0)
    cols = tl.program_id(1) * BC + tl.arange(0, BC)
    j = tl.program_id(2)
    s, n, q, is_last = _geometry(j, T, S, NSUB, L)
    cmask = cols < C
    pk = K + b.to(tl.int64) * skb + s.to(tl.int64) * skt + cols.to(tl.int64) * skc
    pv = V + b.to(tl.int64) * svb + s.to(tl.int64) * svt + cols.to(tl.int64) * svc
    lam = tl.exp(-tl.load(W + cols, mask=cmask, other=0.0) * SCALE)
    return b, j, s, n, q, is_last, cols, cmask, pk, pv, lam


@jit
def _diag(uu, lam, s, r, S, ORIG: tl.constexpr):
    """Coefficient of x_t v_t in the numerator: e^u (exact), D_t = e^u + [t not an original-chunk start](1 - e^w)."""
    if ORIG:
        return uu + tl.where((s + r) % S != 0, 1.0 - 1.0 / lam, 0.0)
    else:
        return uu


@jit
def _walk_back_states(pk, pv, skt, svt, n, cmask, m, lam, b_n, b_d, L: tl.constexpr):
    """Backward walk over the chunk: tuples of the anticausal exclusive states (b_n, b_d), in token order."""
    bns = ()
    bds = ()
    for r in tl.static_range(L - 1, -1, -1):
        ok = cmask & (r < n)
        x = tl.exp(_row(pk, r, skt, ok, -float("inf")) - m)
        v = _row(pv, r, svt, ok, 0.0)
        bns = (b_n,) + bns
        bds = (b_d,) + bds
        g = tl.where(r < n, lam, 1.0)
        b_n = b_n * g + x * v
        b_d = b_d * g + x
    return bns, bds


@jit
def _forward_part(a, h, jj, lam, ORIG: tl.constexpr):
    """The causal part of the numerator / denominator: a (exact), lam a + (1 - lam) h + kap J (original)."""
    if ORIG:
        gam = 1.0 / lam
        return lam * a + (1.0 - lam) * h + (1.0 - gam) * gam * jj
    else:
        return a


@jit
def _token_pq(pk, pv, pg, pr, r, skt, svt, sgt, ok, m, f_n, f_d, b_n, b_d, dg, HAS_GATE: tl.constexpr):
    """Token r: x = e^{k - m}, v, p = gy / den and q = -p y (0 where not ok), with the numerator
    f_n + b_n + dg x v (f: the causal part, b: the anticausal part with its coefficient); and with HAS_GATE (the
    output was sigmoid(g) y, ``pg`` holds its gradient and ``pr`` g, read with the same strides) gy = d out * s and
    d g = d out * y * s (1 - s), s = sigmoid(g), as the last value (0 without a gate)."""
    x = tl.exp(_row(pk, r, skt, ok, -float("inf")) - m)
    v = _row(pv, r, svt, ok, 0.0)
    gy = _row(pg, r, sgt, ok, 0.0)
    den = f_d + b_d + dg * x
    y = (f_n + b_n + dg * x * v) / den
    gg = tl.zeros_like(x)
    if HAS_GATE:
        sg = tl.sigmoid(_row(pr, r, sgt, ok, 0.0))
        gg = tl.where(ok, gy * y * sg * (1.0 - sg), 0.0)
        gy = gy * sg
    p = tl.where(ok, gy / den, 0.0)
    q = tl.where(ok, -p * y, 0.0)
    return x, v, p, q, gg


@jit
def _store_summary(SUMM, b, j, NC, C, cols, cmask, e0, e1, s0, s1, g0, g1, NSUM: tl.constexpr, ORIG: tl.constexpr):
    """Chunk j's summary slots in (B, NC, NSUM, C): 0, 1 decayed to its end, 2, 3 from its start, and in original
    mode 4, 5 the e^w-growth sums."""
    base = (b * NC + j).to(tl.int64) * NSUM * C
    tl.store(SUMM + base + 0 * C + cols, e0, mask=cmask)
    tl.store(SUMM + base + 1 * C + cols, e1, mask=cmask)
    tl.store(SUMM + base + 2 * C + cols, s0, mask=cmask)
    tl.store(SUMM + base + 3 * C + cols, s1, mask=cmask)
    if ORIG:
        tl.store(SUMM + base + 4 * C + cols, g0, mask=cmask)
        tl.store(SUMM + base + 5 * C + cols, g1, mask=cmask)


@jit
def _slot(SUMM, b, i, NC, C, cols, cmask, slot: tl.constexpr, NSUM: tl.constexpr, other):
    """Slot ``slot`` of chunk i (``other`` past the last chunk) in a (B, NC, NSUM, C) summary buffer, fp32."""
    return tl.load(SUMM + (b * NC + i).to(tl.int64) * NSUM * C + slot * C + cols, mask=cmask & (i < NC), other=other)


@jit
def _chunk_maxima(SUMM, b, NC, C, cols, cmask, NSUM: tl.constexpr, NCB: tl.constexpr):
    """The max m of k over the whole sequence and the NCB chunk maxima it is taken from (slot 4 of the packed
    summaries; -inf past the last chunk)."""
    mjs = ()
    mx = tl.full(cols.shape, -float("inf"), tl.float32)
    for i in tl.static_range(NCB):
        mj = _slot(SUMM, b, i, NC, C, cols, cmask, 4, NSUM, -float("inf"))
        mjs = mjs + (mj,)
        mx = tl.maximum(mx, mj)
    return tl.where(mx > -float("inf"), mx, 0.0), mjs


@jit
def _chunk_scales(mjs, m, NCB: tl.constexpr):
    """Per chunk, e^{max_i - m}: what its forward sums of x = e^{k - chunk max} are multiplied by (0 past the last
    chunk)."""
    scs = ()
    for i in tl.static_range(NCB):
        scs = scs + (tl.where(mjs[i] > -float("inf"), tl.exp(mjs[i] - m), 0.0),)
    return scs


@jit
def _unit_scales(cols, NCB: tl.constexpr):
    """NCB scales of 1 (summaries folded as stored)."""
    scs = ()
    for i in tl.static_range(NCB):
        scs = scs + (tl.full(cols.shape, 1.0, tl.float32),)
    return scs


@jit
def _fold_carries(SUMM, W, b, j, NC, C, cols, cmask, scs, SCALE, NSUM: tl.constexpr, L: tl.constexpr,
                  NCB: tl.constexpr):
    """Exact mode, without the carry kernel: chunk j's incoming states folded from all chunk summaries (NCB >= NC
    chunks, unrolled: every load independent of the folds; each thread keeps its own channels): causal from slots
    0, 1 of the chunks before j, c <- lam^L c + slot (every chunk but the last has L tokens), anticausal from
    slots 2, 3 of the chunks after j, last to first; chunk i's terms times scs[i] (:func:`_chunk_scales` for the
    forward's sums, :func:`_unit_scales` for the backward's)."""
    lam_l = tl.exp(-tl.load(W + cols, mask=cmask, other=0.0) * SCALE * L)
    z = tl.zeros(cols.shape, tl.float32)
    c0, c1, c2, c3 = z, z, z, z
    for i in tl.static_range(NCB - 1, -1, -1):  # anticausal: last chunk first (chunks past the last add zeros)
        after = i > j
        c2 = tl.where(after, c2 * lam_l + scs[i] * _slot(SUMM, b, i, NC, C, cols, cmask & after, 2, NSUM, 0.0), c2)
        c3 = tl.where(after, c3 * lam_l + scs[i] * _slot(SUMM, b, i, NC, C, cols, cmask & after, 3, NSUM, 0.0), c3)
    for i in tl.static_range(NCB):
        before = i < j
        c0 = tl.where(before, c0 * lam_l + scs[i] * _slot(SUMM, b, i, NC, C, cols, cmask & before, 0, NSUM, 0.0),
                      c0)
        c1 = tl.where(before, c1 * lam_l + scs[i] * _slot(SUMM, b, i, NC, C, cols, cmask & before, 1, NSUM, 0.0),
                      c1)
    return c0, c1, c2, c3


@jit
def _inline_fwd_carries(CAR, W, b, j, NC, C, cols, cmask, scs, SCALE, NCAR: tl.constexpr, L: tl.constexpr,
                        NCB: tl.constexpr):
    """The eight incoming forward states of the inline route: the folded a, b; the local streams h, J zero."""
    a_n, a_d, b_n, b_d = _fold_carries(CAR, W, b, j, NC, C, cols, cmask, scs, SCALE, NCAR, L, NCB)
    z = tl.zeros_like(a_n)
    return a_n, a_d, b_n, b_d, z, z, z, z


@jit
def _fwd_carries_in(CAR, W, b, j, NC, C, cols, cmask, q, m, SCALE, NCAR: tl.constexpr, ORIG: tl.constexpr,
                    INLINE: tl.constexpr, L: tl.constexpr, NCB: tl.constexpr):
    """Chunk j's incoming forward states (m: the sequence's max of k, as stored): folded from the packed summaries
    (INLINE, exact mode; the local streams h, J zero) or loaded from the carry kernel's buffer."""
    if INLINE:
        _, mjs = _chunk_maxima(CAR, b, NC, C, cols, cmask, NCAR, NCB)
        return _inline_fwd_carries(CAR, W, b, j, NC, C, cols, cmask, _chunk_scales(mjs, m, NCB), SCALE, NCAR, L, NCB)
    return _load_fwd_carries(CAR, b, j, NC, C, cols, cmask, q, NCAR, ORIG)


def _seq_fwd_summary_kernel(K, V, W, SUMM, MJ, skb, skt, skc, svb, svt, svc, T, C, S, NSUB, NC, SCALE,
                            NSUM: tl.constexpr, ORIG: tl.constexpr, PACK_MJ: tl.constexpr, L: tl.constexpr,
                            BC: tl.constexpr):
    """Pass 1: per chunk, its max of k and the decayed sums of x = e^{k - max} (and x v) to its end / start
    (original: also the e^w-growth sums of the tokens that do not start an original chunk). PACK_MJ: the max goes
    to slot 4 of SUMM (NSUM = 5: the packed summaries the inline carries read), not to MJ."""
    b, j, s, n, q, is_last, cols, cmask, pk, pv, lam = _chunk(K, V, W, skb, skt, skc, svb, svt, svc, T, C, S, NSUB,
                                                              SCALE, L, BC)
    ks = ()
    vs = ()
    mj = tl.full([BC], -float("inf"), tl.float32)
    for r in tl.static_range(L):
        ok = cmask & (r < n)
        kr = _row(pk, r, skt, ok, -float("inf"))
        ks = ks + (kr,)
        vs = vs + (_row(pv, r, svt, ok, 0.0),)
        mj = tl.maximum(mj, kr)
    ms = tl.where(mj > -float("inf"), mj, 0.0)
    z = tl.zeros([BC], tl.float32)
    e_n, e_d, s_n, s_d, g_n, g_d = z, z, z, z, z, z  # sums to the chunk's end, from its start, growth sums
    pw = tl.full([BC], 1.0, tl.float32)
    for r in tl.static_range(L):
        x = tl.exp(ks[r] - ms)
        g = tl.where(r < n, lam, 1.0)
        e_n = e_n * g + x * vs[r]
        e_d = e_d * g + x
        s_n += pw * x * vs[r]
        s_d += pw * x
        pw = pw * lam
        if ORIG:
            xk = tl.where((s + r) % S != 0, x, 0.0)
            gg = tl.where(r < n, 1.0 / lam, 1.0)
            g_n = g_n * gg + xk * vs[r]
            g_d = g_d * gg + xk
    _store_summary(SUMM, b, j, NC, C, cols, cmask, e_n, e_d, s_n, s_d, g_n, g_d, NSUM, ORIG)
    if PACK_MJ:
        tl.store(SUMM + (b * NC + j).to(tl.int64) * NSUM * C + 4 * C + cols, mj, mask=cmask)
    else:
        tl.store(MJ + (b * NC + j).to(tl.int64) * C + cols, mj, mask=cmask)


def _seq_fwd_kernel(K, V, W, U, Y, M, CAR, G, skb, skt, skc, svb, svt, svc, sgb, sgt, sgc, T, C, S, NSUB, NC, SCALE,
                    NCAR: tl.constexpr, ORIG: tl.constexpr, SINGLE: tl.constexpr, HAS_GATE: tl.constexpr,
                    INLINE: tl.constexpr, L: tl.constexpr, BC: tl.constexpr, NCB: tl.constexpr):
    """Pass 3 (the whole forward when SINGLE): y for one chunk (HAS_GATE: sigmoid(g) * y, g read like k). INLINE:
    CAR holds the packed summaries (no carry kernel ran): m and the incoming states are folded from them here, and
    chunk 0's programs store m."""
    b, j, s, n, q, is_last, cols, cmask, pk, pv, lam = _chunk(K, V, W, skb, skt, skc, svb, svt, svc, T, C, S, NSUB,
                                                              SCALE, L, BC)
    uu = tl.exp(tl.load(U + cols, mask=cmask, other=0.0) * SCALE)
    if SINGLE:
        mx = tl.full([BC], -float("inf"), tl.float32)
        for r in tl.static_range(L):
            mx = tl.maximum(mx, _row(pk, r, skt, cmask & (r < n), -float("inf")))
        m = tl.where(mx > -float("inf"), mx, 0.0)
        tl.store(M + b.to(tl.int64) * C + cols, m, mask=cmask)
        z = tl.zeros([BC], tl.float32)
        a_n, a_d, b_n, b_d, h_n, h_d, j_n, j_d = z, z, z, z, z, z, z, z
    else:
        if INLINE:  # (the chunk maxima loaded once: for m and for the scales of the folded summaries)
            m, mjs = _chunk_maxima(CAR, b, NC, C, cols, cmask, NCAR, NCB)
            tl.store(M + b.to(tl.int64) * C + cols, m, mask=cmask & (j == 0))
            a_n, a_d, b_n, b_d, h_n, h_d, j_n, j_d = _inline_fwd_carries(CAR, W, b, j, NC, C, cols, cmask,
                                                                         _chunk_scales(mjs, m, NCB), SCALE, NCAR,
                                                                         L, NCB)
        else:
            m = tl.load(M + b.to(tl.int64) * C + cols, mask=cmask, other=0.0)
            a_n, a_d, b_n, b_d, h_n, h_d, j_n, j_d = _load_fwd_carries(CAR, b, j, NC, C, cols, cmask, q, NCAR, ORIG)
    fns = ()
    fds = ()
    xs = ()
    xvs = ()
    for r in tl.static_range(L):
        ok = cmask & (r < n)
        x = tl.exp(_row(pk, r, skt, ok, -float("inf")) - m)
        xv = x * _row(pv, r, svt, ok, 0.0)
        fns = fns + (_forward_part(a_n, h_n, j_n, lam, ORIG),)
        fds = fds + (_forward_part(a_d, h_d, j_d, lam, ORIG),)
        xs = xs + (x,)
        xvs = xvs + (xv,)
        a_n = a_n * lam + xv
        a_d = a_d * lam + x
        if ORIG:
            h_n = h_n * lam + xv
            h_d = h_d * lam + x
            keep = (s + r) % S != 0
            j_n = j_n / lam + tl.where(keep, xv, 0.0)
            j_d = j_d / lam + tl.where(keep, x, 0.0)
    bc = lam if ORIG else 1.0  # coefficient of the anticausal state
    py = Y + (b.to(tl.int64) * T + s) * C + cols
    pg = G + b.to(tl.int64) * sgb + s.to(tl.int64) * sgt + cols.to(tl.int64) * sgc
    for r in tl.static_range(L - 1, -1, -1):
        ok = cmask & (r < n)
        dg = _diag(uu, lam, s, r, S, ORIG)
        y = (fns[r] + bc * b_n + dg * xvs[r]) / (fds[r] + bc * b_d + dg * xs[r])
        if HAS_GATE:
            y = tl.sigmoid(_row(pg, r, sgt, ok, 0.0)) * y
        tl.store(py + r * C, y.to(Y.dtype.element_ty), mask=ok)
        g = tl.where(r < n, lam, 1.0)
        b_n = b_n * g + xvs[r]
        b_d = b_d * g + xs[r]


@jit
def _bwd_prologue(K, V, GY, RG, W, U, M, skb, skt, skc, svb, svt, svc, sgb, sgt, sgc, T, C, S, NSUB, SCALE,
                  L: tl.constexpr, BC: tl.constexpr):
    """``_chunk`` plus the row pointers of gy and of the gate RG (gy's strides), e^u and the max m."""
    b, j, s, n, q, is_last, cols, cmask, pk, pv, lam = _chunk(K, V, W, skb, skt, skc, svb, svt, svc, T, C, S, NSUB,
                                                              SCALE, L, BC)
    goff = b.to(tl.int64) * sgb + s.to(tl.int64) * sgt + cols.to(tl.int64) * sgc
    uu = tl.exp(tl.load(U + cols, mask=cmask, other=0.0) * SCALE)
    m = tl.load(M + b.to(tl.int64) * C + cols, mask=cmask, other=0.0)
    return b, j, s, n, q, is_last, cols, cmask, pk, pv, GY + goff, RG + goff, lam, uu, m


def _seq_bwd_summary_kernel(K, V, GY, RG, W, U, M, CAR, SUMM, skb, skt, skc, svb, svt, svc, sgb, sgt, sgc, T, C, S,
                            NSUB, NC, SCALE, NSUM: tl.constexpr, NCAR: tl.constexpr, ORIG: tl.constexpr,
                            HAS_GATE: tl.constexpr, INLINE: tl.constexpr, L: tl.constexpr, BC: tl.constexpr,
                            NCB: tl.constexpr):
    """Backward pass 1: per chunk, the decayed sums of p = gy / den and q = -p y to its end / start (original: also
    the e^w-growth sums from its start). HAS_GATE: GY is the gradient of sigmoid(RG) * y (see ``_token_pq``)."""
    b, j, s, n, q, is_last, cols, cmask, pk, pv, pg, pr, lam, uu, m = _bwd_prologue(
        K, V, GY, RG, W, U, M, skb, skt, skc, svb, svt, svc, sgb, sgt, sgc, T, C, S, NSUB, SCALE, L, BC)
    a_n, a_d, b_n, b_d, h_n, h_d, j_n, j_d = _fwd_carries_in(CAR, W, b, j, NC, C, cols, cmask, q, m, SCALE, NCAR,
                                                             ORIG, INLINE, L, NCB)
    bns, bds = _walk_back_states(pk, pv, skt, svt, n, cmask, m, lam, b_n, b_d, L)
    bc = lam if ORIG else 1.0
    z = tl.zeros([BC], tl.float32)
    e_p, e_q, s_p, s_q, g_p, g_q = z, z, z, z, z, z
    pw = tl.full([BC], 1.0, tl.float32)
    pg_ = tl.full([BC], 1.0, tl.float32)
    for r in tl.static_range(L):
        ok = cmask & (r < n)
        x, v, p, qq, _ = _token_pq(pk, pv, pg, pr, r, skt, svt, sgt, ok, m, _forward_part(a_n, h_n, j_n, lam, ORIG),
                                   _forward_part(a_d, h_d, j_d, lam, ORIG), bc * bns[r], bc * bds[r],
                                   _diag(uu, lam, s, r, S, ORIG), HAS_GATE)
        g = tl.where(r < n, lam, 1.0)
        e_p = e_p * g + p
        e_q = e_q * g + qq
        s_p += pw * p
        s_q += pw * qq
        pw = pw * lam
        a_n = a_n * lam + x * v
        a_d = a_d * lam + x
        if ORIG:
            g_p += pg_ * p
            g_q += pg_ * qq
            pg_ = pg_ / lam
            h_n = h_n * lam + x * v
            h_d = h_d * lam + x
            keep = (s + r) % S != 0
            j_n = j_n / lam + tl.where(keep, x * v, 0.0)
            j_d = j_d / lam + tl.where(keep, x, 0.0)
    _store_summary(SUMM, b, j, NC, C, cols, cmask, e_p, e_q, s_p, s_q, g_p, g_q, NSUM, ORIG)


def _seq_bwd_kernel(K, V, GY, RG, W, U, M, CAR, BCAR, GK, GV, GG, GWP, GUP, skb, skt, skc, svb, svt, svc, sgb, sgt,
                    sgc, T, C, S, NSUB, NC, SCALE, NCAR: tl.constexpr, ORIG: tl.constexpr, SINGLE: tl.constexpr,
                    HAS_GATE: tl.constexpr, INLINE: tl.constexpr, L: tl.constexpr, BC: tl.constexpr,
                    NCB: tl.constexpr):
    """Backward pass 3 (the whole backward when SINGLE): gk, gv and per-chunk partial sums of gw, gu; with HAS_GATE
    (GY the gradient of sigmoid(RG) * y) also d RG into GG (contiguous, like GK). INLINE: CAR holds the forward's
    packed summaries and BCAR pass 1's (4 slots), both folded here (no carry kernels ran)."""
    b, j, s, n, q, is_last, cols, cmask, pk, pv, pg, pr, lam, uu, m = _bwd_prologue(
        K, V, GY, RG, W, U, M, skb, skt, skc, svb, svt, svc, sgb, sgt, sgc, T, C, S, NSUB, SCALE, L, BC)
    rows0 = (b.to(tl.int64) * T + s) * C + cols  # (the chunk's first row in the contiguous outputs GK, GV, GG)
    z = tl.zeros([BC], tl.float32)
    if SINGLE:
        a_n, a_d, b_n, b_d, h_n, h_d, j_n, j_d = z, z, z, z, z, z, z, z
        bt_p, bt_q, at_p, at_q, ht_p, ht_q, jt_p, jt_q = z, z, z, z, z, z, z, z
    else:
        a_n, a_d, b_n, b_d, h_n, h_d, j_n, j_d = _fwd_carries_in(CAR, W, b, j, NC, C, cols, cmask, q, m, SCALE,
                                                                 NCAR, ORIG, INLINE, L, NCB)
        if INLINE:
            ones = _unit_scales(cols, NCB)
            bt_p, bt_q, at_p, at_q = _fold_carries(BCAR, W, b, j, NC, C, cols, cmask, ones, SCALE, 4, L, NCB)
            ht_p, ht_q, jt_p, jt_q = z, z, z, z
        else:
            bt_p, bt_q, at_p, at_q, ht_p, ht_q, jt_p, jt_q = _load_bwd_carries(BCAR, b, j, NC, C, cols, cmask,
                                                                               is_last, NCAR, ORIG)
    bns, bds = _walk_back_states(pk, pv, skt, svt, n, cmask, m, lam, b_n, b_d, L)
    bc = lam if ORIG else 1.0
    gam = 1.0 / lam
    kap = (1.0 - gam) * gam
    # forward walk: y, p, q; causal states a (h, J) and the causal adjoint states bt (all exclusive)
    gw_b = z  # sum b . bt
    gw_c = z  # original: the coefficient derivatives at fixed states
    gu = z
    ans, ads, hns, hds, jns, jds, ps, qs, gxvs, gxs = (), (), (), (), (), (), (), (), (), ()
    for r in tl.static_range(L):
        ok = cmask & (r < n)
        dg = _diag(uu, lam, s, r, S, ORIG)
        x, v, p, qq, gg = _token_pq(pk, pv, pg, pr, r, skt, svt, sgt, ok, m, _forward_part(a_n, h_n, j_n, lam, ORIG),
                                    _forward_part(a_d, h_d, j_d, lam, ORIG), bc * bns[r], bc * bds[r], dg, HAS_GATE)
        if HAS_GATE:
            tl.store(GG + rows0 + r * C, gg.to(GG.dtype.element_ty), mask=ok)
        gw_b += tl.where(ok, bns[r] * bt_p + bds[r] * bt_q, 0.0)
        gu += x * (p * v + qq)
        if ORIG:
            ddd = tl.where((s + r) % S != 0, -gam, 0.0)
            dkap = gam - 2.0 * gam * gam
            gw_c += tl.where(ok, p * (-lam * (a_n + bns[r]) + lam * h_n + dkap * j_n + ddd * x * v)
                             + qq * (-lam * (a_d + bds[r]) + lam * h_d + dkap * j_d + ddd * x), 0.0)
            hns = hns + (h_n,)
            hds = hds + (h_d,)
            jns = jns + (j_n,)
            jds = jds + (j_d,)
            h_n = h_n * lam + x * v
            h_d = h_d * lam + x
            keep = (s + r) % S != 0
            j_n = j_n * gam + tl.where(keep, x * v, 0.0)
            j_d = j_d * gam + tl.where(keep, x, 0.0)
        ans = ans + (a_n,)
        ads = ads + (a_d,)
        ps = ps + (p,)
        qs = qs + (qq,)
        gxvs = gxvs + (bc * bt_p + dg * p,)
        gxs = gxs + (bc * bt_q + dg * qq,)
        a_n = a_n * lam + x * v
        a_d = a_d * lam + x
        bt_p = bt_p * lam + p
        bt_q = bt_q * lam + qq
    # backward walk: anticausal adjoint states at (ht, jt), exclusive; then the gradients
    gw_a = z  # sum a . at
    gw_h = z
    gw_j = z
    pgk = GK + rows0
    pgv = GV + rows0
    for r in tl.static_range(L - 1, -1, -1):
        ok = cmask & (r < n)
        x = tl.exp(_row(pk, r, skt, ok, -float("inf")) - m)
        v = _row(pv, r, svt, ok, 0.0)
        gxv = gxvs[r] + bc * at_p
        gx = gxs[r] + bc * at_q
        gw_a += tl.where(ok, ans[r] * at_p + ads[r] * at_q, 0.0)
        if ORIG:
            keep = (s + r) % S != 0
            jm_p = tl.where(keep, jt_p, 0.0)
            jm_q = tl.where(keep, jt_q, 0.0)
            gxv += (1.0 - lam) * ht_p + kap * jm_p
            gx += (1.0 - lam) * ht_q + kap * jm_q
            gw_h += tl.where(ok, hns[r] * ht_p + hds[r] * ht_q, 0.0)
            gw_j += tl.where(ok, jns[r] * jm_p + jds[r] * jm_q, 0.0)
        tl.store(pgk + r * C, (x * (v * gxv + gx)).to(GK.dtype.element_ty), mask=ok)
        tl.store(pgv + r * C, (x * gxv).to(GV.dtype.element_ty), mask=ok)
        g = tl.where(r < n, lam, 1.0)
        at_p = at_p * g + ps[r]
        at_q = at_q * g + qs[r]
        if ORIG:
            ht_p = ht_p * g + ps[r]
            ht_q = ht_q * g + qs[r]
            gg = tl.where(r < n, gam, 1.0)
            jt_p = jt_p * gg + ps[r]
            jt_q = jt_q * gg + qs[r]
    if ORIG:
        gw = gw_c - lam * lam * (gw_a + gw_b) - lam * (1.0 - lam) * gw_h + gam * kap * gw_j
    else:
        gw = -lam * (gw_a + gw_b)
    poff = (b * NC + j).to(tl.int64) * C + cols
    tl.store(GWP + poff, gw * SCALE, mask=cmask)  # gradients of the stored w, u (used as SCALE * w, SCALE * u)
    tl.store(GUP + poff, uu * gu * SCALE, mask=cmask)


_KERNELS = {name: jit(fn, do_not_specialize=_SIZES) for name, fn in (
    ("fwd_summary", _seq_fwd_summary_kernel), ("fwd", _seq_fwd_kernel), ("bwd_summary", _seq_bwd_summary_kernel),
    ("bwd", _seq_bwd_kernel))}


# ------------------------------------------------------------------------------------------------- host side
def seq_plan(T: int, mode: str, chunks: int, cfg: dict):
    """Chunk geometry (S, L, NSUB, NC, single) as ``triton._plan``: kernel chunks of L tokens (``seq_t``; original
    mode ``seq_t_orig``, at most a power of two covering S) that never straddle an original chunk of S tokens."""
    if mode == "exact":
        S = T
        L = min(next_pow2(T), next_pow2(cfg["seq_t"]))
    else:
        S = cdiv(T, chunks)
        L = min(next_pow2(S), next_pow2(cfg["seq_t_orig"]))
    NSUB = cdiv(S, L)
    NC = cdiv(T, S) * NSUB
    return S, L, NSUB, NC, NC == 1


def seq_carry_slots(NC: int, single: bool, mode: str, cfg: dict) -> int:
    """Slots per chunk of the carry buffer a seq forward returns: 0 for one chunk; 5 where exact mode folds the
    carries inline (``seq_carry_inline``: at most that many chunks; the buffer then holds pass 1's summaries and
    chunk maxima, and no carry kernel runs, forward or backward); else the carry kernel's 4 (original: 8)."""
    if single:
        return 0
    if mode == "exact" and NC <= cfg["seq_carry_inline"]:
        return 5
    return 8 if mode == "original" else 4


def _blocks(C: int, cfg: dict, key: str):
    """(channels per program, warps): ``cfg[key]`` channels (a power of two >= 32 or covering C), seq_warps warps."""
    BC = min(next_pow2(cfg[key]), max(32, next_pow2(C)))
    return BC, max(1, min(cfg["seq_warps"], BC // 32))


def _launch_opts(nw: int, cfg: dict, key: str) -> dict:
    """Launch options of the chunk kernels: their warps and the register cap ``cfg[key]`` (``seq_maxnreg`` forward,
    ``seq_bwd_maxnreg`` backward; the 1-warp output programs take 143 / 255 registers: ~14 / 8 resident per SM, 64
    registers would allow the 32-block limit)."""
    return launch_opts(nw, cfg.get(key, 0))


def seq_fwd(w, u, k, v, mode: str, chunks: int, cfg: dict, scale: float = 1.0, gate=None):
    """Forward: (y, m, carries) as ``triton._fwd`` returns them (same carry layout); with ``gate`` (k's shape, any
    strides) y is ``sigmoid(gate) * y``, formed as it is stored."""
    B, T, C = k.shape
    orig = mode == "original"
    S, L, NSUB, NC, single = seq_plan(T, mode, chunks, cfg)
    BC, nw = _blocks(C, cfg, "seq_bc")
    dev = k.device
    ncar = seq_carry_slots(NC, single, mode, cfg)
    inline = ncar == 5
    y, m, car, w32, u32 = fwd_buffers(w, u, k, v, NC, ncar, single)
    grid = (B, cdiv(C, BC), NC)
    if not single:  # (inline: the summaries and chunk maxima packed in car, the carry buffer's place)
        nsum = ncar if inline else 6 if orig else 4
        summ = car if inline else new_empty((B, NC, nsum, C), torch.float32, dev)
        mj = car if inline else new_empty((B, NC, C), torch.float32, dev)
        _KERNELS["fwd_summary"][grid](k, v, w32, summ, mj, *k.stride(), *v.stride(), T, C, S, NSUB, NC, scale,
                                      NSUM=nsum, ORIG=orig, PACK_MJ=inline, L=L, BC=BC,
                                      **_launch_opts(nw, cfg, "seq_maxnreg"))
        if not inline:
            launch_carry(summ, mj, w32, car, m, T, C, S, NSUB, NC, L, orig, True,
                         min(cfg["carry_block_c"], next_pow2(C)), scale)
    g = k if gate is None else gate
    _KERNELS["fwd"][grid](k, v, w32, u32, y, m, car, g, *k.stride(), *v.stride(), *g.stride(), T, C, S, NSUB, NC,
                          scale, NCAR=ncar, ORIG=orig, SINGLE=single, HAS_GATE=gate is not None, INLINE=inline,
                          L=L, BC=BC, NCB=next_pow2(NC) if inline else 1, **_launch_opts(nw, cfg, "seq_maxnreg"))
    return y, m, car


def seq_bwd(w, u, k, v, m, car, gy, mode: str, chunks: int, cfg: dict, scale: float = 1.0, out=None, gate=None,
            gate_out=None):
    """Backward: (gwu, gk, gv); gwu (2, C) fp32 = d w and d u stacked (one reduction launch); ``out``: the (gk, gv)
    buffers to write (``triton.bwd_buffers``). ``gate`` (k's shape): the forward was ``seq_fwd(gate=)`` and ``gy``
    the gradient of its output sigmoid(gate) * y - y, never stored, is recomputed here - and the result gains d gate
    (in gate's dtype; ``gate_out``: a contiguous buffer for it)."""
    B, T, C = k.shape
    orig = mode == "original"
    S, L, NSUB, NC, single = seq_plan(T, mode, chunks, cfg)
    BC, nw = _blocks(C, cfg, "seq_bc")
    dev = k.device
    nsum = 6 if orig else 4
    ncar = 0 if single else car.shape[2]  # (as the forward chose: 5 = its packed summaries, carries folded inline)
    inline = ncar == 5
    ncb = next_pow2(NC) if inline else 1
    w32, u32, gk, gv, parts = bwd_buffers(w, u, k, v, NC, out)
    gg = rg = None
    if gate is not None:  # (read with gy's strides: both made contiguous)
        gy, rg = gy.contiguous(), gate.contiguous()
        if gate_out is None:
            gg = new_empty((B, T, C), gate.dtype, dev)
        else:
            check_out("bi_wkv", ("ggate",), (gate_out,), (gate,))
            gg = gate_out
    if not single:
        summ = new_empty((B, NC, nsum, C), torch.float32, dev)
        bcar = summ if inline else new_empty((B, NC, ncar, C), torch.float32, dev)
        _KERNELS["bwd_summary"][(B, cdiv(C, BC), NC)](
            k, v, gy, gy if rg is None else rg, w32, u32, m, car, summ, *k.stride(), *v.stride(), *gy.stride(), T, C,
            S, NSUB, NC, scale, NSUM=nsum, NCAR=ncar, ORIG=orig, HAS_GATE=rg is not None, INLINE=inline, L=L,
            BC=BC, NCB=ncb, **_launch_opts(nw, cfg, "seq_bwd_maxnreg"))
        if not inline:
            launch_carry(summ, summ, w32, bcar, m, T, C, S, NSUB, NC, L, orig, False,
                         min(cfg["carry_block_c"], next_pow2(C)), scale)
    else:
        bcar = car
    BCB, nwb = _blocks(C, cfg, "seq_bwd_bc")  # the backward's last kernel holds 6 (original: 10) values per token
    _KERNELS["bwd"][(B, cdiv(C, BCB), NC)](
        k, v, gy, gy if rg is None else rg, w32, u32, m, car, bcar, gk, gv, gk if gg is None else gg, parts[0],
        parts[1], *k.stride(), *v.stride(), *gy.stride(), T, C, S, NSUB, NC, scale, NCAR=ncar, ORIG=orig,
        SINGLE=single, HAS_GATE=rg is not None, INLINE=inline, L=L, BC=BCB, NCB=ncb,
        **_launch_opts(nwb, cfg, "seq_bwd_maxnreg"))
    if gg is not None:
        return parts.sum(1), gk, gv, gg
    return parts.sum(1), gk, gv
