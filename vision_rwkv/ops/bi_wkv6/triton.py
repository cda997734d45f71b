"""Triton kernels for the bidirectional RWKV-6 WKV (defined in ``reference.py``), forward and backward.

Per batch and head (key channel j, value channel i, decay d = e^{logd}):
    y_t[i] = sum_j r_t[j] ( u_j k_t[j] v_t[i] + sum_{n != t} (prod_{m strictly between n and t} d_m[j]) k_n[j] v_n[i] )
= a causal RWKV-6 pass with bonus u plus the time-reversed causal pass with u = 0. Both are the same kernel run in
"kernel time" tau (tau = t for the causal pass, tau = T-1-t for the reversed one; grid axis 1 picks the direction),
so there is no T limit and no flipped copies.

Chunked form (BT = 16 tokens per chunk, one program per (batch, head, direction) walking the chunks in order with
the N x N state S in registers; cumulative log decays c = cumsum(logd) inside a chunk, cex = c - logd):
    y_chunk = (r * e^{cex}) @ S  +  A @ v,   A[t, n] = sum_j r_t[j] k_n[j] e^{cex_t[j] - c_n[j]} (n < t),
              A[t, t] = sum_j r_t[j] u_j k_t[j]
    S <- e^{c_last} * S + (k * e^{c_last - c})^T @ v
The in-chunk scores A are tensor-core products (``triton_intra.py``): through the chunk's start where every
channel's chunk total is >= -20 (factors <= e^20), else an exact binary split of the chunk whose factors are all
<= 1, so any decay (logd down to -inf) is safe. Outputs accumulate in fp32; the two directions are written to
separate fp32 planes and summed.

Backward, per direction: an ascending sweep with S gives gr (and r * gr without the bonus, D); a descending sweep
with the adjoint state dS = sum_{tau > t} (prod_{t<m<tau} d_m) r_tau gy_tau^T gives gk, gv (and E = k * gk without
the bonus), and d logd_m = sum_{t > m} D_t - sum_{p >= m} E_p as a suffix sum carried along the same sweep.
"""
from __future__ import annotations

import torch
import triton.language as tl

from .._triton_utils import (GRID_YZ_MAX, cdiv, check_float, check_out, check_same_device, config_from_env,
                             new_empty, next_pow2, run_op)
from ..triton_jit import jit
from .triton_intra import _causal_grad_k, _causal_grad_r, _causal_scores

__all__ = ["bi_wkv6_triton", "CONFIG"]

# fp32_precision: tl.dot input precision for fp32 inputs ("tf32x3": three tf32 tensor-core products, ~fp32 accuracy;
# "ieee": exact fp32 FMAs, 3x slower on an H100 because of register spills); bf16/fp16 inputs use "tf32"
# $VRWKV_TRITON_V6="key=value,..." overrides. stages: software-pipelining depth of the chunk loops.
# algo: "walk" (the kernels below: one program per (batch, head, direction) walking the chunks) or "chunk"
# (triton_chunk.py: one program per chunk, N x N states scanned over chunks; scan_ncb chunks per scan block and
# scan_elems the scan tile size; states are stored every state_t tokens (a multiple of block_t; the output kernels
# walk the block_t sub-chunks in between); state_dtype "fp32" or "input": 16-bit states for 16-bit inputs, half the
# state traffic). "chunk" is the default since an H200 run (round 6, benchmarks/results/README.md): its CUDA tests
# passed at block_t=16 and fwd+bwd ran 2.0x faster than "walk" (geomean of 10 shapes, eager and graph). "fla": two
# calls of flash-linear-attention's causal chunk kernels (fla_route.py; optional package, an opt-in comparison
# point; the log decay formed first and the GroupNorm after, as for the walk kernels). bwd_algo: the
# backward's own choice ("" = algo's; each backward recomputes what it needs, so forward and backward may differ:
# e.g. the chunk forward for inference with the walk backward in training). fwd_carry=1: the chunk forward's output
# kernel carries the states through each state chunk (triton_chunk.py); bwd_carry=1: the same for the chunk backward
# (two states at a time, in two passes, instead of four loaded and walked per sub-chunk) - opt-ins until timed on a GPU.
# maxnreg: a cap on the chunk output / gradient kernels' registers per thread (0: none; they take 255, which leaves
# room for two 4-warp programs per SM; 128 allows four, at the cost of spills) - to be chosen by timing.
# fused_decay: where a caller passes the log decay's pre-activation z and w0 (the RWKV-6 time mix), the chunk kernels
# and the walk kernels form -exp(w0 + z) as they load z (no log-decay tensor: its kernel and ~6 of its bytes per
# element gone, the same values); 0 forms it first, as the fla route always does. fused_norm: where a caller asks for
# the GroupNorm * silu gate of y too (the time mix), the chunk forward forms it as it stores y, the walk route as it
# sums its two directions (y not written in inference); 0: after.
# state_walk: sequences of at most this many state chunks get their states from one kernel that walks the state
# chunks in order (per (batch*head, block of state rows, stream); both (x, y) pairs of the backward in one launch)
# instead of per-chunk increments and their scan: one launch and the increments' write + read less, at the cost of
# a serial loop over the chunks (16: up to 1024 tokens with state_t=64, e.g. 224 and 512 px; 0 never). state_rows:
# state rows (x channels, each with its own decay) per walk program (0: all of a head's unless that leaves fewer
# than 512 programs; >= 16). walk_bv: value columns per walk forward program (0: the whole head; a power of two >= 16:
# N / walk_bv times the programs, each carrying N x walk_bv of the state and forming the chunk's scores itself - for
# few (batch, head) pairs, e.g. 96 programs of 256 serial chunks at 1024 px, batch 16, VRWKV6-T; opt-in until timed).
# walk_max_t: with algo (or bwd_algo) "chunk", sequences of at most this many tokens take the walk kernels instead
# (0: none) - one program per (batch, head, direction) carrying its state through the chunks in registers, no state
# traffic, where the chunk kernels' 255-register programs per 16-token sub-chunk read two states each (e.g. 224 px:
# 196 tokens, 13 sub-chunks); opt-in until the device sweep compares the two at short lengths. suffix_inline: the
# chunk backward's log-decay gradient kernel sums the later sub-chunks' totals itself for sequences of at most this
# many sub-chunks (no suffix kernel: one launch less per call; 0 never). pairs_max_t: with the chunk kernels, forwards
# of at most this many tokens take one kernel that sums over pairs of sub-chunks instead (triton_pairs.py: no
# states, no state kernel, work quadratic in T; 0: none) - opt-in until the device sweep times it at 196 tokens.
# pairs_keys: 1 = that kernel reads every sub-chunk's decayed keys from a first kernel that writes them once (two fp32
# planes of k's shape) instead of forming them from k and the log decays in each of the ~12 programs reading them.
CONFIG = config_from_env(dict(block_t=16, warps=4, fp32_precision="tf32x3", stages=2, algo="chunk",
                              bwd_algo="", scan_ncb=16, scan_elems=4096, state_t=64, state_dtype="fp32",
                              fwd_carry=0, bwd_carry=0, maxnreg=0, fused_decay=1, fused_norm=1, state_walk=16,
                              state_rows=0, walk_bv=0, walk_max_t=0, suffix_inline=32, pairs_max_t=0, pairs_keys=0),
                         "VRWKV_TRITON_V6")
FP32_PRECISIONS = ("tf32x3", "ieee")  # the tl.dot input precisions fp32_precision takes
# decays below e^-60 are treated as e^-60: pairs across such a step weigh < 1e-26 either way, and bounded log
# decays keep the in-chunk prefix sums within 16 * 60 in magnitude
LOGD_MIN = tl.constexpr(-60.0)


@jit
def _cums(lw):
    """In-chunk cumulative log decays of lw [BT, BN] (rows = tokens) -> (cex_t = sum_{m<t} lw_m,
    ctail_t = sum_{m>t} lw_m, the chunk's total), fp32. cex and ctail are an inclusive scan each way less the token's
    own term (>= -60): their absolute error stays a few ulp of |result| + 60, and the tail of a weak token after
    strong ones is its own suffix scan, not the difference of two large prefix sums. No fp64: 1/64 of the fp32 rate
    on most GPUs outside the HPC parts (sm_90: 248 / 408 fp64 arithmetic instructions, conversions not counted, out
    of the forward / backward kernels, ~4% fewer instructions in all; y 3e-7 off the float64 reference at worst in
    the tests, 1e-7 with fp64 sums)."""
    return tl.cumsum(lw, axis=0) - lw, tl.cumsum(lw, axis=0, reverse=True) - lw, tl.sum(lw, axis=0)


@jit
def _pos(tau, T, d):
    # kernel time -> memory position (d = 0 causal, d = 1 reversed)
    return tl.where(d == 0, tau, T - 1 - tau)


@jit
def _ld(base, pos, cols, st, sn, mask):
    ptrs = base + pos.to(tl.int64)[:, None] * st + cols.to(tl.int64)[None, :] * sn
    return tl.load(ptrs, mask=mask, other=0.0).to(tl.float32)


@jit
def _logd(Lb, Wh, pos, cols, st, sn, mask, N, DECAY: tl.constexpr):
    """Unclamped log decays of the tokens ``pos``, channels ``cols`` (fp32, 0 outside ``mask``): read from Lb, or with
    DECAY formed from the decay's pre-activation z held in Lb as -exp(w0 + z), in fp32 (Wh: this head's w0)."""
    x = _ld(Lb, pos, cols, st, sn, mask)
    if DECAY:
        w = tl.load(Wh + cols, mask=cols < N, other=0.0).to(tl.float32)
        x = tl.where(mask, -tl.exp(w[None, :] + x), 0.0)
    return x


@jit
def _ld_rkvw(Rb, Kb, Vb, Lb, Wh, pos, cn, srt, srn, skt, skn, svt, svn, slt, sln, m2, N, DECAY: tl.constexpr):
    """r, k, v and the clamped log decay of the tokens ``pos`` (fp32, zeros outside ``m2``; see :func:`_logd`)."""
    return (_ld(Rb, pos, cn, srt, srn, m2), _ld(Kb, pos, cn, skt, skn, m2), _ld(Vb, pos, cn, svt, svn, m2),
            tl.maximum(_logd(Lb, Wh, pos, cn, slt, sln, m2, N, DECAY), LOGD_MIN))


@jit
def _head(X, b, h, sb, sh):
    """The base pointer of head h of batch b in a (B, T, H, N) tensor X of batch / head strides sb / sh."""
    return X + b.to(tl.int64) * sb + h.to(tl.int64) * sh


@jit
def _walk_program(R, K, V, LD, W0, U, srb, srh, skb, skh, svb, svh, slb, slh, T, H, N, BN: tl.constexpr):
    """A walk program (grid: batch*head, direction) -> direction d, b, h, the channel range and mask, the head's
    r, k, v and log-decay (or z) bases, its w0, the bonus u (0 in the reversed direction) and the first token's
    row of this direction's fp32 plane."""
    pid = tl.program_id(0)
    d = tl.program_id(1)
    b = pid // H
    h = pid - b * H
    cn = tl.arange(0, BN)
    nmask = cn < N
    u = tl.load(U + h * N + cn, mask=nmask, other=0.0).to(tl.float32) * (d == 0).to(tl.float32)
    plane = ((d * (tl.num_programs(0) // H) + b) * T).to(tl.int64)
    return (d, b, h, cn, nmask, _head(R, b, h, srb, srh), _head(K, b, h, skb, skh), _head(V, b, h, svb, svh),
            _head(LD, b, h, slb, slh), W0 + h * N, u, plane)


@jit(do_not_specialize=["T", "H", "N"])
def _v6_fwd_kernel(R, K, V, LD, W0, U, Y2, srb, srt, srh, srn, skb, skt, skh, skn, svb, svt, svh, svn,
                   slb, slt, slh, sln, T, H, N, BT: tl.constexpr, BN: tl.constexpr, BV: tl.constexpr,
                   PREC: tl.constexpr, STAGES: tl.constexpr, DECAY: tl.constexpr):
    """One direction (grid axis 1) of one (batch, head), value columns [BV * j, BV * (j + 1)) (grid axis 2: j): those
    columns of y into that direction's fp32 plane of Y2, with the matching N x BV columns of the state (the scores
    are formed by every value block). With DECAY, LD holds the log decay's pre-activation z and W0 the decay's w0
    (:func:`_logd`)."""
    d, b, h, cn, nmask, Rb, Kb, Vb, Lb, Wh, u, plane = _walk_program(R, K, V, LD, W0, U, srb, srh, skb, skh, svb,
                                                                     svh, slb, slh, T, H, N, BN)
    cv = tl.program_id(2) * BV + tl.arange(0, BV)
    rt = tl.arange(0, BT)
    S = tl.zeros([BN, BV], tl.float32)
    for c in tl.range(0, tl.cdiv(T, BT), num_stages=STAGES):
        tau = c * BT + rt
        tv = tau < T
        pos = _pos(tau, T, d)
        m2 = tv[:, None] & nmask[None, :]
        mv = tv[:, None] & (cv < N)[None, :]
        r = _ld(Rb, pos, cn, srt, srn, m2)
        k = _ld(Kb, pos, cn, skt, skn, m2)
        v = _ld(Vb, pos, cv, svt, svn, mv)
        lw = tl.maximum(_logd(Lb, Wh, pos, cn, slt, sln, m2, N, DECAY), LOGD_MIN)
        cex, ctail, clast = _cums(lw)
        y = tl.dot(r * tl.exp(cex), S, input_precision=PREC)
        A = _causal_scores(r, k, lw, cex, clast, rt, BT, PREC)
        bonus = tl.sum(r * u[None, :] * k, axis=1)
        A = tl.where(rt[:, None] == rt[None, :], bonus[:, None], A)
        y += tl.dot(A, v, input_precision=PREC)
        yp = Y2 + (plane + pos.to(tl.int64)[:, None]) * H * N + h * N + cv[None, :]
        tl.store(yp, y, mask=mv)
        kd = k * tl.exp(ctail)
        S = tl.exp(clast)[:, None] * S + tl.dot(tl.trans(kd), v, input_precision=PREC)


@jit(do_not_specialize=["T", "H", "N"])
def _v6_bwd_kernel(R, K, V, LD, W0, U, GY, GR2, GK2, GV2, GL2, GU2, srb, srt, srh, srn, skb, skt, skh, skn,
                   svb, svt, svh, svn, slb, slt, slh, sln, sgb, sgt, sgh, sgn, T, H, N, BT: tl.constexpr,
                   BN: tl.constexpr, PREC: tl.constexpr, STAGES: tl.constexpr, DECAY: tl.constexpr):
    """One direction (grid axis 1) of one (batch, head): the gradients into that direction's fp32 planes. With
    DECAY (LD holds z, see :func:`_v6_fwd_kernel`) GL2 receives z's gradient (the log decay's times d logd / d z =
    logd)."""
    d, b, h, cn, nmask, Rb, Kb, Vb, Lb, Wh, u, plane = _walk_program(R, K, V, LD, W0, U, srb, srh, skb, skh, svb,
                                                                     svh, slb, slh, T, H, N, BN)
    B = tl.num_programs(0) // H
    Gb = _head(GY, b, h, sgb, sgh)
    rt = tl.arange(0, BT)
    NCH = tl.cdiv(T, BT)
    # ---- ascending sweep: gr and D = r * (gr without bonus)
    S = tl.zeros([BN, BN], tl.float32)
    for c in tl.range(0, NCH, num_stages=STAGES):
        tau = c * BT + rt
        tv = tau < T
        pos = _pos(tau, T, d)
        m2 = tv[:, None] & nmask[None, :]
        r = _ld(Rb, pos, cn, srt, srn, m2)
        k = _ld(Kb, pos, cn, skt, skn, m2)
        v = _ld(Vb, pos, cn, svt, svn, m2)
        lwraw = _logd(Lb, Wh, pos, cn, slt, sln, m2, N, DECAY)
        lw = tl.maximum(lwraw, LOGD_MIN)
        gy = _ld(Gb, pos, cn, sgt, sgn, m2)
        cex, ctail, clast = _cums(lw)
        G = tl.dot(gy, tl.trans(v), input_precision=PREC)  # G[t, n] = gy_t . v_n
        gr = tl.exp(cex) * tl.dot(gy, tl.trans(S), input_precision=PREC)
        gr += _causal_grad_r(G, r, k, lw, cex, clast, rt, BT, PREC)
        dterm = r * gr
        gvy = tl.sum(gy * v, axis=1)
        gr += u[None, :] * k * gvy[:, None]
        off = (plane + pos.to(tl.int64)[:, None]) * H * N + h * N + cn[None, :]
        tl.store(GR2 + off, gr, mask=m2)
        tl.store(GL2 + off, dterm, mask=m2)
        kd = k * tl.exp(ctail)
        S = tl.exp(clast)[:, None] * S + tl.dot(tl.trans(kd), v, input_precision=PREC)
    tl.debug_barrier()
    # ---- descending sweep: gk, gv, E = k * (gk without bonus), d logd as a suffix sum
    dS = tl.zeros([BN, BN], tl.float32)
    acc = tl.zeros([BN], tl.float32)
    gu = tl.zeros([BN], tl.float32)
    for ci in tl.range(0, NCH, num_stages=STAGES):
        c = NCH - 1 - ci
        tau = c * BT + rt
        tv = tau < T
        pos = _pos(tau, T, d)
        m2 = tv[:, None] & nmask[None, :]
        off = (plane + pos.to(tl.int64)[:, None]) * H * N + h * N + cn[None, :]
        dterm = tl.load(GL2 + off, mask=m2, other=0.0)
        tl.debug_barrier()
        r = _ld(Rb, pos, cn, srt, srn, m2)
        k = _ld(Kb, pos, cn, skt, skn, m2)
        v = _ld(Vb, pos, cn, svt, svn, m2)
        lwraw = _logd(Lb, Wh, pos, cn, slt, sln, m2, N, DECAY)
        lw = tl.maximum(lwraw, LOGD_MIN)
        gy = _ld(Gb, pos, cn, sgt, sgn, m2)
        cex, ctail, clast = _cums(lw)
        eb = tl.exp(ctail)
        gk = eb * tl.dot(v, tl.trans(dS), input_precision=PREC)
        gv = tl.dot(k * eb, dS, input_precision=PREC)
        G = tl.dot(gy, tl.trans(v), input_precision=PREC)
        gk_pairs, A = _causal_grad_k(G, r, k, lw, cex, clast, rt, BT, PREC)
        gk += gk_pairs
        eterm = k * gk
        gv += tl.dot(tl.trans(A), gy, input_precision=PREC)
        gvy = tl.sum(gy * v, axis=1)
        rb = tl.sum(r * u[None, :] * k, axis=1)
        gv += rb[:, None] * gy
        gk += u[None, :] * r * gvy[:, None]
        gu += tl.sum(r * k * gvy[:, None], axis=0)
        x = tl.where(m2, dterm - eterm, 0.0)
        glog = tl.cumsum(x, axis=0, reverse=True) + acc[None, :] - dterm
        if DECAY:  # z's gradient
            glog = glog * lwraw
        glog = tl.where(lwraw >= LOGD_MIN, glog, 0.0)  # the clamp's derivative (0, not 0 * -inf)
        acc += tl.sum(x, axis=0)
        tl.store(GK2 + off, gk, mask=m2)
        tl.store(GV2 + off, gv, mask=m2)
        tl.store(GL2 + off, glog, mask=m2)
        dS = tl.exp(clast)[:, None] * dS + tl.dot(tl.trans(r * tl.exp(cex)), gy, input_precision=PREC)
    gu = gu * (d == 0).to(tl.float32)
    tl.store(GU2 + ((d * B + b) * H + h).to(tl.int64) * N + cn, gu, mask=nmask)


# ------------------------------------------------------------------------------------------------- host side
def check_gpu_blocks(block_t: int) -> None:
    """Refuse, for CUDA tensors, chunk lengths not validated on a GPU: block_t=32 gave gradients ~3e-4 (r, k) and
    ~3e-2 (log decay) off on an H200 (round 6, chunk kernels), whose cause is not found yet; the CPU interpreter,
    which passes it, cannot show it."""
    if block_t != 16:
        raise ValueError(f"VRWKV_TRITON_V6 block_t={block_t}: on a GPU only block_t=16 is validated (block_t=32 "
                         "gave wrong gradients on an H200)")


def _cfg(N: int, dtype: torch.dtype, device: torch.device):
    BN = max(16, next_pow2(N))
    if device.type == "cuda":
        check_gpu_blocks(CONFIG["block_t"])
    prec = CONFIG["fp32_precision"] if dtype == torch.float32 else "tf32"
    if prec not in FP32_PRECISIONS and dtype == torch.float32:
        raise ValueError(f"VRWKV_TRITON_V6 fp32_precision must be one of {', '.join(FP32_PRECISIONS)}, got {prec!r}")
    nw = CONFIG["warps"] if BN <= 64 else max(CONFIG["warps"], 8)
    return CONFIG["block_t"], BN, prec, nw


# the chunk-parallel kernels hold BN x BN state tiles: at BN = 128 (head sizes 65..128, e.g. the RWKV-CLIP towers'
# 80) the backward needs ~270 KB of shared memory, over the 227 KB an H100 block can have; those use the walk
CHUNK_MAX_BN = 64


def _chunk_algo(BN: int, T: int, BT: int, backward: bool = False) -> bool:
    """Whether this call takes the chunk-parallel kernels: ``algo='chunk'`` (the backward: ``bwd_algo`` when set),
    padded head size <= CHUNK_MAX_BN, its sub-chunks (grid axis y) within a CUDA grid and more than ``walk_max_t``
    tokens; otherwise the walk kernels (grid (B*H, 2): any T)."""
    algo = _algo(backward)
    walk_max_t = CONFIG["walk_max_t"]
    if not isinstance(walk_max_t, int) or walk_max_t < 0:
        raise ValueError(f"VRWKV_TRITON_V6 walk_max_t must be a token count >= 0, got {walk_max_t!r}")
    return algo == "chunk" and BN <= CHUNK_MAX_BN and cdiv(T, BT) <= GRID_YZ_MAX and T > walk_max_t


def _pairs_route(T: int) -> bool:
    """Whether a chunk-kernel forward of T tokens takes the sub-chunk-pair kernel of ``triton_pairs.py`` (at most
    ``pairs_max_t`` tokens)."""
    pairs_max_t = CONFIG["pairs_max_t"]
    if not isinstance(pairs_max_t, int) or pairs_max_t < 0:
        raise ValueError(f"VRWKV_TRITON_V6 pairs_max_t must be a token count >= 0, got {pairs_max_t!r}")
    return T <= pairs_max_t


def _algo(backward: bool = False) -> str:
    """The kernel family this call takes by configuration: 'walk', 'chunk' or 'fla' (``fla_route.py``: two calls
    of flash-linear-attention's causal chunk kernels, an opt-in comparison point); the backward's ``bwd_algo`` when
    set."""
    algo = (backward and CONFIG["bwd_algo"]) or CONFIG["algo"]
    if algo not in ("walk", "chunk", "fla"):
        key = "bwd_algo" if backward and CONFIG["bwd_algo"] else "algo"
        raise ValueError(f"VRWKV_TRITON_V6 {key} must be 'walk', 'chunk' or 'fla', got {algo!r}")
    return algo


def _walk_bv(BN: int) -> int:
    """Value columns per walk forward program (``walk_bv``; 0: the whole padded head)."""
    bv = CONFIG["walk_bv"]
    if bv and (bv < 16 or bv & (bv - 1)):
        raise ValueError(f"VRWKV_TRITON_V6 walk_bv must be 0 or a power of two >= 16, got {bv}")
    return min(bv, BN) if bv else BN


def _check_w0(w0, logd):
    """``w0`` of a fused-decay call: (H*N,) floating, on logd's device (logd then holds z)."""
    B, T, H, N = logd.shape
    if w0.shape != (H * N,) or not w0.is_floating_point() or w0.device != logd.device or not w0.is_contiguous():
        raise ValueError(f"bi_wkv6: w0 must be a contiguous float ({H * N},) tensor on {logd.device} (H * N "
                         f"channels), got {w0.dtype} {tuple(w0.shape)} on {w0.device}")


def _decay_logd(w0, z):
    """-exp(w0 + z) in fp32, (B, T, H, N): the log decay the walk kernels read (the chunk kernels form it on load)."""
    from ..fused.elementwise_triton import _decay_fwd

    B, T, H, N = z.shape
    return _decay_fwd(w0, z.reshape(B * T, H * N)).view(B, T, H, N)


def _norm_gate(y, g, weight, bias, eps, out_dtype):
    """GroupNorm(y) (groups = heads) * silu(g) of (B, T, H, N) tensors by the fused elementwise kernel."""
    from ..fused.group_norm_triton import _gn_mul_fwd

    B, T, H, N = y.shape
    y, g = (x.reshape(B, T, H * N).contiguous() for x in (y, g))  # (the kernel reads rows of C contiguous channels)
    return _gn_mul_fwd(y, g, H, weight, bias, eps, True, out_dtype).view(B, T, H, N)


def _fwd(r, k, v, logd, u, w0=None, norm=None):
    """y in v's dtype. With ``w0`` (H*N,) ``logd`` holds z, the log decay's pre-activation: the log decay is
    -exp(w0 + z) (formed in fp32 by the chunk and walk kernels as they load z; by one kernel before the fla route).
    ``norm`` = (g, weight, bias, eps, out_dtype, keep_y): returns (y or None, GroupNorm(y) * silu(g)) - the
    VRWKV6 time mix's GroupNorm (groups = heads, weight / bias (H*N,)) of y as stored, times silu of the gate g
    (B, T, H, N), in out_dtype; formed as the chunk forward stores y or the walk kernels' planes are summed (the fla
    route and ``fused_norm=0``: by its own kernel after)."""
    B, T, H, N = r.shape
    BT, BN, prec, nw = _cfg(N, v.dtype, r.device)
    chunk = _chunk_algo(BN, T, BT)
    fla = not chunk and _algo() == "fla"
    if w0 is not None:
        _check_w0(w0, logd)
        if not CONFIG["fused_decay"] or fla:  # (the log decay formed first)
            logd, w0 = _decay_logd(w0, logd), None
    if norm is not None and (fla or not CONFIG["fused_norm"]):
        y = _fwd(r, k, v, logd, u, w0)
        return (y if norm[5] else None), _norm_gate(y, *norm[:5])
    if chunk and _pairs_route(T):
        from .triton_pairs import pairs_fwd

        return pairs_fwd(r, k, v, logd, u.contiguous(), (BT, BN, prec, nw), w0, norm)
    if chunk:
        from .triton_chunk import chunk_fwd

        return chunk_fwd(r, k, v, logd, u.contiguous(), (BT, BN, prec, nw), w0, norm)
    if fla:
        from .fla_route import bi_fwd

        return bi_fwd(r, k, v, logd, u, LOGD_MIN.value)
    from .triton_chunk import walk_planes_out

    y2 = new_empty((2, B, T, H, N), torch.float32, r.device)
    w0_arg = logd if w0 is None else w0  # (without w0: unused)
    BV = _walk_bv(BN)
    _v6_fwd_kernel[(B * H, 2, cdiv(N, BV))](r, k, v, logd, w0_arg, u.contiguous(), y2, *r.stride(), *k.stride(),
                                            *v.stride(), *logd.stride(), T, H, N, BT=BT, BN=BN, BV=BV, PREC=prec,
                                            STAGES=CONFIG["stages"], DECAY=w0 is not None, num_warps=nw)
    return walk_planes_out(y2, v, BN, norm)  # (summed in fp32: one launch, with the GroupNorm * gate if asked)


def _bwd(r, k, v, logd, u, gy, grouped: bool = True, out=None, w0=None):
    """Gradients (r, k, v, logd, u). Walk kernels: with ``grouped`` the gradients sharing a dtype come back as views
    of one tensor (summed by one launch); the custom op passes False (its outputs may not alias each other).
    ``out``: the caller's (gr, gk, gv) buffers (contiguous, the inputs' shapes and dtypes; e.g. slices of one stacked
    gradient), written and returned. ``w0``: as in :func:`_fwd`; the fourth gradient is then z's (in z's dtype)."""
    B, T, H, N = r.shape
    BT, BN, prec, nw = _cfg(N, v.dtype, r.device)
    if out is not None:
        check_out("bi_wkv6", ("gr", "gk", "gv"), out, (r, k, v))
    chunk = _chunk_algo(BN, T, BT, backward=True)
    fla = not chunk and _algo(backward=True) == "fla"
    if w0 is not None:
        _check_w0(w0, logd)
        if not CONFIG["fused_decay"] or fla:  # the log decay formed first, its derivative (itself) applied after
            z, logd = logd, _decay_logd(w0, logd)
            gr, gk, gv, gl, gu = _bwd(r, k, v, logd, u, gy, grouped, out)
            gz = torch.where(logd >= LOGD_MIN.value, gl * logd, 0.0).to(z.dtype)  # (0 where clamped, not 0 * -inf)
            return gr, gk, gv, gz, gu
    if chunk:
        from .triton_chunk import chunk_bwd

        return chunk_bwd(r, k, v, logd, u.contiguous(), gy, (BT, BN, prec, nw), out, w0)
    if fla:
        from .fla_route import bi_bwd

        grads = bi_bwd(r, k, v, logd, u, gy, LOGD_MIN.value)
        if out is not None:
            grads = tuple(o.copy_(g) for o, g in zip(out, grads[:3])) + grads[3:]
        return grads
    dev = r.device
    # the two directions' fp32 planes of the gradients sharing a dtype live in one (n, 2, B, T, H, N) buffer, so that
    # one launch per dtype (r, k, v: the compute dtype; logd: fp32 under autocast) sums them straight into that dtype
    groups: dict = {}
    for i, t in enumerate((r, k, v, logd)):
        groups.setdefault(t.dtype if grouped else i, []).append(i)
    bufs = {key: new_empty((len(idx), 2, B, T, H, N), torch.float32, dev) for key, idx in groups.items()}
    planes = [None] * 4
    for key, idx in groups.items():
        for j, i in enumerate(idx):
            planes[i] = bufs[key][j]
    gu2 = new_empty((2, B, H, N), torch.float32, dev)
    w0_arg = logd if w0 is None else w0  # (without w0: unused)
    _v6_bwd_kernel[(B * H, 2)](r, k, v, logd, w0_arg, u.contiguous(), gy, *planes, gu2, *r.stride(), *k.stride(),
                               *v.stride(), *logd.stride(), *gy.stride(), T, H, N, BT=BT, BN=BN, PREC=prec,
                               STAGES=CONFIG["stages"], DECAY=w0 is not None, num_warps=nw)
    grads = [None] * 4
    for key, idx in groups.items():
        buf = bufs[key]
        if out is not None:  # (each gradient summed into its buffer; logd's into a new one)
            for j, i in enumerate(idx):
                grads[i] = torch.add(buf[j, 0], buf[j, 1], out=out[i] if i < 3 else new_empty(
                    (B, T, H, N), logd.dtype, dev))
            continue
        dtype = (r, k, v, logd)[idx[0]].dtype
        summed = torch.add(buf[:, 0], buf[:, 1], out=new_empty((len(idx), B, T, H, N), dtype, dev))
        for j, i in enumerate(idx):
            grads[i] = summed[j]
    gr, gk, gv, gl = grads
    gu = gu2.sum((0, 1)).to(u.dtype)
    return gr, gk, gv, gl, gu


@torch.library.custom_op("vision_rwkv::bi_wkv6_triton", mutates_args=())
def _bi_wkv6_op(r: torch.Tensor, k: torch.Tensor, v: torch.Tensor, logd: torch.Tensor,
                u: torch.Tensor) -> torch.Tensor:
    return _fwd(r, k, v, logd, u)


@_bi_wkv6_op.register_fake
def _(r, k, v, logd, u):
    return v.new_empty(v.shape)


@torch.library.custom_op("vision_rwkv::bi_wkv6_triton_bwd", mutates_args=())
def _bi_wkv6_bwd_op(r: torch.Tensor, k: torch.Tensor, v: torch.Tensor, logd: torch.Tensor, u: torch.Tensor,
                    gy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return _bwd(r, k, v, logd, u, gy, grouped=False)


@_bi_wkv6_bwd_op.register_fake
def _(r, k, v, logd, u, gy):
    return r.new_empty(r.shape), k.new_empty(k.shape), v.new_empty(v.shape), logd.new_empty(logd.shape), \
        u.new_empty(u.shape)


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _backward(ctx, gy):
    r, k, v, logd, u = ctx.saved_tensors
    return _bi_wkv6_bwd_op(r, k, v, logd, u, gy)


torch.library.register_autograd("vision_rwkv::bi_wkv6_triton", _backward, setup_context=_setup_context)


class _BiWKV6(torch.autograd.Function):
    """Eager-mode path (lower call overhead than the custom op's dispatch); same kernels."""

    @staticmethod
    def forward(ctx, r, k, v, logd, u):
        ctx.save_for_backward(r, k, v, logd, u)
        return _fwd(r, k, v, logd, u)

    @staticmethod
    def backward(ctx, gy):
        return _bwd(*ctx.saved_tensors, gy)


def bi_wkv6_triton(r: torch.Tensor, k: torch.Tensor, v: torch.Tensor, logd: torch.Tensor,
                   u: torch.Tensor) -> torch.Tensor:
    """Bidirectional RWKV-6 WKV with Triton kernels. r, k, v, logd (B, T, H, N) float32/bfloat16/float16 (any
    strides), logd = log of the per-step decay (<= 0); u (H, N). Returns (B, T, H, N) in v's dtype; differentiable
    in all five inputs; a torch custom op (torch.compile-friendly)."""
    tensors = dict(r=r, k=k, v=v, logd=logd, u=u)
    if any(t.dtype == torch.float64 for t in tensors.values()):
        from .reference import bi_wkv6_reference

        return bi_wkv6_reference(r, k, v, logd, u)
    for name, t in tensors.items():
        check_float(name, t)
    check_same_device(**tensors)
    if r.dim() != 4:
        raise ValueError(f"r must be (B, T, H, N), got {tuple(r.shape)}")
    for name in ("k", "v", "logd"):
        if tensors[name].shape != r.shape:
            raise ValueError(f"{name} must have r's shape {tuple(r.shape)}, got {tuple(tensors[name].shape)}")
    if u.shape != r.shape[2:]:
        raise ValueError(f"u must be (H, N) = {tuple(r.shape[2:])}, got {tuple(u.shape)}")
    if r.numel() == 0:
        return v.new_zeros(v.shape)
    return run_op(_bi_wkv6_op, _BiWKV6, _fwd, r, k, v, logd, u)
