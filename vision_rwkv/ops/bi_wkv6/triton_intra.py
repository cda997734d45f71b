"""In-chunk pair terms of the bidirectional RWKV-6 WKV (defined in ``reference.py``), shared by the chunk kernels
(``triton_chunk.py``: both directions per sub-chunk) and the walk kernels (``triton.py``: one direction per program).

Inside a chunk of BT tokens with clamped log decays lw, exclusive / inclusive cumulative sums cex / cin = cex + lw and
total ctot, the pair (t, n), n < t, weighs prod_{n<m<t} d_m = e^{cex_t - cin_n} per key channel. Where every channel's
total is >= -FAST_DECAY (weak decays, the common case in trained models) that factors through the chunk's start into
e^{cex_t} e^{-cin_n} (the second <= e^FAST_DECAY): the scores are one tensor-core product per direction. Stronger
decays take an exact binary split of the chunk (:func:`_split_level`): every pair is separated at exactly one level,
where its weight factors into two factors <= 1 that are sums within one half - for the scores one tensor-core
product per level and direction, log2 BT levels.
"""
from __future__ import annotations

import triton.language as tl

from ..triton_jit import jit

# sub-chunks whose total log decay is >= -FAST_DECAY in every channel compute their intra-chunk pairs as two
# tensor-core products through the sub-chunk's start (factors e^{cex} <= 1 and e^{-cin} <= e^FAST_DECAY, whose fp32
# cumulative sums carry an absolute exponent error ~1e-7 * FAST_DECAY); stronger decays take the exact binary split
FAST_DECAY = tl.constexpr(20.0)


@jit
def _fast_scores(r, k, ecx, ecn, rt, PREC: tl.constexpr):
    """Intra-sub-chunk scores A[t, n] (n != t, diagonal 0) for weak decays, factored through the sub-chunk's start:
    n < t: sum_j r_t e^{cex_t} k_n e^{-cin_n}; n > t: sum_j r_t e^{-cin_t} k_n e^{cex_n} (ecx = e^{cex},
    ecn = e^{-cin}; two tensor-core products)."""
    low = tl.dot(r * ecx, tl.trans(k * ecn), input_precision=PREC)
    up = tl.dot(r * ecn, tl.trans(k * ecx), input_precision=PREC)
    return tl.where(rt[None, :] < rt[:, None], low, tl.where(rt[None, :] > rt[:, None], up, 0.0))


@jit
def _split_level(lw, rt, B2):
    """One level of the exact intra-sub-chunk split (for any decay): blocks of B2 tokens (a runtime power of two),
    each in two halves. For a token in an upper half eu = e^{its half's log decays before it}, in a lower half
    el = e^{its half's log decays after it} (0 elsewhere; lw: the clamped log decays [BT, BN]): a pair (t upper,
    n lower, one block) weighs e^{cex_t - cin_n} = eu_t el_n, the reverse pair (t lower, n upper)
    e^{cex_n - cin_t} = el_t eu_n, and every factor is <= 1. Each exponent is a sum over one half (exact fp32
    products with 0 / 1 selectors, no difference of larger sums). Returns eu, el and the masks [BT, BT] of the two
    kinds of pairs (mc: n < t, ma: n > t)."""
    H = B2 // 2
    same = (rt[:, None] // B2) == (rt[None, :] // B2)
    upper = (rt % B2) >= H
    lower = (rt % B2) < H
    before = same & upper[:, None] & upper[None, :] & (rt[None, :] < rt[:, None])
    after = same & lower[:, None] & lower[None, :] & (rt[None, :] > rt[:, None])
    eu = tl.where(upper[:, None], tl.exp(tl.dot(before.to(tl.float32), lw, input_precision="ieee")), 0.0)
    el = tl.where(lower[:, None], tl.exp(tl.dot(after.to(tl.float32), lw, input_precision="ieee")), 0.0)
    return eu, el, same & upper[:, None] & lower[None, :], same & lower[:, None] & upper[None, :]


@jit
def _split_scores(r, k, lw, rt, BT: tl.constexpr, PREC: tl.constexpr, ANTI: tl.constexpr):
    """Intra-sub-chunk scores A[t, n] (n != t, diagonal 0; without ANTI only n < t) for any decay: each pair is
    split at exactly one level of a binary split of the sub-chunk (:func:`_split_level`), whose factors are all
    <= 1 - one tensor-core product per level and direction (log2 BT levels) instead of BT x BT x BN explicit
    pairwise factors."""
    A = tl.zeros([BT, BT], tl.float32)
    B2 = BT
    while B2 >= 2:
        eu, el, mc, ma = _split_level(lw, rt, B2)
        A += tl.where(mc, tl.dot(r * eu, tl.trans(k * el), input_precision=PREC), 0.0)
        if ANTI:
            A += tl.where(ma, tl.dot(r * el, tl.trans(k * eu), input_precision=PREC), 0.0)
        B2 = B2 // 2
    return A


@jit
def _split_grads(G, m, r, k, eq, ek, PREC: tl.constexpr):
    """One kind of split pairs of a level (mask m [t, n]; the query's factor eq, the key's ek; G[t, n] = gy_t . v_n):
    their parts of d r and d k, and their scores."""
    Gm = tl.where(m, G, 0.0)
    ks = k * ek
    d_r = eq * tl.dot(Gm, ks, input_precision=PREC)
    rs = r * eq
    a = tl.where(m, tl.dot(rs, tl.trans(ks), input_precision=PREC), 0.0)
    return d_r, ek * tl.dot(tl.trans(Gm), rs, input_precision=PREC), a


@jit
def _causal_scores(r, k, lw, cex, ctot, rt, BT: tl.constexpr, PREC: tl.constexpr):
    """A[t, n] = sum_j r_t[j] k_n[j] prod_{n<m<t} d_m[j] for n < t, 0 on and above the diagonal: one direction's
    in-chunk pairs (the walk kernels; tokens in kernel time). Weak decays: one tensor-core product through the
    chunk's start; else the causal pairs of the exact binary split."""
    lo = rt[None, :] < rt[:, None]
    if tl.max(-ctot, axis=0) <= FAST_DECAY:
        A = tl.where(lo, tl.dot(r * tl.exp(cex), tl.trans(k * tl.exp(-(cex + lw))), input_precision=PREC), 0.0)
    else:
        A = _split_scores(r, k, lw, rt, BT, PREC, False)
    return A


@jit
def _causal_grad_r(G, r, k, lw, cex, ctot, rt, BT: tl.constexpr, PREC: tl.constexpr):
    """d r of one direction's in-chunk pairs (:func:`_causal_scores`): sum_{n<t} G[t, n] k_n w(t, n), with
    G[t, n] = gy_t . v_n."""
    if tl.max(-ctot, axis=0) <= FAST_DECAY:
        ecx = tl.exp(cex)
        G_lo = tl.where(rt[None, :] < rt[:, None], G, 0.0)
        d_r = ecx * tl.dot(G_lo, k * tl.exp(-(cex + lw)), input_precision=PREC)
    else:
        d_r = tl.zeros_like(r)
        B2 = BT
        while B2 >= 2:
            eu, el, mc, ma = _split_level(lw, rt, B2)
            d_rl, _, _ = _split_grads(G, mc, r, k, eu, el, PREC)  # (its unused products are not compiled)
            d_r += d_rl
            B2 = B2 // 2
    return d_r


@jit
def _causal_grad_k(G, r, k, lw, cex, ctot, rt, BT: tl.constexpr, PREC: tl.constexpr):
    """(d k, A) of one direction's in-chunk pairs: d k_n = sum_{t>n} G[t, n] r_t w(t, n), and the scores of
    :func:`_causal_scores` (for d v)."""
    if tl.max(-ctot, axis=0) <= FAST_DECAY:
        lo = rt[None, :] < rt[:, None]
        rx = r * tl.exp(cex)
        ecn = tl.exp(-(cex + lw))
        d_k = ecn * tl.dot(tl.trans(tl.where(lo, G, 0.0)), rx, input_precision=PREC)
        A = tl.where(lo, tl.dot(rx, tl.trans(k * ecn), input_precision=PREC), 0.0)
    else:
        d_k = tl.zeros_like(k)
        A = tl.zeros([BT, BT], tl.float32)
        B2 = BT
        while B2 >= 2:
            eu, el, mc, ma = _split_level(lw, rt, B2)
            _, d_kl, a = _split_grads(G, mc, r, k, eu, el, PREC)
            d_k += d_kl
            A += a
            B2 = B2 // 2
    return d_k, A
