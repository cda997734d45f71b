"""Register-sequential Triton kernels for the v4 Bi-WKV, mode "exact" (DESIGN.md §3), forward and backward.

The scan kernels in ``triton.py`` hold a (tokens x channels) tile per program and scan it across threads
(``tl.associative_scan`` with 3-6 operands): most of their instructions are warp shuffles (see
``tools/kernel_report.py``). Here every thread owns whole channels: a chunk of L tokens (L = ``seq_t``, unrolled at
compile time) is walked token by token with the states in registers, loads are rows of channels (coalesced,
vectorized when a thread owns several adjacent channels), and nothing crosses threads. Values needed by a later
walk in the other direction are kept in compile-time tuples (registers).

Same math and the same chunk summaries / carries as ``triton.py`` (whose carry kernel scans them over chunks):
per (b, c), x_t = e^{k_t - m} with one max m, lam = e^{-w};
    a_t = sum_{i<t} lam^{t-1-i} x_i v_i (and with v := 1),   b_t = sum_{i>t} lam^{i-t-1} x_i v_i,
    y_t = (a_t + b_t + e^u x_t v_t) / (a_t^d + b_t^d + e^u x_t).
Backward with p = gy / den, q = -p y and the adjoint (transposed) states of p, q:
    gv = x (at_p + bt_p + e^u p),  gk = x (v (at_p + bt_p + e^u p) + at_q + bt_q + e^u q),
    gw = -lam sum_t (a_t . at_t + b_t . bt_t),  gu = e^u sum_t x (p v + q).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._triton_utils import cdiv, new_empty, next_pow2

__all__ = ["seq_fwd", "seq_bwd"]

_SIZES = ["T", "NC"]  # C stays specializable: C % 16 == 0 lets the channel loads vectorize


@triton.jit
def _row(p0, r, st, ok, other):
    """Row r (a compile-time offset from the chunk's first token, row pointers ``p0``) as fp32."""
    return tl.load(p0 + r * st, mask=ok, other=other).to(tl.float32)


@triton.jit
def _carries(CAR, b, j, NC, C, cols, cmask, prev_slot: tl.constexpr, next_slot: tl.constexpr):
    """(slot prev_slot, prev_slot + 1) of chunk j - 1 and (next_slot, next_slot + 1) of chunk j + 1 of a
    (B, NC, 4, C) carry buffer; zeros at the sequence ends."""
    prev = (b * NC + j - 1).to(tl.int64) * 4 * C
    nxt = (b * NC + j + 1).to(tl.int64) * 4 * C
    hp = cmask & (j > 0)
    hn = cmask & (j + 1 < NC)
    p0 = tl.load(CAR + prev + prev_slot * C + cols, mask=hp, other=0.0)
    p1 = tl.load(CAR + prev + (prev_slot + 1) * C + cols, mask=hp, other=0.0)
    n0 = tl.load(CAR + nxt + next_slot * C + cols, mask=hn, other=0.0)
    n1 = tl.load(CAR + nxt + (next_slot + 1) * C + cols, mask=hn, other=0.0)
    return p0, p1, n0, n1


@triton.jit
def _walk_back_states(pk, pv, skt, svt, s, T, cmask, m, lam, b_n, b_d, L: tl.constexpr):
    """Backward walk over the chunk: tuples of the anticausal exclusive states (b_n, b_d), in token order."""
    bns = ()
    bds = ()
    for r in tl.static_range(L - 1, -1, -1):
        ok = cmask & (s + r < T)
        x = tl.exp(_row(pk, r, skt, ok, -float("inf")) - m)
        v = _row(pv, r, svt, ok, 0.0)
        bns = (b_n,) + bns
        bds = (b_d,) + bds
        g = tl.where(s + r < T, lam, 1.0)
        b_n = b_n * g + x * v
        b_d = b_d * g + x
    return bns, bds


@triton.jit
def _chunk_rows(K, V, skb, skt, skc, svb, svt, svc, C, L: tl.constexpr, BC: tl.constexpr):
    """Program (batch, channel block, chunk) -> b, chunk j, its first token s, channels, mask, k / v row pointers."""
    b = tl.program_id(0)
    cols = tl.program_id(1) * BC + tl.arange(0, BC)
    j = tl.program_id(2)
    s = j * L
    pk = K + b.to(tl.int64) * skb + s.to(tl.int64) * skt + cols.to(tl.int64) * skc
    pv = V + b.to(tl.int64) * svb + s.to(tl.int64) * svt + cols.to(tl.int64) * svc
    return b, j, s, cols, cols < C, pk, pv


@triton.jit
def _bwd_prologue(K, V, GY, W, U, M, skb, skt, skc, svb, svt, svc, sgb, sgt, sgc, C, L: tl.constexpr,
                  BC: tl.constexpr):
    """Program coordinates, row pointers of k, v, gy at the chunk's first token, lam = e^{-w}, e^u and the max m."""
    b, j, s, cols, cmask, pk, pv = _chunk_rows(K, V, skb, skt, skc, svb, svt, svc, C, L, BC)
    pg = GY + b.to(tl.int64) * sgb + s.to(tl.int64) * sgt + cols.to(tl.int64) * sgc
    lam = tl.exp(-tl.load(W + cols, mask=cmask, other=0.0))
    uu = tl.exp(tl.load(U + cols, mask=cmask, other=0.0))
    m = tl.load(M + b.to(tl.int64) * C + cols, mask=cmask, other=0.0)
    return b, j, s, cols, cmask, pk, pv, pg, lam, uu, m


@triton.jit
def _token_pq(pk, pv, pg, r, skt, svt, sgt, ok, m, uu, a_n, a_d, b_n, b_d):
    """Token r of the chunk: x = e^{k - m}, v, p = gy / den and q = -p y (0 where not ok)."""
    x = tl.exp(_row(pk, r, skt, ok, -float("inf")) - m)
    v = _row(pv, r, svt, ok, 0.0)
    gy = _row(pg, r, sgt, ok, 0.0)
    den = a_d + b_d + uu * x
    p = tl.where(ok, gy / den, 0.0)
    q = tl.where(ok, -p * ((a_n + b_n + uu * x * v) / den), 0.0)
    return x, v, p, q


def _seq_fwd_summary_kernel(K, V, W, SUMM, MJ, skb, skt, skc, svb, svt, svc, T, C, NC,
                            L: tl.constexpr, BC: tl.constexpr):
    """Pass 1: per chunk, its max of k and the decayed sums of x = e^{k - max} (and x v) to its end / start."""
    b, j, s, cols, cmask, pk, pv = _chunk_rows(K, V, skb, skt, skc, svb, svt, svc, C, L, BC)
    lam = tl.exp(-tl.load(W + cols, mask=cmask, other=0.0))
    ks = ()
    vs = ()
    mj = tl.full([BC], -float("inf"), tl.float32)
    for r in tl.static_range(L):
        ok = cmask & (s + r < T)
        kr = _row(pk, r, skt, ok, -float("inf"))
        ks = ks + (kr,)
        vs = vs + (_row(pv, r, svt, ok, 0.0),)
        mj = tl.maximum(mj, kr)
    ms = tl.where(mj > -float("inf"), mj, 0.0)
    e_n = tl.zeros([BC], tl.float32)
    e_d = tl.zeros([BC], tl.float32)
    s_n = tl.zeros([BC], tl.float32)
    s_d = tl.zeros([BC], tl.float32)
    pw = tl.full([BC], 1.0, tl.float32)
    for r in tl.static_range(L):
        x = tl.exp(ks[r] - ms)
        g = tl.where(s + r < T, lam, 1.0)
        e_n = e_n * g + x * vs[r]
        e_d = e_d * g + x
        s_n += pw * x * vs[r]
        s_d += pw * x
        pw = pw * lam
    base = (b * NC + j).to(tl.int64) * 4 * C
    tl.store(SUMM + base + 0 * C + cols, e_n, mask=cmask)
    tl.store(SUMM + base + 1 * C + cols, e_d, mask=cmask)
    tl.store(SUMM + base + 2 * C + cols, s_n, mask=cmask)
    tl.store(SUMM + base + 3 * C + cols, s_d, mask=cmask)
    tl.store(MJ + (b * NC + j).to(tl.int64) * C + cols, mj, mask=cmask)


def _seq_fwd_kernel(K, V, W, U, Y, M, CAR, skb, skt, skc, svb, svt, svc, T, C, NC,
                    SINGLE: tl.constexpr, L: tl.constexpr, BC: tl.constexpr):
    """Pass 3 (the whole forward when SINGLE): y for one chunk."""
    b, j, s, cols, cmask, pk, pv = _chunk_rows(K, V, skb, skt, skc, svb, svt, svc, C, L, BC)
    lam = tl.exp(-tl.load(W + cols, mask=cmask, other=0.0))
    uu = tl.exp(tl.load(U + cols, mask=cmask, other=0.0))
    if SINGLE:
        mx = tl.full([BC], -float("inf"), tl.float32)
        for r in tl.static_range(L):
            mx = tl.maximum(mx, _row(pk, r, skt, cmask & (s + r < T), -float("inf")))
        m = tl.where(mx > -float("inf"), mx, 0.0)
        tl.store(M + b.to(tl.int64) * C + cols, m, mask=cmask)
        a_n = tl.zeros([BC], tl.float32)
        a_d = tl.zeros([BC], tl.float32)
        b_n = tl.zeros([BC], tl.float32)
        b_d = tl.zeros([BC], tl.float32)
    else:
        m = tl.load(M + b.to(tl.int64) * C + cols, mask=cmask, other=0.0)
        a_n, a_d, b_n, b_d = _carries(CAR, b, j, NC, C, cols, cmask, 0, 2)
    ans = ()
    ads = ()
    xs = ()
    xvs = ()
    for r in tl.static_range(L):
        ok = cmask & (s + r < T)
        x = tl.exp(_row(pk, r, skt, ok, -float("inf")) - m)
        xv = x * _row(pv, r, svt, ok, 0.0)
        ans = ans + (a_n,)
        ads = ads + (a_d,)
        xs = xs + (x,)
        xvs = xvs + (xv,)
        a_n = a_n * lam + xv
        a_d = a_d * lam + x
    py = Y + (b.to(tl.int64) * T + s) * C + cols
    for r in tl.static_range(L - 1, -1, -1):
        valid = s + r < T
        ok = cmask & valid
        x = xs[r]
        xv = xvs[r]
        y = (ans[r] + b_n + uu * xv) / (ads[r] + b_d + uu * x)
        tl.store(py + r * C, y.to(Y.dtype.element_ty), mask=ok)
        g = tl.where(valid, lam, 1.0)
        b_n = b_n * g + xv
        b_d = b_d * g + x


def _seq_bwd_summary_kernel(K, V, GY, W, U, M, CAR, SUMM, skb, skt, skc, svb, svt, svc, sgb, sgt, sgc, T, C, NC,
                            L: tl.constexpr, BC: tl.constexpr):
    """Backward pass 1: per chunk, the decayed sums of p = gy / den and q = -p y to its end / start."""
    b, j, s, cols, cmask, pk, pv, pg, lam, uu, m = _bwd_prologue(K, V, GY, W, U, M, skb, skt, skc, svb, svt, svc,
                                                                 sgb, sgt, sgc, C, L, BC)
    a_n, a_d, b_n, b_d = _carries(CAR, b, j, NC, C, cols, cmask, 0, 2)
    bns, bds = _walk_back_states(pk, pv, skt, svt, s, T, cmask, m, lam, b_n, b_d, L)
    e_p = tl.zeros([BC], tl.float32)
    e_q = tl.zeros([BC], tl.float32)
    s_p = tl.zeros([BC], tl.float32)
    s_q = tl.zeros([BC], tl.float32)
    pw = tl.full([BC], 1.0, tl.float32)
    for r in tl.static_range(L):
        valid = s + r < T
        ok = cmask & valid
        x, v, p, q = _token_pq(pk, pv, pg, r, skt, svt, sgt, ok, m, uu, a_n, a_d, bns[r], bds[r])
        g = tl.where(valid, lam, 1.0)
        e_p = e_p * g + p
        e_q = e_q * g + q
        s_p += pw * p
        s_q += pw * q
        pw = pw * lam
        a_n = a_n * lam + x * v
        a_d = a_d * lam + x
    base = (b * NC + j).to(tl.int64) * 4 * C
    tl.store(SUMM + base + 0 * C + cols, e_p, mask=cmask)
    tl.store(SUMM + base + 1 * C + cols, e_q, mask=cmask)
    tl.store(SUMM + base + 2 * C + cols, s_p, mask=cmask)
    tl.store(SUMM + base + 3 * C + cols, s_q, mask=cmask)


def _seq_bwd_kernel(K, V, GY, W, U, M, CAR, BCAR, GK, GV, GWP, GUP, skb, skt, skc, svb, svt, svc, sgb, sgt, sgc,
                    T, C, NC, SINGLE: tl.constexpr, L: tl.constexpr, BC: tl.constexpr):
    """Backward pass 3 (the whole backward when SINGLE): gk, gv and per-chunk partial sums of gw, gu."""
    b, j, s, cols, cmask, pk, pv, pg, lam, uu, m = _bwd_prologue(K, V, GY, W, U, M, skb, skt, skc, svb, svt, svc,
                                                                 sgb, sgt, sgc, C, L, BC)
    if SINGLE:
        z = tl.zeros([BC], tl.float32)
        a_n = z
        a_d = z
        b_n = z
        b_d = z
        bt_p = z
        bt_q = z
        at_p = z
        at_q = z
    else:
        a_n, a_d, b_n, b_d = _carries(CAR, b, j, NC, C, cols, cmask, 0, 2)
        bt_p, bt_q, at_p, at_q = _carries(BCAR, b, j, NC, C, cols, cmask, 0, 2)
    bns, bds = _walk_back_states(pk, pv, skt, svt, s, T, cmask, m, lam, b_n, b_d, L)
    # forward walk: y, p, q; causal states a and causal adjoint states bt (exclusive)
    gw = tl.zeros([BC], tl.float32)
    gu = tl.zeros([BC], tl.float32)
    ans = ()
    ads = ()
    ps = ()
    qs = ()
    gxvs = ()
    gxs = ()
    for r in tl.static_range(L):
        ok = cmask & (s + r < T)
        x, v, p, q = _token_pq(pk, pv, pg, r, skt, svt, sgt, ok, m, uu, a_n, a_d, bns[r], bds[r])
        gw += tl.where(ok, bns[r] * bt_p + bds[r] * bt_q, 0.0)
        gu += x * (p * v + q)
        ans = ans + (a_n,)
        ads = ads + (a_d,)
        ps = ps + (p,)
        qs = qs + (q,)
        gxvs = gxvs + (bt_p + uu * p,)
        gxs = gxs + (bt_q + uu * q,)
        a_n = a_n * lam + x * v
        a_d = a_d * lam + x
        bt_p = bt_p * lam + p
        bt_q = bt_q * lam + q
    # backward walk: anticausal adjoint states at (exclusive), then the gradients
    pgk = GK + (b.to(tl.int64) * T + s) * C + cols
    pgv = GV + (b.to(tl.int64) * T + s) * C + cols
    for r in tl.static_range(L - 1, -1, -1):
        valid = s + r < T
        ok = cmask & valid
        x = tl.exp(_row(pk, r, skt, ok, -float("inf")) - m)
        v = _row(pv, r, svt, ok, 0.0)
        gxv = gxvs[r] + at_p
        gx = gxs[r] + at_q
        gw += tl.where(ok, ans[r] * at_p + ads[r] * at_q, 0.0)
        tl.store(pgk + r * C, (x * (v * gxv + gx)).to(GK.dtype.element_ty), mask=ok)
        tl.store(pgv + r * C, (x * gxv).to(GV.dtype.element_ty), mask=ok)
        g = tl.where(valid, lam, 1.0)
        at_p = at_p * g + ps[r]
        at_q = at_q * g + qs[r]
    poff = (b * NC + j).to(tl.int64) * C + cols
    tl.store(GWP + poff, -lam * gw, mask=cmask)
    tl.store(GUP + poff, uu * gu, mask=cmask)


_KERNELS = {name: triton.jit(fn, do_not_specialize=_SIZES) for name, fn in (
    ("fwd_summary", _seq_fwd_summary_kernel), ("fwd", _seq_fwd_kernel), ("bwd_summary", _seq_bwd_summary_kernel),
    ("bwd", _seq_bwd_kernel))}


# ------------------------------------------------------------------------------------------------- host side
def _geometry(T: int, C: int, cfg: dict, key: str = "seq_bc"):
    """(L, NC, BC, warps): chunk length (a power of two, at most seq_t), chunks, channels per program (``cfg[key]``)
    and warps (seq_warps, at most one per 32 channels)."""
    L = min(next_pow2(T), next_pow2(cfg["seq_t"]))
    BC = min(next_pow2(cfg[key]), max(32, next_pow2(C)))
    return L, cdiv(T, L), BC, max(1, min(cfg["seq_warps"], BC // 32))


def _carry(summ, mj, w32, out, m, T, C, NC, L, rescale: bool, cfg: dict):
    from .triton import _k

    nw = cfg["warps"]
    cbc = min(cfg["carry_block_c"], next_pow2(C))
    _k("carry")[(m.shape[0], triton.cdiv(C, cbc))](summ, mj, w32, out, m, T, C, T, cdiv(T, L), NC, NSUM=4, NCAR=4,
                                                   RESCALE=rescale, ORIG=False, LOCAL_REV=False, BT=L,
                                                   NCB=min(cfg["carry_ncb"], next_pow2(NC)), BC=cbc, num_warps=nw)


def seq_fwd(w, u, k, v, cfg: dict):
    """Exact-mode forward: (y, m, carries) as ``triton._fwd`` returns them (same carry layout)."""
    B, T, C = k.shape
    L, NC, BC, nw = _geometry(T, C, cfg)
    dev = k.device
    single = NC == 1
    y = new_empty((B, T, C), v.dtype, dev)
    m = new_empty((B, C), torch.float32, dev)
    car = new_empty((B, NC, 4, C), torch.float32, dev) if not single else torch.empty(0, device=dev)
    w32 = w.float().contiguous()
    u32 = u.float().contiguous()
    grid = (B, triton.cdiv(C, BC), NC)
    if not single:
        summ = new_empty((B, NC, 4, C), torch.float32, dev)
        mj = new_empty((B, NC, C), torch.float32, dev)
        _KERNELS["fwd_summary"][grid](k, v, w32, summ, mj, *k.stride(), *v.stride(), T, C, NC, L=L, BC=BC,
                                      num_warps=nw)
        _carry(summ, mj, w32, car, m, T, C, NC, L, True, cfg)
    _KERNELS["fwd"][grid](k, v, w32, u32, y, m, car, *k.stride(), *v.stride(), T, C, NC, SINGLE=single, L=L, BC=BC,
                          num_warps=nw)
    return y, m, car


def seq_bwd(w, u, k, v, m, car, gy, cfg: dict):
    """Exact-mode backward: (gw, gu, gk, gv)."""
    B, T, C = k.shape
    L, NC, BC, nw = _geometry(T, C, cfg)
    dev = k.device
    single = NC == 1
    w32 = w.float().contiguous()
    u32 = u.float().contiguous()
    gk = new_empty((B, T, C), k.dtype, dev)
    gv = new_empty((B, T, C), v.dtype, dev)
    gwp = new_empty((B * NC, C), torch.float32, dev)
    gup = new_empty((B * NC, C), torch.float32, dev)
    grid = (B, triton.cdiv(C, BC), NC)
    if not single:
        summ = new_empty((B, NC, 4, C), torch.float32, dev)
        bcar = new_empty((B, NC, 4, C), torch.float32, dev)
        _KERNELS["bwd_summary"][grid](k, v, gy, w32, u32, m, car, summ, *k.stride(), *v.stride(), *gy.stride(),
                                      T, C, NC, L=L, BC=BC, num_warps=nw)
        _carry(summ, summ, w32, bcar, m, T, C, NC, L, False, cfg)
    else:
        bcar = car
    _, _, BCB, nwb = _geometry(T, C, cfg, "seq_bwd_bc")  # the backward kernel holds 6 values per token and channel
    _KERNELS["bwd"][(B, triton.cdiv(C, BCB), NC)](k, v, gy, w32, u32, m, car, bcar, gk, gv, gwp, gup, *k.stride(),
                                                  *v.stride(), *gy.stride(), T, C, NC, SINGLE=single, L=L, BC=BCB,
                                                  num_warps=nwb)
    return gwp.sum(0).to(w.dtype), gup.sum(0).to(u.dtype), gk, gv
