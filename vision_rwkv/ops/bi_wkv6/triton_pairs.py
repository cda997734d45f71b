"""The bidirectional RWKV-6 WKV forward for short sequences as a sum over pairs of sub-chunks, without states.

With ``VRWKV_TRITON_V6=pairs_max_t=N`` (chunk algo), forwards of at most N tokens take this kernel instead of the
chunk kernels (``triton_chunk.py``: a kernel that fills the N x N states, then per 16-token sub-chunk a program that
loads two fp32 states and walks them to its edges). One program per (batch*head, sub-chunk c) sums over every other
sub-chunk J. The weight of a source n in J on a query t in c factors through the edges between them:

    J < c:  prod_{n<m<t} d_m = e^{cex_t} * e^{ctail_n + D}
    J > c:  prod_{t<m<n} d_m = e^{ctail_t} * e^{cex_n + D}

(cex / ctail: exclusive in-sub-chunk cumulative log decays from its start / end, as in ``triton_chunk.py``; D: the
total log decay of the sub-chunks strictly between; every factor <= 1, exact for any decay). So

    y_c = A_cc v_c + sum_{J<c} ((r e^{cex}) (k_J e^{ctail_J + D})^T) v_J
                   + sum_{J>c} ((r e^{ctail}) (k_J e^{cex_J + D})^T) v_J

with A_cc the sub-chunk's own pairs and bonus (``_intra_av``): per other sub-chunk two small tensor-core products
and one exponential per key element - work quadratic in T, in one launch, with no state bytes. Meant for the 224-px
sequences (196 tokens: 13 sub-chunks, 12 others per program). The backward stays the chunk kernels' (each backward
recomputes what it needs).

With ``pairs_keys=1`` a first kernel (:func:`_pair_keys_kernel`) writes every sub-chunk's decayed keys once - k e^{cex}
and k e^{ctail}, fp32 - and e^{its total}; the pair kernel then takes per source two tile loads, one multiply by the
running product e^D (e^{D + tot} = e^D e^{tot}, every factor <= 1) and the two products, instead of loading the
source's k and log decays, forming the decays (fused decay: an exponential each), their scan and an exponential per
key element in each of the ~12 programs that read it.
"""
from __future__ import annotations

import torch
import triton.language as tl

from .._triton_utils import cdiv, new_empty
from ..triton_jit import jit
from .triton import LOGD_MIN, _cums, _head, _ld, _logd
from .triton_chunk import _intra_av, _launch_opts, _outputs, _own_sub_chunk, _program, _store_y, _w0_arg

__all__ = ["pairs_fwd"]


@jit
def _source_block(Kb, Vb, Lb, Wh, pos, cn, nmask, skt, skn, svt, svn, slt, sln, T, N, D, DECAY: tl.constexpr):
    """A source sub-chunk's keys times their weights' source factor e^{(its log decays between the key and the query's
    side) + D}, its values and its total log decay. ``pos`` lists the sub-chunk's tokens from the query's side
    outward - last to first for a source before the query's sub-chunk, first to last after it -, so that factor is
    an exclusive prefix sum over the rows either way (one scan of same-sign terms)."""
    m2 = (pos < T)[:, None] & nmask[None, :]
    k = _ld(Kb, pos, cn, skt, skn, m2)
    v = _ld(Vb, pos, cn, svt, svn, m2)
    lw = tl.maximum(_logd(Lb, Wh, pos, cn, slt, sln, m2, N, DECAY), LOGD_MIN)
    return k * tl.exp(tl.cumsum(lw, axis=0) - lw + D[None, :]), v, tl.sum(lw, axis=0)


@jit
def _source_keys(KD, ET, Vb, pid, j, rt, cn, nmask, svt, svn, T, NSUB, E, BT: tl.constexpr, BN: tl.constexpr):
    """``pairs_keys``: source sub-chunk j's decayed keys from KD (the key kernel's KT for a source before the query's
    sub-chunk, KX after it) times E = e^D, its values, and E times e^{its total} (the next source's E)."""
    pos = j * BT + rt
    rows = (pos < T)[:, None]
    kd = tl.load(KD + (pid.to(tl.int64) * T + pos)[:, None] * BN + cn[None, :], mask=rows, other=0.0)
    v = _ld(Vb, pos, cn, svt, svn, rows & nmask[None, :])
    return kd * E[None, :], v, E * tl.load(ET + (pid.to(tl.int64) * NSUB + j) * BN + cn)


@jit(do_not_specialize=["T", "H", "N", "NSUB"])
def _pair_keys_kernel(K, LD, W0, KX, KT, ET, skb, skt, skh, skn, slb, slt, slh, sln, T, H, N, NSUB, BT: tl.constexpr,
                      BN: tl.constexpr, DECAY: tl.constexpr, EVEN_N: tl.constexpr):
    """``pairs_keys``: per (batch*head, sub-chunk c), its keys decayed to its start and to its end, k e^{cex} (KX) and
    k e^{ctail} (KT), as fp32 rows of BN channels (zeros past N), and e^{its total log decay} (ET, (BH, NSUB, BN))."""
    pid, c, b, h, rt, cn, nmask = _program(H, N, BT, BN)
    if EVEN_N:
        nmask = cn < BN
    pos = c * BT + rt
    rows = pos < T
    m2 = rows[:, None] & nmask[None, :]
    k = _ld(_head(K, b, h, skb, skh), pos, cn, skt, skn, m2)
    lw = tl.maximum(_logd(_head(LD, b, h, slb, slh), W0 + h * N, pos, cn, slt, sln, m2, N, DECAY), LOGD_MIN)
    cex, ctail, ctot = _cums(lw)
    off = (pid.to(tl.int64) * T + pos)[:, None] * BN + cn[None, :]
    every = rows[:, None] & (cn < BN)[None, :]
    tl.store(KX + off, k * tl.exp(cex), mask=every)
    tl.store(KT + off, k * tl.exp(ctail), mask=every)
    tl.store(ET + (pid.to(tl.int64) * NSUB + c) * BN + cn, tl.exp(ctot))


@jit(do_not_specialize=["T", "H", "N", "NSUB"])
def _pairs_fwd_kernel(R, K, V, LD, W0, U, Y, G, NW, NB, GO, KX, KT, ET, srb, srt, srh, srn, skb, skt, skh, skn, svb,
                      svt, svh, svn, slb, slt, slh, sln, sgb, sgt, sgh, sgn, eps, T, H, N, NSUB, BT: tl.constexpr,
                      BN: tl.constexpr, PREC: tl.constexpr, DECAY: tl.constexpr, NORM: tl.constexpr,
                      KEEP_Y: tl.constexpr, EVEN_N: tl.constexpr, KEYS: tl.constexpr):
    """y for sub-chunk c (BT tokens) of NSUB: its own pairs, then the sources before it and after it, nearest first,
    each sub-chunk's total log decay added to D as it is passed (stored by ``_store_y``). KEYS: the sources' decayed
    keys from :func:`_pair_keys_kernel` (KX, KT, ET; unused otherwise), D carried as e^D."""
    pid, c, b, h, rt, cn, nmask = _program(H, N, BT, BN)
    if EVEN_N:  # (a compile-time mask along the channels: vector loads)
        nmask = cn < BN
    pos = c * BT + rt
    m2 = (pos < T)[:, None] & nmask[None, :]
    Kb, Vb, Lb, Wh, r, k, v, lw, cex, ctail, ctot, u = _own_sub_chunk(
        R, K, V, LD, W0, U, b, h, pos, cn, nmask, m2, srb, srt, srh, srn, skb, skt, skh, skn, svb, svt, svh, svn, slb,
        slt, slh, sln, N, DECAY)
    y = _intra_av(r, k, v, lw, cex, ctot, u, rt, BT, PREC)
    rq = r * tl.exp(cex)
    D = tl.zeros([BN], tl.float32) + KEYS  # (KEYS: e^D, from 1)
    for i in range(0, c):
        if KEYS:
            kd, vj, D = _source_keys(KT, ET, Vb, pid, c - 1 - i, rt, cn, nmask, svt, svn, T, NSUB, D, BT, BN)
        else:
            kd, vj, tot = _source_block(Kb, Vb, Lb, Wh, (c - i) * BT - 1 - rt, cn, nmask, skt, skn, svt, svn, slt,
                                        sln, T, N, D, DECAY)
            D += tot
        y += tl.dot(tl.dot(rq, tl.trans(kd), input_precision=PREC), vj, input_precision=PREC)
    rq = r * tl.exp(ctail)
    D = tl.zeros([BN], tl.float32) + KEYS
    for j in range(c + 1, NSUB):
        if KEYS:
            kd, vj, D = _source_keys(KX, ET, Vb, pid, j, rt, cn, nmask, svt, svn, T, NSUB, D, BT, BN)
        else:
            kd, vj, tot = _source_block(Kb, Vb, Lb, Wh, j * BT + rt, cn, nmask, skt, skn, svt, svn, slt, sln, T, N,
                                        D, DECAY)
            D += tot
        y += tl.dot(tl.dot(rq, tl.trans(kd), input_precision=PREC), vj, input_precision=PREC)
    _store_y(Y, G, NW, NB, GO, y, b, h, T, H, N, pos, cn, m2, sgb, sgt, sgh, sgn, eps, NORM, KEEP_Y)


def pairs_fwd(r, k, v, logd, u, cfg, w0=None, norm=None):
    """y (B, T, H, N) in v's dtype by one launch of :func:`_pairs_fwd_kernel` (``pairs_keys=1``: after one of
    :func:`_pair_keys_kernel`); arguments and ``norm``'s outputs as
    :func:`~vision_rwkv.ops.bi_wkv6.triton_chunk.chunk_fwd`."""
    from .triton import CONFIG

    B, T, H, N = r.shape
    BT, BN, prec, nw = cfg
    keys = CONFIG["pairs_keys"]
    if keys not in (0, 1):
        raise ValueError(f"VRWKV_TRITON_V6 pairs_keys must be 0 or 1, got {keys!r}")
    nsub = cdiv(T, BT)
    grid = (B * H, nsub)
    y, yarg, ep, gated, keep_y = _outputs(v, norm)
    w0_arg, even = _w0_arg(w0, logd), N == BN
    kx = kt = et = logd  # (unused without keys)
    if keys:
        kx, kt = new_empty((2, B * H, T, BN), torch.float32, r.device)
        et = new_empty((B * H, nsub, BN), torch.float32, r.device)
        _pair_keys_kernel[grid](k, logd, w0_arg, kx, kt, et, *k.stride(), *logd.stride(), T, H, N, nsub, BT=BT, BN=BN,
                                DECAY=w0 is not None, EVEN_N=even, num_warps=nw)
    _pairs_fwd_kernel[grid](r, k, v, logd, w0_arg, u, yarg, *ep[:4], kx, kt, et, *r.stride(), *k.stride(), *v.stride(),
                            *logd.stride(), *ep[4:], T, H, N, nsub, BT=BT, BN=BN, PREC=prec, DECAY=w0 is not None,
                            NORM=norm is not None, KEEP_Y=keep_y, EVEN_N=even, KEYS=keys, **_launch_opts(nw))
    return y if norm is None else (y, gated)
