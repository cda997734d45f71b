"""Chunk-parallel Triton kernels for the bidirectional RWKV-6 WKV (``reference.py``), forward and backward.

The "walk" kernels in ``triton.py`` run one program per (batch, head, direction) that walks all chunks in order:
B*H*2 programs, T/16 dependent steps each. Here every chunk is its own program and the recurrence over chunks
only touches the N x N states (fla's chunked form, written for both directions at once):

In memory order, for chunk c with in-chunk cumulative log decays cin (inclusive), cex = cin - logd (exclusive),
ctot (chunk total), ctail = ctot - cin (all <= 0, every exponential below is <= 1):
    causal state before chunk c      P_c = sum_{n < start} (prod_{n<m<start} d_m) k_n v_n^T
    anticausal state after chunk c   Q_c = sum_{n >= end} (prod_{end<=m<n} d_m) k_n v_n^T
    P_{c+1} = e^{ctot_c} P_c + (k e^{ctail})^T v          Q_{c-1} = e^{ctot_c} Q_c + (k e^{cex})^T v
    y = (r e^{cex}) P_c + (r e^{ctail}) Q_c + A v,  A[t, n] = sum_j r_t[j] k_n[j] prod_{m strictly between} d_m[j]
                                                     (both triangles; diagonal = sum_j r_t[j] u[j] k_t[j])
Intra-chunk pairs (A and the matching gradient terms): sub-chunks whose decays are weak enough (total log decay
>= -FAST_DECAY in every channel, the common case in trained models) factor e^{cex_t - cin_n} = e^{cex_t} e^{-cin_n}
through the sub-chunk's start, so A is two tensor-core products; the others split the sub-chunk in halves, those
in halves again, ... (log2 BT levels): each pair is separated at exactly one level, where its weight factors
through the start of the later half into two factors <= 1 (sums within one half), so every level is two tensor-core
products (three per direction for the gradients), exact for any decay.
Kernels: ``_state_kernel`` (per chunk: both state increments and ctot), ``_scan_kernel`` (per (batch, head, row
block, stream): associative scan over blocks of chunks, in place, leaving the state INCLUDING each chunk) - or, for
sequences of few state chunks (``state_walk``), ``_state_walk_kernel`` instead of both (per (batch, head, block of
state rows, stream): the same states by walking the state chunks in order) -, and the
per-chunk output kernels (``fwd_carry=1``: the forward's output kernel runs one program per state chunk that carries
P and Q through its sub-chunks - half the state updates and a quarter of the state loads of one program per
sub-chunk walking from the state chunk's edges, at a quarter of the programs). The states are (B*H, NC, BN, BN),
fp32 (or the inputs' 16-bit dtype with ``state_dtype=input``, rounded once each; sums stay fp32): their traffic
(~2 N^2 values per chunk and stream) is what a larger ``block_t`` saves.

Backward: the same state machinery on (k, v) and on (r, gy) (the adjoint states), then per chunk
    gr = e^{cex} (gy P^T) + e^{ctail} (gy Q^T) + intra + u k (gy.v),   gk = e^{ctail} (v GP^T) + e^{cex} (v GQ^T) + ...
    gv = (k e^{ctail}) GP + (k e^{cex}) GQ + A^T gy,     gu = sum_t r k (gy.v)
with GQ / GP the causal / anticausal states of (r, gy). With Dc, Da = r * (causal / anticausal part of gr) and
Ec, Ea = k * (causal / anticausal part of gk) (no bonus):
    d logd_m = sum_{t > m} (Dc + Ea - Ec - Da)_t - (Ec + Da)_m,
an in-chunk suffix sum written per chunk plus a suffix sum of chunk totals added on the host. ``bwd_carry=1``: one
program per state chunk instead of per sub-chunk, the four edge states not loaded and walked per sub-chunk but
carried, two at a time - a descending pass with Q and GP leaves the anticausal inter-chunk parts of gr, gk, gv in
fp32 scratch, an ascending pass with P and GQ finishes every sub-chunk.
"""
from __future__ import annotations

import torch
import triton.language as tl

from .._triton_utils import cdiv, launch_opts, new_empty, next_pow2
from ..triton_jit import jit
from .triton import LOGD_MIN, _cums, _head, _ld, _ld_rkvw, _logd
from .triton_intra import FAST_DECAY, _fast_scores, _split_grads, _split_level, _split_scores

__all__ = ["chunk_fwd", "chunk_bwd"]


@jit
def _lin2(g1, s1, g2, s2):
    # composition of s -> g s + d maps; the left operand comes first in processing order
    return g1 * g2, g2 * s1 + s2


@jit
def _intra_av(r, k, v, lw, cex, ctot, u, rt, BT: tl.constexpr, PREC: tl.constexpr):
    """A v for one sub-chunk: its pairs in both directions (factorized through the sub-chunk's start when every
    channel's total log decay is >= -FAST_DECAY: two tensor-core products, every factor <= e^FAST_DECAY; else the
    exact binary split of :func:`_split_scores`) and the bonus r.(u k) on the diagonal."""
    if tl.max(-ctot, axis=0) <= FAST_DECAY:
        A = _fast_scores(r, k, tl.exp(cex), tl.exp(-(cex + lw)), rt, PREC)
    else:
        A = _split_scores(r, k, lw, rt, BT, PREC, True)
    bonus = tl.sum(r * u[None, :] * k, axis=1)
    A = tl.where(rt[:, None] == rt[None, :], bonus[:, None], A)
    return tl.dot(A, v, input_precision=PREC)


@jit
def _load_state(S, pid, c, NC, ok, BN: tl.constexpr):
    """The (BN, BN) state of chunk c of (batch*head) pid from a (B*H, NC, BN, BN) buffer; zeros where not ok."""
    rows = tl.arange(0, BN)
    off = (pid * NC + c).to(tl.int64) * BN * BN + rows[:, None] * BN + rows[None, :]
    return tl.load(S + off, mask=ok & (rows[:, None] >= 0), other=0.0).to(tl.float32)


@jit
def _walk(Xb, Yb, Lb, Wh, sxt, sxn, syt, syn, slt, sln, T, N, s0, s1, S, BT: tl.constexpr, BN: tl.constexpr,
          PREC: tl.constexpr, ANTI: tl.constexpr, DECAY: tl.constexpr):
    """Apply sub-chunks [s0, s1) of (x, y) to the state S: causal (ascending) S <- e^{ctot} S + (x e^{ctail})^T y,
    anticausal (ANTI, descending) S <- e^{ctot} S + (x e^{cex})^T y."""
    rt = tl.arange(0, BT)
    cn = tl.arange(0, BN)
    for i in range(s0, s1):
        if ANTI:
            sc = s1 - 1 - (i - s0)
        else:
            sc = i
        pos = sc * BT + rt
        m2 = (pos < T)[:, None] & (cn < N)[None, :]
        x = _ld(Xb, pos, cn, sxt, sxn, m2)
        y = _ld(Yb, pos, cn, syt, syn, m2)
        cex, ctail, ctot = _cums(tl.maximum(_logd(Lb, Wh, pos, cn, slt, sln, m2, N, DECAY), LOGD_MIN))
        if ANTI:
            xs = x * tl.exp(cex)
        else:
            xs = x * tl.exp(ctail)
        S = tl.exp(ctot)[:, None] * S + tl.dot(tl.trans(xs), y, input_precision=PREC)
    return S


@jit
def _program(H, N, BT: tl.constexpr, BN: tl.constexpr):
    """Program (batch*head, chunk) -> pid, chunk, b, h, token / channel ranges, channel mask."""
    pid = tl.program_id(0)
    b = pid // H
    cn = tl.arange(0, BN)
    return pid, tl.program_id(1), b, pid - b * H, tl.arange(0, BT), cn, cn < N


@jit
def _coords(T, H, N, NS: tl.constexpr, BT: tl.constexpr, BN: tl.constexpr):
    """Program (batch*head, sub-chunk) -> pid, sub-chunk c, state chunk cs, b, h, token / channel ranges, masks."""
    pid, c, b, h, rt, cn, nmask = _program(H, N, BT, BN)
    pos = c * BT + rt
    tv = pos < T
    return pid, c, c // NS, b, h, rt, cn, nmask, pos, tv, tv[:, None] & nmask[None, :]


@jit
def _own_sub_chunk(R, K, V, LD, W0, U, b, h, pos, cn, nmask, m2, srb, srt, srh, srn, skb, skt, skh, skn, svb, svt, svh,
                   svn, slb, slt, slh, sln, N, DECAY: tl.constexpr):
    """What a forward program reads of its own sub-chunk (tokens ``pos``): the head's k, v and log-decay bases and its
    w0 (for the other sub-chunks), r, k, v, the clamped log decay, its in-sub-chunk sums cex, ctail, ctot, and u."""
    Kb = _head(K, b, h, skb, skh)
    Vb = _head(V, b, h, svb, svh)
    Lb = _head(LD, b, h, slb, slh)
    Wh = W0 + h * N
    r, k, v, lw = _ld_rkvw(_head(R, b, h, srb, srh), Kb, Vb, Lb, Wh, pos, cn, srt, srn, skt, skn, svt, svn, slt, sln,
                           m2, N, DECAY)
    cex, ctail, ctot = _cums(lw)
    u = tl.load(U + h * N + cn, mask=nmask, other=0.0).to(tl.float32)
    return Kb, Vb, Lb, Wh, r, k, v, lw, cex, ctail, ctot, u


@jit
def _edge_states(S, plane, BH, pid, c, cs, NC, NS: tl.constexpr, Xb, Yb, Lb, Wh, sxt, sxn, syt, syn, slt, sln, T, N,
                 BT: tl.constexpr, BN: tl.constexpr, PREC: tl.constexpr, DECAY: tl.constexpr):
    """States of (x, y) at sub-chunk c's edges: the causal state before it and the anticausal state after it, from
    the scanned state-chunk states (stream ``plane`` and ``plane + 1`` of S) walked over the sub-chunks between."""
    size = BH.to(tl.int64) * NC * BN * BN
    P = _load_state(S + plane * size, pid, cs - 1, NC, cs > 0, BN)
    P = _walk(Xb, Yb, Lb, Wh, sxt, sxn, syt, syn, slt, sln, T, N, cs * NS, c, P, BT, BN, PREC, False, DECAY)
    Q = _load_state(S + (plane + 1) * size, pid, cs + 1, NC, cs + 1 < NC, BN)
    Q = _walk(Xb, Yb, Lb, Wh, sxt, sxn, syt, syn, slt, sln, T, N, c + 1, cs * NS + NS, Q, BT, BN, PREC, True, DECAY)
    return P, Q


@jit
def _store_y(Y, G, NW, NB, GO, y, b, h, T, H, N, pos, cn, m2, sgb, sgt, sgh, sgn, eps, NORM: tl.constexpr,
             KEEP_Y: tl.constexpr):
    """Store a sub-chunk's y into the contiguous (B, T, H, N) Y; with NORM instead (and y too with KEEP_Y) the
    GroupNorm of y as stored (its head's channels, weight NW, bias NB) times silu of the gate G into GO."""
    off = ((b * T + pos).to(tl.int64)[:, None] * H + h) * N + cn[None, :]
    ys = y.to(Y.dtype.element_ty)
    if NORM:
        yr = tl.where(m2, ys.to(tl.float32), 0.0)  # (normalized as stored: the backward recomputes from stored y)
        mean = tl.sum(yr, axis=1) / N
        d = tl.where(m2, yr - mean[:, None], 0.0)
        rstd = 1.0 / tl.sqrt(tl.sum(d * d, axis=1) / N + eps)
        nm = cn < N
        w = tl.load(NW + h * N + cn, mask=nm, other=0.0).to(tl.float32)
        bias = tl.load(NB + h * N + cn, mask=nm, other=0.0).to(tl.float32)
        g = _ld(_head(G, b, h, sgb, sgh), pos, cn, sgt, sgn, m2)
        out = ((d * rstd[:, None]) * w[None, :] + bias[None, :]) * (g * tl.sigmoid(g))
        tl.store(GO + off, out.to(GO.dtype.element_ty), mask=m2)
        if KEEP_Y:
            tl.store(Y + off, ys, mask=m2)
    else:
        tl.store(Y + off, ys, mask=m2)


@jit(do_not_specialize=["T", "H", "N", "NC", "BH"])
def _state_kernel(X, Y, LD, W0, S, GT, sxb, sxt, sxh, sxn, syb, syt, syh, syn, slb, slt, slh, sln, T, H, N, NC, BH,
                  BT: tl.constexpr, BN: tl.constexpr, NS: tl.constexpr, PREC: tl.constexpr, DECAY: tl.constexpr):
    """Per state chunk (NS sub-chunks of BT tokens): causal increment sum_n e^{ctot - cin_n} x_n y_n^T into S[0],
    anticausal sum_n e^{cex_n} x_n y_n^T into S[1] (cumulative log decays from the state chunk's ends), ctot."""
    pid = tl.program_id(0)
    c = tl.program_id(1)
    b = pid // H
    h = pid - b * H
    rt = tl.arange(0, BT)
    cn = tl.arange(0, BN)
    Xb = _head(X, b, h, sxb, sxh)
    Yb = _head(Y, b, h, syb, syh)
    Lb = _head(LD, b, h, slb, slh)
    Wh = W0 + h * N
    d_c = tl.zeros([BN, BN], tl.float32)
    d_a = tl.zeros([BN, BN], tl.float32)
    before = tl.zeros([BN], tl.float32)  # log decay from the state chunk's start to the sub-chunk's start
    for i in range(0, NS):
        pos = (c * NS + i) * BT + rt
        m2 = (pos < T)[:, None] & (cn < N)[None, :]
        x = _ld(Xb, pos, cn, sxt, sxn, m2)
        y = _ld(Yb, pos, cn, syt, syn, m2)
        cex, ctail, ctot = _cums(tl.maximum(_logd(Lb, Wh, pos, cn, slt, sln, m2, N, DECAY), LOGD_MIN))
        d_c = tl.exp(ctot)[:, None] * d_c + tl.dot(tl.trans(x * tl.exp(ctail)), y, input_precision=PREC)
        d_a += tl.dot(tl.trans(x * tl.exp(before[None, :] + cex)), y, input_precision=PREC)
        before += ctot
    off = (pid * NC + c).to(tl.int64) * BN * BN + cn[:, None] * BN + cn[None, :]
    tl.store(S + off, d_c.to(S.dtype.element_ty))
    tl.store(S + BH.to(tl.int64) * NC * BN * BN + off, d_a.to(S.dtype.element_ty))
    tl.store(GT + (pid * NC + c).to(tl.int64) * BN + cn, before)


@jit(do_not_specialize=["NC", "BH"])
def _scan_kernel(S, GT, NC, BH, BN: tl.constexpr, RJ: tl.constexpr, NCB: tl.constexpr):
    """In place over chunks: stream 0 (causal) S_c <- e^{ctot_c} S_{c-1} + S_c ascending, stream 1 (anticausal)
    S_c <- e^{ctot_c} S_{c+1} + S_c descending; program axis 2 = buffer * 2 + stream, RJ state rows per program."""
    pid = tl.program_id(0)
    jb = tl.program_id(1)
    z = tl.program_id(2)
    rev = z % 2
    Sb = S + z.to(tl.int64) * BH * NC * BN * BN
    flat = tl.arange(0, RJ * BN)
    jrow = jb * RJ + flat // BN
    icol = flat % BN
    rows = tl.arange(0, NCB)
    carry = tl.zeros([RJ * BN], tl.float32)
    nblk = tl.cdiv(NC, NCB)
    for ib in range(0, nblk):
        # stream 1 walks the chunks backwards; the rows of a block are then loaded in reversed order so that one
        # forward scan serves both streams
        blk = tl.where(rev == 1, nblk - 1 - ib, ib)
        cidx = tl.where(rev == 1, blk * NCB + NCB - 1 - rows, blk * NCB + rows)
        cv = (cidx < NC)[:, None] & (jrow < BN)[None, :]
        base = (pid * NC + cidx).to(tl.int64)
        off = base[:, None] * BN * BN + (jrow * BN + icol)[None, :]
        d = tl.load(Sb + off, mask=cv, other=0.0).to(tl.float32)
        g = tl.exp(tl.load(GT + base[:, None] * BN + jrow[None, :], mask=cv, other=0.0))
        gp, s = tl.associative_scan((g, d), 0, _lin2)
        s = s + gp * carry[None, :]
        tl.store(Sb + off, s.to(Sb.dtype.element_ty), mask=cv)
        carry = tl.sum(tl.where((rows == NCB - 1)[:, None], s, 0.0), axis=0)


@jit(do_not_specialize=["T", "H", "N", "NC", "BH", "L", "NJ"])
def _state_walk_kernel(X, Y, X2, Y2, LD, W0, S, sxb, sxt, sxh, sxn, syb, syt, syh, syn, s2xb, s2xt, s2xh, s2xn, s2yb,
                       s2yt, s2yh, s2yn, slb, slt, slh, sln, T, H, N, NC, BH, L, NJ, BL: tl.constexpr,
                       BN: tl.constexpr, BR: tl.constexpr, PREC: tl.constexpr, DECAY: tl.constexpr):
    """The scanned states of :func:`_scan_kernel` without the increments: one program per (batch*head, block of BR
    state rows = x channels, stream) walks the state chunks (L tokens each, BL a power of two >= L) in its stream's
    order, S <- e^{ctot} S + (x e^{ctail})^T y ascending (stream 0) or (x e^{cex})^T y descending (stream 1), the
    cumulative log decays from the state chunk's ends (every factor <= 1; a row needs only its own channel's), and
    stores S after each chunk. Program axis 0: batch*head * NJ + row block, axis 1: pair * 2 + stream (pair 1: X2,
    Y2, of X's and Y's dtypes)."""
    pid = tl.program_id(0) // NJ  # (the row blocks of one head next to each other: they read the same y)
    jb = tl.program_id(0) - pid * NJ
    rev = tl.program_id(1) % 2
    second = tl.program_id(1) >= 2
    b = pid // H
    h = pid - b * H
    Xb = tl.where(second, _head(X2, b, h, s2xb, s2xh), _head(X, b, h, sxb, sxh))
    Yb = tl.where(second, _head(Y2, b, h, s2yb, s2yh), _head(Y, b, h, syb, syh))
    sxt, sxn = tl.where(second, s2xt, sxt), tl.where(second, s2xn, sxn)
    syt, syn = tl.where(second, s2yt, syt), tl.where(second, s2yn, syn)
    Lb = _head(LD, b, h, slb, slh)
    Wh = W0 + h * N
    rt = tl.arange(0, BL)
    cn = tl.arange(0, BN)
    cr = jb * BR + tl.arange(0, BR)
    Sb = S + (tl.program_id(1).to(tl.int64) * BH + pid) * NC * BN * BN
    acc = tl.zeros([BR, BN], tl.float32)
    # row i holds token ti of its chunk: ti = i descending (cex_ti = sum of the log decays of tokens i' < ti), else
    # ti = L - 1 - i (ctail_ti = sum over tokens after ti): either way an inclusive prefix sum over the rows of the
    # log decays of the tokens si one step back (descending) / on (ascending), a sum of terms of one sign (fp32, no
    # difference of larger sums); the edge token e (last descending, first ascending) completes the chunk's total
    ti = tl.where(rev == 1, rt, L - 1 - rt)
    si = tl.where(rev == 1, rt - 1, L - rt)
    e = tl.where(rev == 1, L - 1, 0) + tl.zeros([1], tl.int32)
    rm = (cr < N)[None, :]
    for i in range(0, NC):
        c = tl.where(rev == 1, NC - 1 - i, i)
        pos = c * L + ti
        tv = (rt < L) & (pos < T)
        mr = tv[:, None] & rm
        x = _ld(Xb, pos, cr, sxt, sxn, mr)
        y = _ld(Yb, pos, cn, syt, syn, tv[:, None] & (cn < N)[None, :])
        ps = c * L + si
        ls = tl.maximum(_logd(Lb, Wh, ps, cr, slt, sln, ((si >= 0) & (si < L) & (ps < T))[:, None] & rm, N, DECAY),
                        LOGD_MIN)
        le = tl.maximum(_logd(Lb, Wh, c * L + e, cr, slt, sln, (c * L + e < T)[:, None] & rm, N, DECAY), LOGD_MIN)
        tot = tl.sum(ls, axis=0) + tl.sum(le, axis=0)
        acc = tl.exp(tot)[:, None] * acc + tl.dot(tl.trans(x * tl.exp(tl.cumsum(ls, axis=0))), y,
                                                  input_precision=PREC)
        off = c.to(tl.int64) * BN * BN + cr[:, None] * BN + cn[None, :]
        tl.store(Sb + off, acc.to(S.dtype.element_ty), mask=(cr < BN)[:, None])


@jit(do_not_specialize=["T", "H", "N", "NC", "BH"])
def _fwd_kernel(R, K, V, LD, W0, U, Y, S, G, NW, NB, GO, srb, srt, srh, srn, skb, skt, skh, skn, svb, svt, svh, svn,
                slb, slt, slh, sln, sgb, sgt, sgh, sgn, eps, T, H, N, NC, BH, BT: tl.constexpr, BN: tl.constexpr,
                NS: tl.constexpr, PREC: tl.constexpr, DECAY: tl.constexpr, NORM: tl.constexpr,
                KEEP_Y: tl.constexpr):
    """y for sub-chunk c (BT tokens); NC state chunks of NS sub-chunks (stored by :func:`_store_y`)."""
    pid, c, cs, b, h, rt, cn, nmask, pos, tv, m2 = _coords(T, H, N, NS, BT, BN)
    Kb, Vb, Lb, Wh, r, k, v, lw, cex, ctail, ctot, u = _own_sub_chunk(
        R, K, V, LD, W0, U, b, h, pos, cn, nmask, m2, srb, srt, srh, srn, skb, skt, skh, skn, svb, svt, svh, svn, slb,
        slt, slh, sln, N, DECAY)
    # states at the sub-chunk's edges: the state chunk's incoming states walked over its other sub-chunks
    P, Q = _edge_states(S, 0, BH, pid, c, cs, NC, NS, Kb, Vb, Lb, Wh, skt, skn, svt, svn, slt, sln, T, N, BT, BN, PREC,
                        DECAY)
    y = tl.dot(r * tl.exp(cex), P, input_precision=PREC)
    y += tl.dot(r * tl.exp(ctail), Q, input_precision=PREC)
    y += _intra_av(r, k, v, lw, cex, ctot, u, rt, BT, PREC)
    _store_y(Y, G, NW, NB, GO, y, b, h, T, H, N, pos, cn, m2, sgb, sgt, sgh, sgn, eps, NORM, KEEP_Y)


@jit(do_not_specialize=["T", "H", "N", "NC", "BH"])
def _fwd_carry_kernel(R, K, V, LD, W0, U, Y, Z, S, G, NW, NB, GO, srb, srt, srh, srn, skb, skt, skh, skn, svb, svt,
                      svh, svn, slb, slt, slh, sln, sgb, sgt, sgh, sgn, eps, T, H, N, NC, BH, BT: tl.constexpr,
                      BN: tl.constexpr, NS: tl.constexpr, PREC: tl.constexpr, DECAY: tl.constexpr,
                      NORM: tl.constexpr, KEEP_Y: tl.constexpr):
    """y for state chunk cs (NS sub-chunks of BT tokens) with the states carried from sub-chunk to sub-chunk instead
    of walked per sub-chunk (``fwd_carry=1``): a descending pass leaves each sub-chunk's anticausal part
    (r e^{ctail}) Q in the fp32 scratch Z, an ascending pass adds (r e^{cex}) P and the intra-chunk pairs."""
    pid, cs, b, h, rt, cn, nmask = _program(H, N, BT, BN)  # (program axis 1: the state chunk)
    Rb = _head(R, b, h, srb, srh)
    Kb = _head(K, b, h, skb, skh)
    Vb = _head(V, b, h, svb, svh)
    Lb = _head(LD, b, h, slb, slh)
    Wh = W0 + h * N
    Q = _load_state(S + BH.to(tl.int64) * NC * BN * BN, pid, cs + 1, NC, cs + 1 < NC, BN)
    for j in range(0, NS):
        pos = (cs * NS + NS - 1 - j) * BT + rt
        m2 = (pos < T)[:, None] & nmask[None, :]
        r, k, v, lw = _ld_rkvw(Rb, Kb, Vb, Lb, Wh, pos, cn, srt, srn, skt, skn, svt, svn, slt, sln, m2, N, DECAY)
        cex, ctail, ctot = _cums(lw)
        zp = Z + ((b * T + pos).to(tl.int64)[:, None] * H + h) * N + cn[None, :]
        tl.store(zp, tl.dot(r * tl.exp(ctail), Q, input_precision=PREC), mask=m2)
        Q = tl.exp(ctot)[:, None] * Q + tl.dot(tl.trans(k * tl.exp(cex)), v, input_precision=PREC)
    tl.debug_barrier()  # (Z written above by other threads of this program than may read it below)
    u = tl.load(U + h * N + cn, mask=nmask, other=0.0).to(tl.float32)
    P = _load_state(S, pid, cs - 1, NC, cs > 0, BN)
    for i in range(0, NS):
        pos = (cs * NS + i) * BT + rt
        tv = pos < T
        m2 = tv[:, None] & nmask[None, :]
        r, k, v, lw = _ld_rkvw(Rb, Kb, Vb, Lb, Wh, pos, cn, srt, srn, skt, skn, svt, svn, slt, sln, m2, N, DECAY)
        cex, ctail, ctot = _cums(lw)
        off = ((b * T + pos).to(tl.int64)[:, None] * H + h) * N + cn[None, :]
        y = tl.dot(r * tl.exp(cex), P, input_precision=PREC) + tl.load(Z + off, mask=m2, other=0.0)
        y += _intra_av(r, k, v, lw, cex, ctot, u, rt, BT, PREC)
        _store_y(Y, G, NW, NB, GO, y, b, h, T, H, N, pos, cn, m2, sgb, sgt, sgh, sgn, eps, NORM, KEEP_Y)
        P = tl.exp(ctot)[:, None] * P + tl.dot(tl.trans(k * tl.exp(ctail)), v, input_precision=PREC)


@jit
def _ld_bwd(Rb, Kb, Vb, Gb, Lb, Wh, b, h, T, H, N, pos, cn, m2, srt, srn, skt, skn, svt, svn, sgt, sgn, slt, sln,
            DECAY: tl.constexpr):
    """What a sub-chunk's backward reads: r, k, v, gy, the clamped log decay, its exclusive cumulative sum cex and
    total ctot, e^{cex}, e^{ctail}, and the tokens' offsets into a contiguous (B, T, H, N) tensor."""
    r, k, v, lw = _ld_rkvw(Rb, Kb, Vb, Lb, Wh, pos, cn, srt, srn, skt, skn, svt, svn, slt, sln, m2, N, DECAY)
    gy = _ld(Gb, pos, cn, sgt, sgn, m2)
    cex, ctail, ctot = _cums(lw)
    off = ((b * T + pos).to(tl.int64)[:, None] * H + h) * N + cn[None, :]
    return r, k, v, gy, lw, cex, ctot, tl.exp(cex), tl.exp(ctail), off


@jit
def _bwd_tail(r, k, v, gy, lw, cex, ctot, ecx, etl, u, gr_c, gr_a, gk_c, gk_a, gv, m2, rt, cn, GR, GK, GV, GLP, ZT,
              GUP, off, coff, cok, BT: tl.constexpr, BN: tl.constexpr, PREC: tl.constexpr):
    """A sub-chunk's gradients from its inter-chunk parts (suffix _c: causal direction, sources before the query;
    _a: anticausal; gv both): the intra-chunk pairs and the bonus added, the log-decay gradient's in-chunk suffix
    sum, stores of gr, gk, gv, the log-decay partial (GLP at ``off``) and, when ``cok`` (a sub-chunk of the
    sequence), the sub-chunk totals (ZT, GUP at ``coff``)."""
    G = tl.dot(gy, tl.trans(v), input_precision=PREC)  # G[t, n] = gy_t . v_n
    lo2 = rt[None, :] < rt[:, None]  # [t, n]: n < t
    up2 = rt[None, :] > rt[:, None]
    if tl.max(-ctot, axis=0) <= FAST_DECAY:
        # factorized through the sub-chunk's start (see _fwd_kernel): tensor-core products only
        ecn = tl.exp(-(cex + lw))
        G_lo = tl.where(lo2, G, 0.0)
        G_up = tl.where(up2, G, 0.0)
        gr_c += ecx * tl.dot(G_lo, k * ecn, input_precision=PREC)
        gr_a += ecn * tl.dot(G_up, k * ecx, input_precision=PREC)
        gk_c += ecn * tl.dot(tl.trans(G_lo), r * ecx, input_precision=PREC)
        gk_a += ecx * tl.dot(tl.trans(G_up), r * ecn, input_precision=PREC)
        A = _fast_scores(r, k, ecx, ecn, rt, PREC)
    else:  # any decay: the binary split of _split_scores, three products per level and direction
        A = tl.zeros([BT, BT], tl.float32)
        B2 = BT
        while B2 >= 2:
            eu, el, mc, ma = _split_level(lw, rt, B2)
            # (causal pairs first, then anticausal: two scaled operands live at a time)
            d_r, d_k, a = _split_grads(G, mc, r, k, eu, el, PREC)
            gr_c += d_r
            gk_c += d_k
            A += a
            d_r, d_k, a = _split_grads(G, ma, r, k, el, eu, PREC)
            gr_a += d_r
            gk_a += d_k
            A += a
            B2 = B2 // 2
    bonus = tl.sum(r * u[None, :] * k, axis=1)
    A = tl.where(rt[:, None] == rt[None, :], bonus[:, None], A)
    gv += tl.dot(tl.trans(A), gy, input_precision=PREC)
    gvy = tl.sum(gy * v, axis=1)
    gr = gr_c + gr_a + u[None, :] * k * gvy[:, None]
    gk = gk_c + gk_a + u[None, :] * r * gvy[:, None]
    d_c = r * gr_c
    d_a = r * gr_a
    e_c = k * gk_c
    e_a = k * gk_a
    zz = tl.where(m2, d_c + e_a - e_c - d_a, 0.0)
    glp = tl.cumsum(zz, axis=0, reverse=True) - zz - (e_c + d_a)
    tl.store(GR + off, gr.to(GR.dtype.element_ty), mask=m2)
    tl.store(GK + off, gk.to(GK.dtype.element_ty), mask=m2)
    tl.store(GV + off, gv.to(GV.dtype.element_ty), mask=m2)
    tl.store(GLP + off, glp, mask=m2)
    tl.store(ZT + coff, tl.sum(zz, axis=0), mask=cok & (cn < BN))
    tl.store(GUP + coff, tl.sum(r * k * gvy[:, None], axis=0), mask=cok & (cn < BN))


@jit(do_not_specialize=["T", "H", "N", "NC", "BH"])
def _bwd_kernel(R, K, V, LD, W0, U, GY, S, GR, GK, GV, GLP, ZT, GUP, srb, srt, srh, srn, skb, skt, skh, skn,
                svb, svt, svh, svn, slb, slt, slh, sln, sgb, sgt, sgh, sgn, T, H, N, NC, BH, BT: tl.constexpr,
                BN: tl.constexpr, NS: tl.constexpr, PREC: tl.constexpr, DECAY: tl.constexpr):
    """Gradients for sub-chunk c (BT tokens); NC state chunks of NS sub-chunks."""
    pid, c, cs, b, h, rt, cn, nmask, pos, tv, m2 = _coords(T, H, N, NS, BT, BN)
    Rb = _head(R, b, h, srb, srh)
    Kb = _head(K, b, h, skb, skh)
    Vb = _head(V, b, h, svb, svh)
    Gb = _head(GY, b, h, sgb, sgh)
    Lb = _head(LD, b, h, slb, slh)
    Wh = W0 + h * N
    r, k, v, gy, lw, cex, ctot, ecx, etl, off = _ld_bwd(Rb, Kb, Vb, Gb, Lb, Wh, b, h, T, H, N, pos, cn, m2, srt, srn,
                                                        skt, skn, svt, svn, sgt, sgn, slt, sln, DECAY)
    u = tl.load(U + h * N + cn, mask=nmask, other=0.0).to(tl.float32)
    P, Q = _edge_states(S, 0, BH, pid, c, cs, NC, NS, Kb, Vb, Lb, Wh, skt, skn, svt, svn, slt, sln, T, N, BT, BN, PREC,
                        DECAY)
    GQ, GP = _edge_states(S, 2, BH, pid, c, cs, NC, NS, Rb, Gb, Lb, Wh, srt, srn, sgt, sgn, slt, sln, T, N, BT, BN,
                          PREC, DECAY)
    # inter-chunk parts (GQ / GP: the causal / anticausal states of (r, gy))
    gr_c = ecx * tl.dot(gy, tl.trans(P), input_precision=PREC)
    gr_a = etl * tl.dot(gy, tl.trans(Q), input_precision=PREC)
    gk_c = etl * tl.dot(v, tl.trans(GP), input_precision=PREC)
    gk_a = ecx * tl.dot(v, tl.trans(GQ), input_precision=PREC)
    gv = tl.dot(k * etl, GP, input_precision=PREC) + tl.dot(k * ecx, GQ, input_precision=PREC)
    coff = (pid * tl.num_programs(1) + c).to(tl.int64) * BN + cn
    _bwd_tail(r, k, v, gy, lw, cex, ctot, ecx, etl, u, gr_c, gr_a, gk_c, gk_a, gv, m2, rt, cn, GR, GK, GV, GLP, ZT,
              GUP, off, coff, True, BT, BN, PREC)


@jit(do_not_specialize=["T", "H", "N", "NC", "BH", "NSUB"])
def _bwd_carry_kernel(R, K, V, LD, W0, U, GY, S, GR, GK, GV, GLP, ZT, GUP, Z0, Z1, Z2, srb, srt, srh, srn, skb, skt,
                      skh, skn, svb, svt, svh, svn, slb, slt, slh, sln, sgb, sgt, sgh, sgn, T, H, N, NC, BH, NSUB,
                      BT: tl.constexpr, BN: tl.constexpr, NS: tl.constexpr, PREC: tl.constexpr,
                      DECAY: tl.constexpr):
    """Gradients for state chunk cs (NS sub-chunks of BT tokens) with the states carried from sub-chunk to sub-chunk
    (``bwd_carry=1``), two at a time: a descending pass carries the anticausal states Q of (k, v) and GP of (r, gy)
    and leaves each sub-chunk's anticausal inter-chunk parts of gr, gk, gv in the fp32 scratch Z0-Z2; an ascending
    pass carries the causal states P and GQ and finishes each sub-chunk (:func:`_bwd_tail`)."""
    pid, cs, b, h, rt, cn, nmask = _program(H, N, BT, BN)  # (program axis 1: the state chunk)
    Rb = _head(R, b, h, srb, srh)
    Kb = _head(K, b, h, skb, skh)
    Vb = _head(V, b, h, svb, svh)
    Gb = _head(GY, b, h, sgb, sgh)
    Lb = _head(LD, b, h, slb, slh)
    Wh = W0 + h * N
    size = BH.to(tl.int64) * NC * BN * BN
    Q = _load_state(S + size, pid, cs + 1, NC, cs + 1 < NC, BN)
    GP = _load_state(S + 3 * size, pid, cs + 1, NC, cs + 1 < NC, BN)
    for j in range(0, NS):
        pos = (cs * NS + NS - 1 - j) * BT + rt
        m2 = (pos < T)[:, None] & nmask[None, :]
        r, k, v, gy, lw, cex, ctot, ecx, etl, off = _ld_bwd(Rb, Kb, Vb, Gb, Lb, Wh, b, h, T, H, N, pos, cn, m2, srt,
                                                            srn, skt, skn, svt, svn, sgt, sgn, slt, sln, DECAY)
        tl.store(Z0 + off, etl * tl.dot(gy, tl.trans(Q), input_precision=PREC), mask=m2)
        tl.store(Z1 + off, etl * tl.dot(v, tl.trans(GP), input_precision=PREC), mask=m2)
        tl.store(Z2 + off, tl.dot(k * etl, GP, input_precision=PREC), mask=m2)
        Q = tl.exp(ctot)[:, None] * Q + tl.dot(tl.trans(k * ecx), v, input_precision=PREC)
        GP = tl.exp(ctot)[:, None] * GP + tl.dot(tl.trans(r * ecx), gy, input_precision=PREC)
    tl.debug_barrier()  # (Z0-Z2 written above by other threads of this program than may read them below)
    u = tl.load(U + h * N + cn, mask=nmask, other=0.0).to(tl.float32)
    P = _load_state(S, pid, cs - 1, NC, cs > 0, BN)
    GQ = _load_state(S + 2 * size, pid, cs - 1, NC, cs > 0, BN)
    for i in range(0, NS):
        c = cs * NS + i
        pos = c * BT + rt
        tv = pos < T
        m2 = tv[:, None] & nmask[None, :]
        r, k, v, gy, lw, cex, ctot, ecx, etl, off = _ld_bwd(Rb, Kb, Vb, Gb, Lb, Wh, b, h, T, H, N, pos, cn, m2, srt,
                                                            srn, skt, skn, svt, svn, sgt, sgn, slt, sln, DECAY)
        gr_c = ecx * tl.dot(gy, tl.trans(P), input_precision=PREC)
        gk_a = ecx * tl.dot(v, tl.trans(GQ), input_precision=PREC)
        gv = tl.load(Z2 + off, mask=m2, other=0.0) + tl.dot(k * ecx, GQ, input_precision=PREC)
        gr_a = tl.load(Z0 + off, mask=m2, other=0.0)
        gk_c = tl.load(Z1 + off, mask=m2, other=0.0)
        P = tl.exp(ctot)[:, None] * P + tl.dot(tl.trans(k * etl), v, input_precision=PREC)
        GQ = tl.exp(ctot)[:, None] * GQ + tl.dot(tl.trans(r * etl), gy, input_precision=PREC)
        coff = (pid * NSUB + c).to(tl.int64) * BN + cn
        _bwd_tail(r, k, v, gy, lw, cex, ctot, ecx, etl, u, gr_c, gr_a, gk_c, gk_a, gv, m2, rt, cn, GR, GK, GV, GLP,
                  ZT, GUP, off, coff, c < NSUB, BT, BN, PREC)


@jit(do_not_specialize=["NSUB"])
def _suffix_kernel(ZT, AFTER, NSUB, BN: tl.constexpr, RB: tl.constexpr):
    """AFTER[p, c] = the sum of ZT[p, c'] over the sub-chunks c' after c, per channel ((P, NSUB, BN) fp32; blocks of
    RB sub-chunks from the last one, a carry between blocks)."""
    pid = tl.program_id(0)
    cn = tl.arange(0, BN)
    rows = tl.arange(0, RB)
    carry = tl.zeros([BN], tl.float32)
    nblk = tl.cdiv(NSUB, RB)
    for ib in range(0, nblk):
        c = (nblk - 1 - ib) * RB + rows
        m = (c < NSUB)[:, None] & (cn < BN)[None, :]
        off = (pid * NSUB + c).to(tl.int64)[:, None] * BN + cn[None, :]
        x = tl.load(ZT + off, mask=m, other=0.0)
        tl.store(AFTER + off, tl.cumsum(x, axis=0, reverse=True) - x + carry[None, :], mask=m)
        carry += tl.sum(x, axis=0)


@jit(do_not_specialize=["T", "H", "N", "NSUB"])
def _glogd_kernel(GLP, AFTER, LD, W0, OUT, slb, slt, slh, sln, T, H, N, NSUB, BT: tl.constexpr, BN: tl.constexpr,
                  DECAY: tl.constexpr, INLINE: tl.constexpr):
    """The log decay's gradient for sub-chunk c: its in-chunk part (GLP) plus the totals of the sub-chunks after it
    (AFTER; with INLINE - at most INLINE sub-chunks, a power of two - AFTER holds the sub-chunk totals themselves and
    the program sums the ones after c: no suffix kernel), 0 where the log decay was clamped; with DECAY the gradient
    of the pre-activation z held in LD (that times the log decay -exp(w0 + z))."""
    pid, c, b, h, rt, cn, nmask = _program(H, N, BT, BN)
    pos = c * BT + rt
    m2 = (pos < T)[:, None] & nmask[None, :]
    off = ((b * T + pos).to(tl.int64)[:, None] * H + h) * N + cn[None, :]
    if INLINE:
        later = tl.arange(0, INLINE)
        zrows = (pid * NSUB + later).to(tl.int64)[:, None] * BN + cn[None, :]
        after = tl.sum(tl.load(AFTER + zrows, mask=((later > c) & (later < NSUB))[:, None], other=0.0), axis=0)
    else:
        after = tl.load(AFTER + (pid * NSUB + c).to(tl.int64) * BN + cn)
    g = tl.load(GLP + off, mask=m2, other=0.0) + after[None, :]
    lw = _logd(_head(LD, b, h, slb, slh), W0 + h * N, pos, cn, slt, sln, m2, N, DECAY)
    if DECAY:
        g = g * lw
    g = tl.where(lw >= LOGD_MIN, g, 0.0)  # (the clamp's derivative; after the product: 0, not 0 * -inf)
    tl.store(OUT + off, g.to(OUT.dtype.element_ty), mask=m2)


@jit(do_not_specialize=["T", "H", "N", "BH"])
def _planes_kernel(Y2, Y, G, NW, NB, GO, sgb, sgt, sgh, sgn, eps, T, H, N, BH, BT: tl.constexpr,
                   BN: tl.constexpr, NORM: tl.constexpr, KEEP_Y: tl.constexpr):
    """The walk kernels' output: their two directions' fp32 planes Y2 (2, B, T, H, N) summed and stored by
    :func:`_store_y` (y rounded to Y's dtype; with NORM the GroupNorm * silu gate of it, as the chunk forward). One
    program per (batch*head, block of BT tokens), all on grid axis 0 (any T)."""
    nblk = tl.cdiv(T, BT)
    pid = tl.program_id(0) // nblk
    c = tl.program_id(0) - pid * nblk
    b = pid // H
    h = pid - b * H
    cn = tl.arange(0, BN)
    pos = c * BT + tl.arange(0, BT)
    m2 = (pos < T)[:, None] & (cn < N)[None, :]
    off = ((b * T + pos).to(tl.int64)[:, None] * H + h) * N + cn[None, :]
    plane = BH.to(tl.int64) * T * N  # (B * H * T * N: one direction's plane)
    y = tl.load(Y2 + off, mask=m2, other=0.0) + tl.load(Y2 + plane + off, mask=m2, other=0.0)
    _store_y(Y, G, NW, NB, GO, y, b, h, T, H, N, pos, cn, m2, sgb, sgt, sgh, sgn, eps, NORM, KEEP_Y)


# ------------------------------------------------------------------------------------------------- host side
def _geometry(T: int, BT: int):
    """(sub-chunks, sub-chunks per state chunk, state chunks): states are kept every ``state_t`` tokens."""
    from .triton import CONFIG

    st = int(CONFIG["state_t"])
    if st < BT or st % BT:
        raise ValueError(f"VRWKV_TRITON_V6 state_t must be a multiple of block_t={BT}, got {st}")
    nsub = cdiv(T, BT)
    ns = min(st // BT, nsub)
    return nsub, ns, cdiv(nsub, ns)


def _states(pairs, logd, w0, cfg, T, H, N, NS, NC, BN):
    """Fill and scan the states of each (x, y) pair: (len(pairs), 2, B*H, NC, BN, BN), stream 0 causal, stream 1
    anticausal, each INCLUDING its state chunk; fp32, or the 16-bit input dtype with ``state_dtype=input``. ``w0``:
    see :func:`chunk_fwd`."""
    from .triton import CONFIG

    BH = logd.shape[0] * H
    BT, _, prec, nw = cfg
    if CONFIG["state_dtype"] not in ("fp32", "input"):
        raise ValueError(f"VRWKV_TRITON_V6 state_dtype must be 'fp32' or 'input', got {CONFIG['state_dtype']!r}")
    sdt = pairs[0][1].dtype if CONFIG["state_dtype"] == "input" else torch.float32
    S = new_empty((len(pairs), 2, BH, NC, BN, BN), sdt, logd.device)
    if NC <= CONFIG["state_walk"]:  # few state chunks: walked in order by one kernel (no increments, no scan)
        br = _walk_rows(BH, BN, CONFIG["state_rows"])
        meta = dict(BL=next_pow2(NS * BT), BN=BN, BR=br, PREC=prec, DECAY=w0 is not None, num_warps=nw)
        one = len(pairs) == 1 or [t.dtype for t in pairs[0]] != [t.dtype for t in pairs[1]]
        for i in range(len(pairs)) if one else (0,):  # (both pairs in one launch where their dtypes match)
            sel = [pairs[i], pairs[i]] if one else pairs
            _state_walk_kernel[(BH * (BN // br), 2 if one else 4)](  # (S itself where it writes both pairs')
                *sel[0], *sel[1], logd, _w0_arg(w0, logd), S[i] if one else S,
                *(st for p in sel for t in p for st in t.stride()), *logd.stride(), T, H, N, NC, BH, NS * BT, BN // br,
                **meta)
        return S
    GT = new_empty((BH, NC, BN), torch.float32, logd.device)
    for i, (x, y) in enumerate(pairs):
        _state_kernel[(BH, NC)](x, y, logd, _w0_arg(w0, logd), S[i], GT, *x.stride(), *y.stride(), *logd.stride(), T,
                                H, N, NC, BH, BT=BT, BN=BN, NS=NS, PREC=prec, DECAY=w0 is not None, num_warps=nw)
    ncb = min(next_pow2(CONFIG["scan_ncb"]), next_pow2(NC))
    rj = min(BN, max(1, next_pow2(CONFIG["scan_elems"] // (ncb * BN) + 1) // 2))  # a power of two
    _scan_kernel[(BH, cdiv(BN, rj), 2 * len(pairs))](S, GT, NC, BH, BN=BN, RJ=rj, NCB=ncb, num_warps=nw)
    return S


WALK_PROGRAMS = 512  # state-walk programs wanted (a few per SM): fewer heads split their state rows


def _walk_rows(BH: int, BN: int, br: int) -> int:
    """State rows (x channels) per state-walk program: ``br`` (``state_rows``, rounded to a power of two in
    [16, BN]), or with 0 the most that still give :data:`WALK_PROGRAMS` programs (each row block loads all of y)."""
    if br:
        return min(BN, next_pow2(max(16, br)))
    br = BN
    while br > 16 and 2 * BH * (BN // br) < WALK_PROGRAMS:
        br //= 2
    return br


def _launch_opts(nw: int) -> dict:
    """Launch options of the output and gradient kernels: their warps and the ``maxnreg`` cap (these kernels take all
    255 registers by default: two programs of 4 warps per SM)."""
    from .triton import CONFIG

    return launch_opts(nw, CONFIG["maxnreg"])


def _w0_arg(w0, logd):
    """The kernels' W0 argument: w0, or (without one: unused) the log decay."""
    return logd if w0 is None else w0


def chunk_fwd(r, k, v, logd, u, cfg, w0=None, norm=None):
    """y (B, T, H, N) in v's dtype; cfg = (BT, BN, input precision, warps) from ``triton._cfg``. With ``w0`` (H*N,)
    ``logd`` holds the decay's pre-activation z: the kernels form the log decay -exp(w0 + z) as they load it.
    ``norm`` = (g, weight, bias, eps, out_dtype, keep_y): (y or None, GroupNorm(y) * silu(g)) instead, formed as y
    is stored (groups = heads; g (B, T, H, N), any strides; the product (B, T, H, N) in out_dtype)."""
    from .triton import CONFIG

    B, T, H, N = r.shape
    BT, BN, prec, nw = cfg
    nsub, NS, NC = _geometry(T, BT)
    S = _states([(k, v)], logd, w0, cfg, T, H, N, NS, NC, BN)
    dev = r.device
    y, yarg, ep, gated, keep_y = _outputs(v, norm)
    args = (r, k, v, logd, _w0_arg(w0, logd), u)
    meta = dict(BT=BT, BN=BN, NS=NS, PREC=prec, DECAY=w0 is not None, NORM=norm is not None, KEEP_Y=keep_y,
                **_launch_opts(nw))
    strides = (*r.stride(), *k.stride(), *v.stride(), *logd.stride())
    if CONFIG["fwd_carry"]:  # one program per state chunk, its states carried through its sub-chunks
        z = new_empty((B, T, H, N), torch.float32, dev)
        _fwd_carry_kernel[(B * H, NC)](*args, yarg, z, S, *ep[:4], *strides, *ep[4:], T, H, N, NC, B * H, **meta)
    else:
        _fwd_kernel[(B * H, nsub)](*args, yarg, S, *ep[:4], *strides, *ep[4:], T, H, N, NC, B * H, **meta)
    return y if norm is None else (y, gated)


def _outputs(v, norm):
    """The outputs :func:`_store_y` writes for a forward of v's shape: (y or None, Y's argument - v where y is not
    kept, whose dtype y is rounded to -, the epilogue's arguments (G, NW, NB, GO, g's four strides, eps), the gated
    product or None, keep_y); ``norm`` as in :func:`chunk_fwd`."""
    keep_y = norm is None or norm[5]
    y = new_empty(v.shape, v.dtype, v.device) if keep_y else None
    yarg = v if y is None else y
    if norm is None:
        return y, yarg, (yarg, yarg, yarg, yarg, 0, 0, 0, 0, 0.0), None, keep_y
    g, weight, bias, eps, out_dtype, _ = norm
    gated = new_empty(v.shape, out_dtype, v.device)
    return y, yarg, (g, weight, bias, gated, *g.stride(), float(eps)), gated, keep_y


def walk_planes_out(y2, v, BN, norm=None):
    """y (B, T, H, N) in v's dtype from the walk kernels' direction planes y2 (2, B, T, H, N) fp32, summed in fp32;
    with ``norm`` (see :func:`chunk_fwd`) (y or None, GroupNorm(y) * silu(g)) instead, formed as y is stored (in
    inference y is never written)."""
    _, B, T, H, N = y2.shape
    y, yarg, ep, gated, keep_y = _outputs(v, norm)
    BT = max(16, 1024 // BN)
    _planes_kernel[(B * H * cdiv(T, BT),)](y2, yarg, *ep, T, H, N, B * H, BT=BT, BN=BN, NORM=norm is not None,
                                           KEEP_Y=keep_y, num_warps=4)
    return y if norm is None else (y, gated)


def chunk_bwd(r, k, v, logd, u, gy, cfg, out=None, w0=None):
    """(gr, gk, gv, glogd, gu) in the inputs' dtypes; ``out``: the (gr, gk, gv) buffers to write (checked by the
    caller). With ``w0`` (see :func:`chunk_fwd`) the fourth is the gradient of z (the log decay's pre-activation)."""
    from .triton import CONFIG

    B, T, H, N = r.shape
    BT, BN, prec, nw = cfg
    nsub, NS, NC = _geometry(T, BT)
    dev = r.device
    S = _states([(k, v), (r, gy)], logd, w0, cfg, T, H, N, NS, NC, BN)
    w0_arg, dec = _w0_arg(w0, logd), dict(DECAY=w0 is not None)
    if out is None:
        out = tuple(new_empty((B, T, H, N), t.dtype, dev) for t in (r, k, v))
    gr, gk, gv = out
    glp = new_empty((B, T, H, N), torch.float32, dev)
    zt = new_empty((B * H, nsub, BN), torch.float32, dev)
    gup = new_empty((B * H, nsub, BN), torch.float32, dev)
    strides = (*r.stride(), *k.stride(), *v.stride(), *logd.stride(), *gy.stride())
    if CONFIG["bwd_carry"]:  # one program per state chunk, the states carried through its sub-chunks, two at a time
        z = new_empty((3, B, T, H, N), torch.float32, dev)
        _bwd_carry_kernel[(B * H, NC)](r, k, v, logd, w0_arg, u, gy, S, gr, gk, gv, glp, zt, gup, z[0], z[1], z[2],
                                       *strides, T, H, N, NC, B * H, nsub, BT=BT, BN=BN, NS=NS, PREC=prec,
                                       **dec, **_launch_opts(nw))
    else:
        _bwd_kernel[(B * H, nsub)](r, k, v, logd, w0_arg, u, gy, S, gr, gk, gv, glp, zt, gup, *strides, T, H, N, NC,
                                   B * H, BT=BT, BN=BN, NS=NS, PREC=prec, **dec, **_launch_opts(nw))
    # suffix sums of the sub-chunk totals (the sub-chunks after each one: small), added to each sub-chunk's tokens -
    # for few sub-chunks (e.g. 13 at 224 px) summed by each program of the gradient kernel itself (one launch less)
    inline = next_pow2(nsub) if nsub <= CONFIG["suffix_inline"] else 0
    after = zt
    if not inline:
        after = new_empty(zt.shape, torch.float32, dev)
        rb = min(next_pow2(CONFIG["scan_ncb"]), next_pow2(nsub))  # (sub-chunks per block: as the state scan's chunks)
        _suffix_kernel[(B * H,)](zt, after, nsub, BN=BN, RB=rb, num_warps=4)
    glogd = new_empty((B, T, H, N), logd.dtype, dev)
    _glogd_kernel[(B * H, nsub)](glp, after, logd, w0_arg, glogd, *logd.stride(), T, H, N, nsub, BT=BT, BN=BN,
                                 **dec, INLINE=inline, num_warps=2)
    gu = gup.view(B, H, nsub, BN)[..., :N].sum((0, 2)).to(u.dtype)
    return gr, gk, gv, glogd, gu
