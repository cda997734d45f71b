"""Triton kernels for the v4 Bi-WKV (defined in ``reference.py``), forward and backward, modes "exact" and "original".

Math (per batch b and channel c; w, u are the PER-STEP decay and bonus, lam = e^{-w}, U = e^{u}):
    x_t = e^{k_t - m} with m = max_t k_t (one max per (b, c): every decay factor of a whole sequence is bounded by
    e^{|w| T}, so one shift keeps all sums finite and exact in fp32 accumulation),
    a_t = sum_{i<t} lam^{t-1-i} x_i (v_i)    causal exclusive state,   b_t = sum_{i>t} lam^{i-t-1} x_i (v_i),
    exact:    Num_t = a_t + b_t + U x_t v_t,  Den_t = same with v := 1,  y_t = Num_t / Den_t            (Eq. 5)
    original (chunks of S = ceil(T/P) tokens, s_o = start of t's chunk, gam = e^{w}):
              Num_t = lam (a_t + b_t) + (1 - lam) h_t + kap J_t + D_t x_t v_t with
              h_t = sum_{s_o <= i < t} lam^{t-1-i} x_i v_i,  J_t = sum_{s_o < i < t} gam^{t-1-i} x_i v_i,
              kap = (1 - e^w) e^w,  D_t = U + [t > s_o] (1 - e^w)
    which is the closed form of the pre-2025 kernel (the "original" weights listed in ``reference.py``).

Parallel form: the sequence is cut into kernel chunks of BT tokens (never straddling an "original" chunk). Pass 1
writes per-chunk summaries (chunk max of k and decayed sums), pass 2 scans the summaries over chunks (one program per
(b, channel block), associative scans over blocks of chunks) and writes each chunk's incoming states, pass 3 scans
inside each chunk (tl.associative_scan over the token axis, carries injected afterwards) and writes y. Short
sequences (one chunk) run pass 3 alone. Exclusive scans of loaded inputs use shifted loads; exclusive scans of values
computed in registers (the backward's adjoint scans of p = gy/Den, q = -p y) use a 6-tuple monoid that carries
"the state before the last element" alongside the inclusive state.

Backward (no tensors saved besides the inputs, m and the per-chunk forward carries): recompute Num/Den, then with
p_t = gy_t / Den_t, q_t = -p_t y_t the input gradients are the TRANSPOSED weight operator applied to p and q:
    gv = x * (W^T p),  gk = x * (v * (W^T p) + W^T q),  gu = U sum_t x_t (p_t v_t + q_t),
and gw uses the adjoint identity d/dgate sum_t c_t S_t = sum_tau S_tau * (transposed scan of c)_tau.
"""
from __future__ import annotations

import inspect
from typing import Optional

import torch
import triton.language as tl

from .._triton_utils import (GRID_YZ_MAX, cdiv, check_float, check_out, check_same_device, config_from_env,
                             new_empty, next_pow2, run_op, split_param_grads)
from ..triton_jit import jit

__all__ = ["bi_wkv_triton", "CONFIG"]

# Launch configuration (the benchmark may override entries). single_max_t: the longest T handled by one chunk
# (pass 3 alone); chunk_t: kernel chunk length otherwise; block_c: channels per program; carry_ncb: chunks per scan
# block in pass 2.
# max_tile: the most elements (BT * BC) of one program's tile. scalar=1: kernels compiled without pointer-alignment
# specialization (scalar, still coalesced loads), so each thread owns one channel and the whole chunk of tokens and
# the scans run sequentially in registers; the channel block is then 32 * warps. $VRWKV_TRITON_V4="key=value,..."
# overrides.
# seq=1: both modes run the register-sequential kernels of triton_seq.py (chunks of seq_t tokens, seq_t_orig in
# mode "original", walked in registers; seq_bc channels per program, seq_bwd_bc for the backward's last kernel,
# seq_warps warps; same carry kernel). The default since an H200 run (round 6, benchmarks/results/README.md): its CUDA
# tests passed and fwd+bwd ran 1.9x faster as GPU time (CUDA graph, geomean of 12 shapes), 1.07x eager; seq=0: the
# tile-scan kernels of this file. seq_maxnreg / seq_bwd_maxnreg: a register cap per thread on the seq forward /
# backward kernels (0: none; more resident programs, with spills) - opt-ins until timed. seq_carry_inline: in mode
# "exact", sequences of at most this many seq chunks skip the carry kernel - each chunk's program folds all chunk
# summaries into its incoming states itself (unrolled over the chunks; O(chunks) more L2 reads per program, O(chunks^2)
# in all): one Triton launch less per forward and per backward (224 px: 196 tokens, 13 chunks; 12 + 12 of a VRWKV-T
# training step's 192), for ~2x the instructions of the three chunk kernels (sm_90: fwd 1440 -> 2472) and ~100 MB
# more L2 reads per call at (256, 196, 192) - a win only where launches cost more than that (eager), so an opt-in
# until the sweep times it (0: never).
CONFIG = config_from_env(dict(single_max_t=32, chunk_t=32, block_c=32, warps=4, carry_ncb=32, carry_block_c=32,
                              max_tile=2048, scalar=0, seq=1, seq_t=16, seq_t_orig=8, seq_bc=64, seq_bwd_bc=32,
                              seq_warps=1, seq_maxnreg=0, seq_bwd_maxnreg=0, seq_carry_inline=0),
                         "VRWKV_TRITON_V4")


# ------------------------------------------------------------------------------------------------- jit helpers
@jit
def _lin_comb(g1, n1, d1, g2, n2, d2):
    # composition of affine maps s -> g s + (n, d); the left operand comes first in processing order
    return g1 * g2, g2 * n1 + n2, g2 * d1 + d2


@jit
def _excl_comb(g1, h1, p1, q1, ep1, eq1, g2, h2, p2, q2, ep2, eq2):
    # (g, p, q): inclusive affine map; (h, ep, eq): map giving the state BEFORE the segment's last element
    return g1 * g2, g1 * h2, g2 * p1 + p2, g2 * q1 + q2, h2 * p1 + ep2, h2 * q1 + eq2


@jit
def _geometry(j, T, S, NSUB, BT: tl.constexpr):
    """Kernel chunk j -> (start token, length, sub-index inside its original chunk, is last sub-chunk)."""
    o = j // NSUB
    q = j - o * NSUB
    s = o * S + q * BT
    oe = tl.minimum((o + 1) * S, T)
    e = tl.minimum(s + BT, oe)
    n = tl.maximum(e - s, 0)
    return s, n, q, e >= oe


@jit
def _load_tile(base, rows, cols, st, sc, mask, other):
    ptrs = base + rows.to(tl.int64)[:, None] * st + cols.to(tl.int64)[None, :] * sc
    return tl.load(ptrs, mask=mask, other=other).to(tl.float32)


@jit
def _load_vec(base, cols, cmask):
    return tl.load(base + cols, mask=cmask, other=0.0).to(tl.float32)


@jit
def _forward_states(kb, vb, skt, skc, svt, svc, s, n, r, cols, cmask, m, lam, gam,
                    ca_n, ca_d, cb_n, cb_d, ch_n, ch_d, cj_n, cj_d, S, ORIG: tl.constexpr):
    """Load one chunk and return x, v and the causal / anticausal (and local) exclusive states."""
    t = s + r
    valid = r < n
    cm = cmask[None, :]
    m2 = valid[:, None] & cm
    k = _load_tile(kb, t, cols, skt, skc, m2, -float("inf"))
    v = _load_tile(vb, t, cols, svt, svc, m2, 0.0)
    x = tl.exp(k - m[None, :])
    # causal exclusive scan: row r >= 1 takes token t-1, carry injected through the gate product
    mp = ((r >= 1) & valid)[:, None] & cm
    kp = _load_tile(kb, t - 1, cols, skt, skc, mp, -float("inf"))
    vp = _load_tile(vb, t - 1, cols, svt, svc, mp, 0.0)
    xp = tl.exp(kp - m[None, :])
    xvp = xp * vp
    lam2 = lam[None, :] + tl.zeros_like(x)
    g_c = tl.where((r >= 1)[:, None], lam2, 1.0)
    gc, an, ad = tl.associative_scan((g_c, xvp, xp), 0, _lin_comb)
    # anticausal exclusive scan: row r < n-1 takes token t+1
    mn = ((r + 1) < n)[:, None] & cm
    kn = _load_tile(kb, t + 1, cols, skt, skc, mn, -float("inf"))
    vn = _load_tile(vb, t + 1, cols, svt, svc, mn, 0.0)
    xn = tl.exp(kn - m[None, :])
    g_a = tl.where(((r + 1) < n)[:, None], lam2, 1.0)
    ga, bn, bd = tl.associative_scan((g_a, xn * vn, xn), 0, _lin_comb, reverse=True)
    a_n = an + gc * ca_n[None, :]
    a_d = ad + gc * ca_d[None, :]
    b_n = bn + ga * cb_n[None, :]
    b_d = bd + ga * cb_d[None, :]
    if ORIG:
        h_n = an + gc * ch_n[None, :]
        h_d = ad + gc * ch_d[None, :]
        g_j = tl.where((r >= 1)[:, None], gam[None, :] + tl.zeros_like(x), 1.0)
        keep = (((t - 1) % S) != 0)[:, None]
        xpj = tl.where(keep, xp, 0.0)
        gj, jn, jd = tl.associative_scan((g_j, xpj * vp, xpj), 0, _lin_comb)
        j_n = jn + gj * cj_n[None, :]
        j_d = jd + gj * cj_d[None, :]
    else:
        h_n = a_n
        h_d = a_d
        j_n = a_n
        j_d = a_d
    return x, v, a_n, a_d, b_n, b_d, h_n, h_d, j_n, j_d


@jit
def _num_den(x, v, a_n, a_d, b_n, b_d, h_n, h_d, j_n, j_d, t, lam, uu, w, S, ORIG: tl.constexpr):
    if ORIG:
        ew = tl.exp(w)[None, :]
        l2 = lam[None, :]
        kap = (1.0 - ew) * ew
        dd = uu[None, :] + tl.where(((t % S) != 0)[:, None], 1.0 - ew, 0.0)
        num = l2 * (a_n + b_n) + (1.0 - l2) * h_n + kap * j_n + dd * x * v
        den = l2 * (a_d + b_d) + (1.0 - l2) * h_d + kap * j_d + dd * x
    else:
        num = a_n + b_n + uu[None, :] * x * v
        den = a_d + b_d + uu[None, :] * x
    return num, den


@jit
def _load_carries(CAR, b, j, NC, C, cols, cmask, local_ok, NCAR: tl.constexpr, ORIG: tl.constexpr,
                  LOCAL_NEXT: tl.constexpr):
    """Incoming states of chunk j from a carry buffer (B, NC, NCAR, C) holding each chunk's state after it: slots
    0, 1 of chunk j - 1 (causal side), 2, 3 of chunk j + 1 (anticausal side) and, in original mode, the local
    slots 4..7 of chunk j - 1 (LOCAL_NEXT=False) or j + 1 (True) where ``local_ok``; zeros past the ends."""
    prev = (b * NC + j - 1).to(tl.int64) * NCAR * C
    nxt = (b * NC + j + 1).to(tl.int64) * NCAR * C
    has_prev = cmask & (j > 0)
    has_next = cmask & (j + 1 < NC)
    p0 = tl.load(CAR + prev + 0 * C + cols, mask=has_prev, other=0.0)
    p1 = tl.load(CAR + prev + 1 * C + cols, mask=has_prev, other=0.0)
    n0 = tl.load(CAR + nxt + 2 * C + cols, mask=has_next, other=0.0)
    n1 = tl.load(CAR + nxt + 3 * C + cols, mask=has_next, other=0.0)
    if ORIG:
        if LOCAL_NEXT:
            base = nxt
            loc = has_next & local_ok
        else:
            base = prev
            loc = has_prev & local_ok
        l0 = tl.load(CAR + base + 4 * C + cols, mask=loc, other=0.0)
        l1 = tl.load(CAR + base + 5 * C + cols, mask=loc, other=0.0)
        l2 = tl.load(CAR + base + 6 * C + cols, mask=loc, other=0.0)
        l3 = tl.load(CAR + base + 7 * C + cols, mask=loc, other=0.0)
    else:  # no local streams: any value serves
        l0 = p0
        l1 = p1
        l2 = p0
        l3 = p1
    return p0, p1, n0, n1, l0, l1, l2, l3


@jit
def _load_fwd_carries(CAR, b, j, NC, C, cols, cmask, q, NCAR: tl.constexpr, ORIG: tl.constexpr):
    """Incoming states of chunk j from pass 2's "state after chunk" buffer: (a_n, a_d, b_n, b_d, h_n, h_d, J_n,
    J_d); the local h, J continue only inside an original chunk (q > 0)."""
    return _load_carries(CAR, b, j, NC, C, cols, cmask, q > 0, NCAR, ORIG, False)


@jit
def _load_bwd_carries(BCAR, b, j, NC, C, cols, cmask, is_last, NCAR: tl.constexpr, ORIG: tl.constexpr):
    """Incoming adjoint states of chunk j: (bt_p, bt_q, at_p, at_q, ht_p, ht_q, jt_p, jt_q); the local ht, jt
    continue only inside an original chunk (not after its last kernel chunk)."""
    return _load_carries(BCAR, b, j, NC, C, cols, cmask, is_last == 0, NCAR, ORIG, True)


@jit
def _incoming_fwd_carries(CAR, b, j, NC, C, cols, cmask, q, w, NCAR: tl.constexpr, ORIG: tl.constexpr,
                          SINGLE: tl.constexpr):
    """:func:`_load_fwd_carries`, or eight zero vectors (like ``w``) when the whole sequence is one chunk (SINGLE:
    no pass 2, nothing comes in)."""
    if SINGLE:
        z = tl.zeros_like(w)
        return z, z, z, z, z, z, z, z
    else:
        return _load_fwd_carries(CAR, b, j, NC, C, cols, cmask, q, NCAR, ORIG)


# ------------------------------------------------------------------------------------------------- forward
def _fwd_summary_kernel(K, V, W, SUMM, MJ, skb, skt, skc, svb, svt, svc, T, C, S, NSUB, NC, SCALE,
                        NSUM: tl.constexpr, ORIG: tl.constexpr, BT: tl.constexpr, BC: tl.constexpr):
    """Pass 1: per chunk, the max of k and the decayed sums of x = e^{k - max} (and x v) seen from its two ends."""
    b = tl.program_id(0)
    cols = tl.program_id(1) * BC + tl.arange(0, BC)
    j = tl.program_id(2)
    cmask = cols < C
    s, n, q, is_last = _geometry(j, T, S, NSUB, BT)
    r = tl.arange(0, BT)
    t = s + r
    valid = r < n
    m2 = valid[:, None] & cmask[None, :]
    k = _load_tile(K + b.to(tl.int64) * skb, t, cols, skt, skc, m2, -float("inf"))
    v = _load_tile(V + b.to(tl.int64) * svb, t, cols, svt, svc, m2, 0.0)
    w = _load_vec(W, cols, cmask) * SCALE
    mj = tl.max(k, axis=0)
    mj_safe = tl.where(mj > -float("inf"), mj, 0.0)
    d_end = (n - 1 - r).to(tl.float32)[:, None]
    d_start = r.to(tl.float32)[:, None]
    ke = k - mj_safe[None, :]
    xe = tl.exp(ke - w[None, :] * d_end)
    xs = tl.exp(ke - w[None, :] * d_start)
    base = (b * NC + j).to(tl.int64) * NSUM * C
    tl.store(SUMM + base + 0 * C + cols, tl.sum(xe * v, axis=0), mask=cmask)
    tl.store(SUMM + base + 1 * C + cols, tl.sum(xe, axis=0), mask=cmask)
    tl.store(SUMM + base + 2 * C + cols, tl.sum(xs * v, axis=0), mask=cmask)
    tl.store(SUMM + base + 3 * C + cols, tl.sum(xs, axis=0), mask=cmask)
    if ORIG:
        keep = ((t % S) != 0)[:, None]
        xg = tl.where(keep, tl.exp(ke + w[None, :] * d_end), 0.0)
        tl.store(SUMM + base + 4 * C + cols, tl.sum(xg * v, axis=0), mask=cmask)
        tl.store(SUMM + base + 5 * C + cols, tl.sum(xg, axis=0), mask=cmask)
    tl.store(MJ + (b * NC + j).to(tl.int64) * C + cols, mj, mask=cmask)


@jit
def _carry_scan_side(SUMM, MJ, CAR, b, cols, cmask, w, m, T, C, S, NSUB, NC, s_idx, c_idx, GAMMA: tl.constexpr,
                     RESET: tl.constexpr, REVERSE: tl.constexpr, RESCALE: tl.constexpr, NSUM: tl.constexpr,
                     NCAR: tl.constexpr, BT: tl.constexpr, NCB: tl.constexpr):
    """Scan one stream (num, den) of chunk summaries over all chunks; store the state after each chunk.
    RESET: 0 none, 1 reset before chunks that start an original chunk, 2 before chunks that end one."""
    rows = tl.arange(0, NCB)
    carry_n = tl.zeros_like(w)
    carry_d = tl.zeros_like(w)
    nblk = tl.cdiv(NC, NCB)
    for ib in range(0, nblk):
        if REVERSE:
            blk = nblk - 1 - ib
        else:
            blk = ib
        j = blk * NCB + rows
        jv = j < NC
        s, n, q, is_last = _geometry(j, T, S, NSUB, BT)
        nf = n.to(tl.float32)[:, None]
        if GAMMA:
            g = tl.exp(w[None, :] * nf)
        else:
            g = tl.exp(-w[None, :] * nf)
        if RESET == 1:
            g = tl.where((q == 0)[:, None], 0.0, g)
        if RESET == 2:
            g = tl.where(is_last[:, None], 0.0, g)
        g = tl.where(jv[:, None], g, 1.0)
        m2 = jv[:, None] & cmask[None, :]
        off = (b * NC + j).to(tl.int64)[:, None]
        vn = tl.load(SUMM + off * NSUM * C + s_idx * C + cols[None, :], mask=m2, other=0.0)
        vd = tl.load(SUMM + off * NSUM * C + (s_idx + 1) * C + cols[None, :], mask=m2, other=0.0)
        if RESCALE:
            mj = tl.load(MJ + off * C + cols[None, :], mask=m2, other=-float("inf"))
            sc = tl.where(mj > -float("inf"), tl.exp(mj - m[None, :]), 0.0)
            vn = vn * sc
            vd = vd * sc
        gp, sn, sd = tl.associative_scan((g, vn, vd), 0, _lin_comb, reverse=REVERSE)
        sn = sn + gp * carry_n[None, :]
        sd = sd + gp * carry_d[None, :]
        tl.store(CAR + off * NCAR * C + c_idx * C + cols[None, :], sn, mask=m2)
        tl.store(CAR + off * NCAR * C + (c_idx + 1) * C + cols[None, :], sd, mask=m2)
        if REVERSE:
            pick = (rows == 0)[:, None]
        else:
            pick = (rows == NCB - 1)[:, None]
        carry_n = tl.sum(tl.where(pick, sn, 0.0), axis=0)
        carry_d = tl.sum(tl.where(pick, sd, 0.0), axis=0)


def _carry_kernel(SUMM, MJ, W, CAR, M, T, C, S, NSUB, NC, SCALE, NSUM: tl.constexpr, NCAR: tl.constexpr,
                  RESCALE: tl.constexpr, ORIG: tl.constexpr, LOCAL_REV: tl.constexpr, BT: tl.constexpr,
                  NCB: tl.constexpr, BC: tl.constexpr):
    """Pass 2: states after each chunk. Slots: 0,1 causal (lam); 2,3 anticausal (lam); ORIG: 4,5 local lam and
    6,7 local gam, on the causal side (forward, LOCAL_REV=0) or the anticausal side (backward, LOCAL_REV=1).
    Summaries: 0,1 causal lam; 2,3 anticausal lam; 4,5 gam (on the local side)."""
    b = tl.program_id(0)
    cols = tl.program_id(1) * BC + tl.arange(0, BC)
    cmask = cols < C
    w = _load_vec(W, cols, cmask) * SCALE
    m = tl.zeros_like(w)
    if RESCALE:
        mx = tl.full([BC], -float("inf"), tl.float32)
        rows = tl.arange(0, NCB)
        for ib in range(0, tl.cdiv(NC, NCB)):
            j = ib * NCB + rows
            m2 = (j < NC)[:, None] & cmask[None, :]
            mj = tl.load(MJ + (b * NC + j).to(tl.int64)[:, None] * C + cols[None, :], mask=m2, other=-float("inf"))
            mx = tl.maximum(mx, tl.max(mj, axis=0))
        m = tl.where(mx > -float("inf"), mx, 0.0)
        tl.store(M + b.to(tl.int64) * C + cols, m, mask=cmask)
    _carry_scan_side(SUMM, MJ, CAR, b, cols, cmask, w, m, T, C, S, NSUB, NC, 0, 0, False, 0, False, RESCALE,
                     NSUM, NCAR, BT, NCB)
    _carry_scan_side(SUMM, MJ, CAR, b, cols, cmask, w, m, T, C, S, NSUB, NC, 2, 2, False, 0, True, RESCALE,
                     NSUM, NCAR, BT, NCB)
    if ORIG:
        if LOCAL_REV:
            _carry_scan_side(SUMM, MJ, CAR, b, cols, cmask, w, m, T, C, S, NSUB, NC, 2, 4, False, 2, True, RESCALE,
                             NSUM, NCAR, BT, NCB)
            _carry_scan_side(SUMM, MJ, CAR, b, cols, cmask, w, m, T, C, S, NSUB, NC, 4, 6, True, 2, True, RESCALE,
                             NSUM, NCAR, BT, NCB)
        else:
            _carry_scan_side(SUMM, MJ, CAR, b, cols, cmask, w, m, T, C, S, NSUB, NC, 0, 4, False, 1, False, RESCALE,
                             NSUM, NCAR, BT, NCB)
            _carry_scan_side(SUMM, MJ, CAR, b, cols, cmask, w, m, T, C, S, NSUB, NC, 4, 6, True, 1, False, RESCALE,
                             NSUM, NCAR, BT, NCB)


def _fwd_kernel(K, V, W, U, Y, M, CAR, skb, skt, skc, svb, svt, svc, T, C, S, NSUB, NC, SCALE,
                NCAR: tl.constexpr, ORIG: tl.constexpr, SINGLE: tl.constexpr, BT: tl.constexpr, BC: tl.constexpr):
    """Pass 3 (or the whole forward when SINGLE): y for one chunk."""
    b = tl.program_id(0)
    cols = tl.program_id(1) * BC + tl.arange(0, BC)
    j = tl.program_id(2)
    cmask = cols < C
    s, n, q, is_last = _geometry(j, T, S, NSUB, BT)
    r = tl.arange(0, BT)
    t = s + r
    kb = K + b.to(tl.int64) * skb
    vb = V + b.to(tl.int64) * svb
    w = _load_vec(W, cols, cmask) * SCALE
    lam = tl.exp(-w)
    gam = tl.exp(w)
    uu = tl.exp(_load_vec(U, cols, cmask) * SCALE)
    if SINGLE:
        k0 = _load_tile(kb, t, cols, skt, skc, (r < n)[:, None] & cmask[None, :], -float("inf"))
        mx = tl.max(k0, axis=0)
        m = tl.where(mx > -float("inf"), mx, 0.0)
        tl.store(M + b.to(tl.int64) * C + cols, m, mask=cmask)
    else:
        m = tl.load(M + b.to(tl.int64) * C + cols, mask=cmask, other=0.0)
    ca_n, ca_d, cb_n, cb_d, ch_n, ch_d, cj_n, cj_d = _incoming_fwd_carries(CAR, b, j, NC, C, cols, cmask, q, w,
                                                                           NCAR, ORIG, SINGLE)
    x, v, a_n, a_d, b_n, b_d, h_n, h_d, j_n, j_d = _forward_states(
        kb, vb, skt, skc, svt, svc, s, n, r, cols, cmask, m, lam, gam,
        ca_n, ca_d, cb_n, cb_d, ch_n, ch_d, cj_n, cj_d, S, ORIG)
    num, den = _num_den(x, v, a_n, a_d, b_n, b_d, h_n, h_d, j_n, j_d, t, lam, uu, w, S, ORIG)
    y = num / den
    m2 = (r < n)[:, None] & cmask[None, :]
    yp = Y + b.to(tl.int64) * T * C + t.to(tl.int64)[:, None] * C + cols[None, :]
    tl.store(yp, y.to(Y.dtype.element_ty), mask=m2)


# ------------------------------------------------------------------------------------------------- backward
@jit
def _bwd_pq(kb, vb, gb, skt, skc, svt, svc, sgt, sgc, s, n, r, cols, cmask, m, lam, gam, uu, w,
            CAR, b, j, NC, C, q, S, NCAR: tl.constexpr, ORIG: tl.constexpr, SINGLE: tl.constexpr):
    ca_n, ca_d, cb_n, cb_d, ch_n, ch_d, cj_n, cj_d = _incoming_fwd_carries(CAR, b, j, NC, C, cols, cmask, q, w,
                                                                           NCAR, ORIG, SINGLE)
    x, v, a_n, a_d, b_n, b_d, h_n, h_d, j_n, j_d = _forward_states(
        kb, vb, skt, skc, svt, svc, s, n, r, cols, cmask, m, lam, gam,
        ca_n, ca_d, cb_n, cb_d, ch_n, ch_d, cj_n, cj_d, S, ORIG)
    t = s + r
    num, den = _num_den(x, v, a_n, a_d, b_n, b_d, h_n, h_d, j_n, j_d, t, lam, uu, w, S, ORIG)
    m2 = (r < n)[:, None] & cmask[None, :]
    gy = _load_tile(gb, t, cols, sgt, sgc, m2, 0.0)
    p = tl.where(m2, gy / den, 0.0)
    y = tl.where(m2, num / den, 0.0)
    qq = -p * y
    return x, v, a_n, a_d, b_n, b_d, h_n, h_d, j_n, j_d, p, qq


def _bwd_summary_kernel(K, V, GY, W, U, M, CAR, SUMM, skb, skt, skc, svb, svt, svc, sgb, sgt, sgc, T, C, S, NSUB,
                        NC, SCALE, NSUM: tl.constexpr, NCAR: tl.constexpr, ORIG: tl.constexpr, BT: tl.constexpr,
                        BC: tl.constexpr):
    """Backward pass 1: per chunk, decayed sums of p and q seen from the chunk's two ends."""
    b = tl.program_id(0)
    cols = tl.program_id(1) * BC + tl.arange(0, BC)
    j = tl.program_id(2)
    cmask = cols < C
    s, n, q, is_last = _geometry(j, T, S, NSUB, BT)
    r = tl.arange(0, BT)
    w = _load_vec(W, cols, cmask) * SCALE
    lam = tl.exp(-w)
    gam = tl.exp(w)
    uu = tl.exp(_load_vec(U, cols, cmask) * SCALE)
    m = tl.load(M + b.to(tl.int64) * C + cols, mask=cmask, other=0.0)
    x, v, a_n, a_d, b_n, b_d, h_n, h_d, j_n, j_d, p, qq = _bwd_pq(
        K + b.to(tl.int64) * skb, V + b.to(tl.int64) * svb, GY + b.to(tl.int64) * sgb, skt, skc, svt, svc, sgt, sgc,
        s, n, r, cols, cmask, m, lam, gam, uu, w, CAR, b, j, NC, C, q, S, NCAR, ORIG, False)
    d_end = (n - 1 - r).to(tl.float32)[:, None]
    d_start = r.to(tl.float32)[:, None]
    fe = tl.where((r < n)[:, None], tl.exp(-w[None, :] * d_end), 0.0)
    fs = tl.where((r < n)[:, None], tl.exp(-w[None, :] * d_start), 0.0)
    base = (b * NC + j).to(tl.int64) * NSUM * C
    tl.store(SUMM + base + 0 * C + cols, tl.sum(fe * p, axis=0), mask=cmask)
    tl.store(SUMM + base + 1 * C + cols, tl.sum(fe * qq, axis=0), mask=cmask)
    tl.store(SUMM + base + 2 * C + cols, tl.sum(fs * p, axis=0), mask=cmask)
    tl.store(SUMM + base + 3 * C + cols, tl.sum(fs * qq, axis=0), mask=cmask)
    if ORIG:
        fg = tl.where((r < n)[:, None], tl.exp(w[None, :] * d_start), 0.0)
        tl.store(SUMM + base + 4 * C + cols, tl.sum(fg * p, axis=0), mask=cmask)
        tl.store(SUMM + base + 5 * C + cols, tl.sum(fg * qq, axis=0), mask=cmask)


def _bwd_kernel(K, V, GY, W, U, M, CAR, BCAR, GK, GV, GWP, GUP, skb, skt, skc, svb, svt, svc, sgb, sgt, sgc,
                T, C, S, NSUB, NC, SCALE, NCAR: tl.constexpr, ORIG: tl.constexpr, SINGLE: tl.constexpr,
                BT: tl.constexpr, BC: tl.constexpr):
    """Backward pass 3 (or the whole backward when SINGLE): gk, gv and per-chunk partial sums of gw, gu."""
    b = tl.program_id(0)
    cols = tl.program_id(1) * BC + tl.arange(0, BC)
    j = tl.program_id(2)
    cmask = cols < C
    s, n, q, is_last = _geometry(j, T, S, NSUB, BT)
    r = tl.arange(0, BT)
    t = s + r
    valid = r < n
    m2 = valid[:, None] & cmask[None, :]
    w = _load_vec(W, cols, cmask) * SCALE
    lam = tl.exp(-w)
    gam = tl.exp(w)
    uu = tl.exp(_load_vec(U, cols, cmask) * SCALE)
    m = tl.load(M + b.to(tl.int64) * C + cols, mask=cmask, other=0.0)
    x, v, a_n, a_d, b_n, b_d, h_n, h_d, j_n, j_d, p, qq = _bwd_pq(
        K + b.to(tl.int64) * skb, V + b.to(tl.int64) * svb, GY + b.to(tl.int64) * sgb, skt, skc, svt, svc, sgt, sgc,
        s, n, r, cols, cmask, m, lam, gam, uu, w, CAR, b, j, NC, C, q, S, NCAR, ORIG, SINGLE)
    # adjoint carries (state after chunk j-1 for the causal side, after chunk j+1 for the anticausal side)
    if SINGLE:
        z = tl.zeros_like(w)
        cbt_p = z
        cbt_q = z
        cat_p = z
        cat_q = z
        cht_p = z
        cht_q = z
        cjt_p = z
        cjt_q = z
    else:
        cbt_p, cbt_q, cat_p, cat_q, cht_p, cht_q, cjt_p, cjt_q = _load_bwd_carries(BCAR, b, j, NC, C, cols, cmask,
                                                                                  is_last, NCAR, ORIG)
    one = tl.full([BT, BC], 1.0, tl.float32)
    zero = tl.zeros([BT, BC], tl.float32)
    lam2 = lam[None, :] + zero
    g_l = tl.where(valid[:, None], lam2, 1.0)
    # transposed causal part (sources t > n): anticausal exclusive scans of p, q
    ga, ha, _p, _q, eap, eaq = tl.associative_scan((g_l, one, p, qq, zero, zero), 0, _excl_comb, reverse=True)
    at_p = eap + ha * cat_p[None, :]
    at_q = eaq + ha * cat_q[None, :]
    # transposed anticausal part (sources t < n): causal exclusive scans
    gb_, hb, _p2, _q2, ebp, ebq = tl.associative_scan((g_l, one, p, qq, zero, zero), 0, _excl_comb)
    bt_p = ebp + hb * cbt_p[None, :]
    bt_q = ebq + hb * cbt_q[None, :]
    if ORIG:
        ht_p = eap + ha * cht_p[None, :]
        ht_q = eaq + ha * cht_q[None, :]
        g_g = tl.where(valid[:, None], gam[None, :] + zero, 1.0)
        gj_, hj, _p3, _q3, ejp, ejq = tl.associative_scan((g_g, one, p, qq, zero, zero), 0, _excl_comb, reverse=True)
        notstart = ((t % S) != 0)[:, None]
        jt_p = tl.where(notstart, ejp + hj * cjt_p[None, :], 0.0)
        jt_q = tl.where(notstart, ejq + hj * cjt_q[None, :], 0.0)
        ew = tl.exp(w)[None, :]
        l2 = lam[None, :]
        kap = (1.0 - ew) * ew
        dd = uu[None, :] + tl.where(notstart, 1.0 - ew, 0.0)
        gxv = l2 * (at_p + bt_p) + (1.0 - l2) * ht_p + kap * jt_p + dd * p
        gx = l2 * (at_q + bt_q) + (1.0 - l2) * ht_q + kap * jt_q + dd * qq
        # gw: coefficient derivatives + gate derivatives (adjoint identity)
        dkap = ew - 2.0 * ew * ew
        ddd = tl.where(notstart, -ew, 0.0)
        gw_e = (p * (-l2 * (a_n + b_n) + l2 * h_n + dkap * j_n + ddd * x * v)
                + qq * (-l2 * (a_d + b_d) + l2 * h_d + dkap * j_d + ddd * x))
        gw_e += -l2 * l2 * (a_n * at_p + a_d * at_q + b_n * bt_p + b_d * bt_q)
        gw_e += -l2 * (1.0 - l2) * (h_n * ht_p + h_d * ht_q)
        gw_e += ew * kap * (j_n * jt_p + j_d * jt_q)
    else:
        gxv = at_p + bt_p + uu[None, :] * p
        gx = at_q + bt_q + uu[None, :] * qq
        gw_e = -lam[None, :] * (a_n * at_p + a_d * at_q + b_n * bt_p + b_d * bt_q)
    gv = x * gxv
    gk = x * (v * gxv + gx)
    gu_e = uu[None, :] * x * (p * v + qq)
    gw_e = tl.where(m2, gw_e, 0.0)
    gu_e = tl.where(m2, gu_e, 0.0)
    off = b.to(tl.int64) * T * C + t.to(tl.int64)[:, None] * C + cols[None, :]
    tl.store(GK + off, gk.to(GK.dtype.element_ty), mask=m2)
    tl.store(GV + off, gv.to(GV.dtype.element_ty), mask=m2)
    poff = (b * NC + j).to(tl.int64) * C + cols
    # gradients of the stored w, u (the kernels used SCALE * w, SCALE * u)
    tl.store(GWP + poff, tl.sum(gw_e, axis=0) * SCALE, mask=cmask)
    tl.store(GUP + poff, tl.sum(gu_e, axis=0) * SCALE, mask=cmask)


_SIZES = ["T", "C", "S", "NSUB", "NC"]
_PTRS = {"K", "V", "W", "U", "Y", "M", "CAR", "SUMM", "MJ", "GY", "BCAR", "GK", "GV", "GWP", "GUP"}


def _variants(fn):
    ptrs = [p for p in inspect.signature(fn).parameters if p in _PTRS]
    return (jit(fn, do_not_specialize=_SIZES),
            jit(fn, do_not_specialize=_SIZES, do_not_specialize_on_alignment=ptrs))


_KERNELS = {name: _variants(fn) for name, fn in (
    ("fwd_summary", _fwd_summary_kernel), ("carry", _carry_kernel), ("fwd", _fwd_kernel),
    ("bwd_summary", _bwd_summary_kernel), ("bwd", _bwd_kernel))}


def _k(name):
    return _KERNELS[name][1 if CONFIG["scalar"] else 0]


# ------------------------------------------------------------------------------------------------- host side
def _plan(T: int, mode: str, chunks: int):
    """Chunk geometry: (S, BT, NSUB, NC, single)."""
    cfg = CONFIG
    chunk_t = cfg["chunk_t"]
    if not isinstance(chunk_t, int) or chunk_t < 1 or chunk_t & (chunk_t - 1):
        raise ValueError(f"VRWKV_TRITON_V4 chunk_t must be a power of two >= 1, got {chunk_t!r}")
    if mode == "exact":
        S = T
        if T <= cfg["single_max_t"]:
            BT = next_pow2(T)
        else:
            BT = cfg["chunk_t"]
    else:
        S = cdiv(T, chunks)
        BT = min(next_pow2(S), cfg["chunk_t"])
    NSUB = cdiv(S, BT)
    NC = cdiv(T, S) * NSUB
    return S, BT, NSUB, NC, NC == 1


def _chosen_plan(T: int, mode: str, chunks: int):
    """(seq, plan): the register-sequential kernels when enabled and their chunk count fits a grid axis, else the
    tile-scan kernels (32-token chunks by default: T up to ~2M tokens); a clear error beyond that."""
    seq = CONFIG["seq"]
    if seq not in (0, 1):
        raise ValueError(f"VRWKV_TRITON_V4 seq must be 1 (the register-sequential kernels) or 0 (the tile scans), "
                         f"got {seq!r}")
    if seq:
        from .triton_seq import seq_plan

        plan = seq_plan(T, mode, chunks, CONFIG)
        if plan[3] <= GRID_YZ_MAX:
            return True, plan
    plan = _plan(T, mode, chunks)
    if plan[3] > GRID_YZ_MAX:
        raise ValueError(f"bi_wkv: T={T} tokens make {plan[3]} chunks of {plan[1]} tokens, more than the {GRID_YZ_MAX} "
                         f"a CUDA grid axis holds; use longer chunks (VRWKV_TRITON_V4=chunk_t=..., now "
                         f"{CONFIG['chunk_t']}) or backend='reference'")
    return False, plan


def _block_c(BT: int, C: int) -> int:
    if CONFIG["scalar"]:
        return 32 * CONFIG["warps"]
    bc = CONFIG["block_c"]
    while bc > 4 and BT * bc > CONFIG["max_tile"]:
        bc //= 2
    return max(1, min(bc, next_pow2(C)))


def _grid_c(C, BC):
    return cdiv(C, BC)


def launch_carry(summ, mj, w32, out, m, T: int, C: int, S: int, NSUB: int, NC: int, BT: int, orig: bool,
                 forward: bool, block_c: int, scale: float = 1.0):
    """Pass 2: scan the chunk summaries ``summ`` (B, NC, 4 or 6, C) over chunks into ``out`` (B, NC, 4 or 8, C).
    forward: rescale by the chunk maxima ``mj`` and write the global max ``m``; else the backward's adjoint states
    (original mode: local streams on the anticausal side)."""
    _k("carry")[(m.shape[0], cdiv(C, block_c))](summ, mj, w32, out, m, T, C, S, NSUB, NC, float(scale),
                                                       NSUM=6 if orig else 4, NCAR=8 if orig else 4,
                                                       RESCALE=forward, ORIG=orig, LOCAL_REV=not forward, BT=BT,
                                                       NCB=min(CONFIG["carry_ncb"], next_pow2(NC)), BC=block_c,
                                                       num_warps=CONFIG["warps"])


def fwd_buffers(w, u, k, v, NC: int, ncar: int, single: bool):
    """Forward outputs and fp32 parameters shared by the tile-scan and sequential paths: y (B, T, C) in v's dtype,
    the per-channel max m (B, C), the carries (B, NC, ncar, C) (empty for a single chunk), w and u in fp32."""
    B, T, C = k.shape
    dev = k.device
    car = new_empty((B, NC, ncar, C), torch.float32, dev) if not single else torch.empty(0, device=dev)
    return (new_empty((B, T, C), v.dtype, dev), new_empty((B, C), torch.float32, dev), car,
            w.float().contiguous(), u.float().contiguous())


def bwd_buffers(w, u, k, v, NC: int, out=None):
    """Backward buffers shared by both paths: w, u in fp32, gk / gv in k's / v's dtype (``out``: the caller's
    contiguous (B, T, C) pair, e.g. slices of one stacked gradient), per-chunk partial sums of gw and gu in one
    (2, B * NC, C) fp32 buffer (reduced in one launch: ``parts.sum(1)``)."""
    B, T, C = k.shape
    dev = k.device
    if out is None:
        out = (new_empty((B, T, C), k.dtype, dev), new_empty((B, T, C), v.dtype, dev))
    else:
        check_out("bi_wkv", ("gk", "gv"), out, (k, v))
    return (w.float().contiguous(), u.float().contiguous(), *out, new_empty((2, B * NC, C), torch.float32, dev))


def _fwd(w, u, k, v, mode: str, chunks: int, scale: float = 1.0, gate: Optional[torch.Tensor] = None):
    """(y, m, carries); ``gate`` (inference callers; k's shape): y is ``sigmoid(gate) * y`` - formed by the seq
    kernels as they store y, applied after the tile kernels."""
    B, T, C = k.shape
    seq, (S, BT, NSUB, NC, single) = _chosen_plan(T, mode, chunks)
    if seq:
        from .triton_seq import seq_fwd

        return seq_fwd(w, u, k, v, mode, chunks, CONFIG, scale, gate)
    if gate is not None:
        y, m, car = _fwd(w, u, k, v, mode, chunks, scale)
        return (torch.sigmoid(gate.float()) * y.float()).to(y.dtype), m, car
    orig = mode == "original"
    BC = _block_c(BT, C)
    nw = CONFIG["warps"]
    dev = k.device
    ncar, nsum = (8, 6) if orig else (4, 4)
    y, m, car, w32, u32 = fwd_buffers(w, u, k, v, NC, ncar, single)
    grid = (B, _grid_c(C, BC), NC)
    if not single:
        summ = new_empty((B, NC, nsum, C), torch.float32, dev)
        mj = new_empty((B, NC, C), torch.float32, dev)
        _k("fwd_summary")[grid](k, v, w32, summ, mj, *k.stride(), *v.stride(), T, C, S, NSUB, NC, scale,
                                  NSUM=nsum, ORIG=orig, BT=BT, BC=BC, num_warps=nw)
        launch_carry(summ, mj, w32, car, m, T, C, S, NSUB, NC, BT, orig, True,
                     32 * nw if CONFIG["scalar"] else min(CONFIG["carry_block_c"], next_pow2(C)), scale)
    _k("fwd")[grid](k, v, w32, u32, y, m, car, *k.stride(), *v.stride(), T, C, S, NSUB, NC, scale,
                      NCAR=ncar, ORIG=orig, SINGLE=single, BT=BT, BC=BC, num_warps=nw)
    return y, m, car


def gated_backward(T: int, mode: str, chunks: int) -> bool:
    """Whether :func:`_bwd` takes ``gate=`` at this length: the seq kernels run it (they recompute y, so a forward
    with ``gate=`` - which stores only sigmoid(gate) * y - is all a backward needs); the tile kernels do not."""
    return _chosen_plan(T, mode, chunks)[0]


def _bwd(w, u, k, v, m, car, gy, mode: str, chunks: int, scale: float = 1.0, out=None, gate=None, gate_out=None):
    """(gwu, gk, gv); ``out``: the (gk, gv) buffers to write (see :func:`bwd_buffers`). ``gate``: gy is the gradient of
    ``_fwd(..., gate=gate)``'s output, and d gate comes fourth (``gate_out``: its buffer); where
    :func:`gated_backward` holds."""
    B, T, C = k.shape
    seq, (S, BT, NSUB, NC, single) = _chosen_plan(T, mode, chunks)
    if seq:
        from .triton_seq import seq_bwd

        return seq_bwd(w, u, k, v, m, car, gy, mode, chunks, CONFIG, scale, out, gate, gate_out)
    if gate is not None:
        raise ValueError(f"bi_wkv backward: gate= needs the seq kernels, which do not run at T={T} here "
                         f"(see gated_backward)")
    orig = mode == "original"
    BC = _block_c(BT, C)
    nw = CONFIG["warps"]
    dev = k.device
    ncar, nsum = (8, 6) if orig else (4, 4)
    w32, u32, gk, gv, parts = bwd_buffers(w, u, k, v, NC, out)
    grid = (B, _grid_c(C, BC), NC)
    if not single:
        summ = new_empty((B, NC, nsum, C), torch.float32, dev)
        bcar = new_empty((B, NC, ncar, C), torch.float32, dev)
        _k("bwd_summary")[grid](k, v, gy, w32, u32, m, car, summ, *k.stride(), *v.stride(), *gy.stride(),
                                  T, C, S, NSUB, NC, scale, NSUM=nsum, NCAR=ncar, ORIG=orig, BT=BT, BC=BC, num_warps=nw)
        launch_carry(summ, summ, w32, bcar, m, T, C, S, NSUB, NC, BT, orig, False,
                     32 * nw if CONFIG["scalar"] else min(CONFIG["carry_block_c"], next_pow2(C)), scale)
    else:
        bcar = car
    _k("bwd")[grid](k, v, gy, w32, u32, m, car, bcar, gk, gv, parts[0], parts[1], *k.stride(), *v.stride(),
                      *gy.stride(), T, C, S, NSUB, NC, scale, NCAR=ncar, ORIG=orig, SINGLE=single, BT=BT, BC=BC,
                      num_warps=nw)
    return parts.sum(1), gk, gv


# ------------------------------------------------------------------------------------------------- torch ops
@torch.library.custom_op("vision_rwkv::bi_wkv_triton_fwd", mutates_args=())
def _bi_wkv_fwd_op(w: torch.Tensor, u: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mode: str,
                   chunks: int, scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _fwd(w, u, k, v, mode, chunks, scale)


@_bi_wkv_fwd_op.register_fake
def _(w, u, k, v, mode, chunks, scale):
    B, T, C = k.shape
    seq, (S, BT, NSUB, NC, single) = _chosen_plan(T, mode, chunks)
    ncar = 8 if mode == "original" else 4
    if seq:
        from .triton_seq import seq_carry_slots

        ncar = seq_carry_slots(NC, single, mode, CONFIG)
    car = k.new_empty((0,), dtype=torch.float32) if single else k.new_empty((B, NC, ncar, C), dtype=torch.float32)
    return v.new_empty((B, T, C)), k.new_empty((B, C), dtype=torch.float32), car


@torch.library.custom_op("vision_rwkv::bi_wkv_triton_bwd", mutates_args=())
def _bi_wkv_bwd_op(w: torch.Tensor, u: torch.Tensor, k: torch.Tensor, v: torch.Tensor, m: torch.Tensor,
                   car: torch.Tensor, gy: torch.Tensor, mode: str,
                   chunks: int, scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _bwd(w, u, k, v, m, car, gy, mode, chunks, scale)


@_bi_wkv_bwd_op.register_fake
def _(w, u, k, v, m, car, gy, mode, chunks, scale):
    return w.new_empty((2,) + tuple(w.shape), dtype=torch.float32), k.new_empty(k.shape), v.new_empty(v.shape)


def _setup_context(ctx, inputs, output):
    w, u, k, v, mode, chunks, scale = inputs
    y, m, car = output
    ctx.save_for_backward(w, u, k, v, m, car)
    ctx.mode = mode
    ctx.chunks = chunks
    ctx.scale = scale
    ctx.mark_non_differentiable(m, car)


def _backward(ctx, gy, _gm, _gcar):
    w, u, k, v, m, car = ctx.saved_tensors
    gwu, gk, gv = _bi_wkv_bwd_op(w, u, k, v, m, car, gy, ctx.mode, ctx.chunks, ctx.scale)
    return (*split_param_grads(gwu, w, u), gk, gv, None, None, None)


torch.library.register_autograd("vision_rwkv::bi_wkv_triton_fwd", _backward, setup_context=_setup_context)


class _BiWKV(torch.autograd.Function):
    """Eager-mode path (lower call overhead than the custom op's dispatch); same kernels."""

    @staticmethod
    def forward(ctx, w, u, k, v, mode, chunks, scale):
        y, m, car = _fwd(w, u, k, v, mode, chunks, scale)
        ctx.save_for_backward(w, u, k, v, m, car)
        ctx.mode = mode
        ctx.chunks = chunks
        ctx.scale = scale
        return y

    @staticmethod
    def backward(ctx, gy):
        w, u, k, v, m, car = ctx.saved_tensors
        gwu, gk, gv = _bwd(w, u, k, v, m, car, gy, ctx.mode, ctx.chunks, ctx.scale)
        return (*split_param_grads(gwu, w, u), gk, gv, None, None, None)


def bi_wkv_triton(w: torch.Tensor, u: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mode: str = "exact",
                  chunks: int = 32, scale: float = 1.0) -> torch.Tensor:
    """Bi-WKV with Triton kernels. k, v (B, T, C) float32/bfloat16/float16 (any strides); w, u (C,) per-step decay
    and bonus, used as ``scale * w``, ``scale * u`` (the kernels scale them as they load them: the model passes its
    parameters and 1 / T, no division launched); mode "exact" (Eq. 5) or "original" (the pre-2025 kernel's function
    with ``chunks`` = P). Returns y (B, T, C) in v's dtype; differentiable in w, u, k, v; a torch custom op
    (torch.compile-friendly)."""
    for name, t in (("w", w), ("u", u), ("k", k), ("v", v)):
        if t.dtype != torch.float64:
            check_float(name, t)
    check_same_device(w=w, u=u, k=k, v=v)
    if k.dim() != 3 or v.shape != k.shape:
        raise ValueError(f"k and v must both be (B, T, C), got {tuple(k.shape)} and {tuple(v.shape)}")
    C = k.shape[2]
    if w.shape != (C,) or u.shape != (C,):
        raise ValueError(f"w and u must be ({C},), got {tuple(w.shape)} and {tuple(u.shape)}")
    if mode not in ("exact", "original"):
        raise ValueError(f"mode must be 'exact' or 'original', got {mode!r}")
    if int(chunks) < 1:
        raise ValueError(f"chunks must be >= 1, got {chunks}")
    scale = float(scale)
    if any(t.dtype == torch.float64 for t in (w, u, k, v)):
        # the kernels accumulate in fp32; float64 callers (gradcheck) get the exact O(T) reference instead
        from .reference import bi_wkv_reference

        if scale != 1.0:
            w, u = w * scale, u * scale
        return bi_wkv_reference(w, u, k, v, mode, int(chunks))
    if k.numel() == 0:
        return v.new_zeros(v.shape) + 0 * (w.sum() + u.sum() + k.sum())
    return run_op(_compiled_fwd, _BiWKV, _output_only, w, u, k, v, mode, int(chunks), scale)


def _compiled_fwd(w, u, k, v, mode, chunks, scale):
    return _bi_wkv_fwd_op(w, u, k, v, mode, chunks, scale)[0]


def _output_only(w, u, k, v, mode, chunks, scale):
    return _fwd(w, u, k, v, mode, chunks, scale)[0]
