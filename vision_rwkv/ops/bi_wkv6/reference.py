"""Plain-PyTorch references of the RWKV-6 bidirectional WKV; this docstring defines the function they compute.

Per head with state over key channels j and value channels i:
``y_t[i] = sum_j r_t[j] (u[j] k_t[j] v_t[i] + sum_{n != t} prod_{m strictly between n and t} d_m[j] k_n[j] v_n[i])``,
i.e. a causal RWKV-6 pass with bonus ``u`` plus the reversed causal pass with ``u = 0``; no normaliser.
Shapes: ``r, k, v, logd`` (B, T, H, N) with ``logd = log d <= 0``; ``u`` (H, N).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from .._triton_utils import autograd_needed, holds_values
from .._validate import is_symbolic, reference_dtype, no_autocast
from .direct import TRAIN_MAX_DECAY, bi_wkv6_direct

__all__ = ["bi_wkv6_reference", "bi_wkv6_naive"]


def bi_wkv6_naive(r: torch.Tensor, k: torch.Tensor, v: torch.Tensor, logd: torch.Tensor,
                  u: torch.Tensor) -> torch.Tensor:
    """O(T^2 N)-memory form; for tests. Computes in r's dtype."""
    t_len = r.shape[1]
    a = torch.cumsum(logd, dim=1)  # (B, T, H, N) inclusive cumulative log decay
    zero = torch.zeros_like(a[:, :1])
    a_prev = torch.cat([zero, a[:, :-1]], dim=1)  # A_{t-1}
    idx = torch.arange(t_len, device=r.device)
    lower = (idx[None, :] < idx[:, None])[None, :, :, None, None]  # n < t, dims (1, t, n, 1, 1)
    upper = (idx[None, :] > idx[:, None])[None, :, :, None, None]
    # n < t: exp(A_{t-1} - A_n); n > t: exp(A_{n-1} - A_t)
    ex_lo = a_prev[:, :, None] - a[:, None, :]
    ex_up = a_prev[:, None, :] - a[:, :, None]
    neg_inf = torch.full((), float("-inf"), dtype=a.dtype, device=a.device)
    ex = torch.where(lower, ex_lo, torch.where(upper, ex_up, neg_inf))
    decay = torch.exp(ex)  # (B, t, n, H, N), zero on the diagonal
    att = torch.einsum("bthj,btnhj,bnhj->bhtn", r, decay, k)
    diag = torch.einsum("bthj,hj,bthj->bht", r, u, k)
    att = att + torch.diag_embed(diag)
    return torch.einsum("bhtn,bnhi->bthi", att, v)


def _exp_of_difference(a: torch.Tensor, b: torch.Tensor, dt: torch.dtype) -> torch.Tensor:
    """``exp((a - b).to(dt))`` for float64 a, b: the difference computed in float64 and rounded once to dt while it
    is stored, the exponential in place (one dt tensor written, no float64 temporary: the same bits). No autograd
    (``out=``): inside :class:`_IntraChunk`'s forward. While compiling or exporting (which trace the forward with
    gradients recorded) the functional form, with the same bits."""
    if torch.compiler.is_compiling():
        return (a - b).to(dt).exp()
    out = torch.empty(torch.broadcast_shapes(a.shape, b.shape), dtype=dt, device=a.device)
    return torch.sub(a, b, out=out).exp_()


class _IntraChunk(torch.autograd.Function):
    """Strictly-causal part inside chunks of L = 2^m tokens: ``y_t = sum_{n<t} (q_t . (k_n exp(A_{t-1} - A_n))) v_n``.

    q, k, v (G, L, N) contiguous, in the compute dtype; ``a`` (G, L, N) float64: A_i = log prod_{m<=i} d_m inside
    the chunk (float64 so that differences keep every digit; each is rounded once to the compute dtype).
    Binary-tree split: at level h every block of 2h tokens lets its second half attend to its first half through
    the block midpoint ``ref``, with the safe factors exp(A_{t-1} - A_ref) <= 1 on the queries and
    exp(A_ref - A_n) <= 1 on the keys (never exp(A) * exp(-A), which overflows for strong decays).
    Cost O(L^2 N) per chunk; memory O(L N log L). Hand-written backward (autograd through the levels would move
    float64 gradients around and is ~3x slower).
    """

    @staticmethod
    def forward(ctx, q, k, v, a):
        g, l, n = q.shape
        dt = q.dtype
        y = torch.zeros_like(v)
        saved = []
        h = 1
        while h < l:
            nb = l // (2 * h)
            q5, k5, v5, a5, y5 = (x.view(g, nb, 2, h, n) for x in (q, k, v, a, y))
            ref = a5[:, :, 0, h - 1:h]  # (G, nb, 1, N): A at the last token of the first half
            # query exponent A_{t-1} - A_ref: exactly 0 for the first token of the second half (factor 1)
            eq = q.new_empty((g, nb, h, n))
            eq[:, :, 0] = 1.0
            eq[:, :, 1:] = _exp_of_difference(a5[:, :, 1, :h - 1], ref, dt)
            ek = _exp_of_difference(ref, a5[:, :, 0], dt)
            qf = q5[:, :, 1] * eq
            kf = k5[:, :, 0] * ek
            if h == 1:
                att = (qf * kf).sum(-1, keepdim=True)
                y5[:, :, 1] += att * v5[:, :, 0]
            else:
                att = torch.matmul(qf, kf.transpose(-1, -2))
                y5[:, :, 1] += torch.matmul(att, v5[:, :, 0])
            saved += [eq, ek, att]
            h *= 2
        ctx.save_for_backward(q, k, v, *saved)
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, gy):
        q, k, v, *saved = ctx.saved_tensors
        g, l, n = q.shape
        gy = gy.contiguous()
        gq, gk, gv = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
        ga = torch.zeros_like(q)  # gradient w.r.t. A, accumulated in the compute dtype
        h = 1
        while h < l:
            eq, ek, att = saved[:3]
            saved = saved[3:]
            nb = l // (2 * h)
            q5, k5, v5, gy5, gq5, gk5, gv5, ga5 = (
                x.view(g, nb, 2, h, n) for x in (q, k, v, gy, gq, gk, gv, ga))
            q1, k0, v0, gc = q5[:, :, 1], k5[:, :, 0], v5[:, :, 0], gy5[:, :, 1]
            qf = q1 * eq
            kf = k0 * ek
            if h == 1:
                gatt = (gc * v0).sum(-1, keepdim=True)
                gv5[:, :, 0] += att * gc
                g_qf = gatt * kf
                g_kf = gatt * qf
            else:
                gatt = torch.matmul(gc, v0.transpose(-1, -2))
                gv5[:, :, 0] += torch.matmul(att.transpose(-1, -2), gc)
                g_qf = torch.matmul(gatt, kf)
                g_kf = torch.matmul(gatt.transpose(-1, -2), qf)
            gq1 = g_qf * eq
            gk0 = g_kf * ek
            gq5[:, :, 1] += gq1
            gk5[:, :, 0] += gk0
            # d loss / d exponent, only where the exponent is not identically 0 (first query of the second half,
            # last key of the first half): those terms would cancel exactly in theory but leave rounding noise
            # that swamps the tiny true gradients of strong decays
            pq = (gq1 * q1)[:, :, 1:]  # exponent A_{t-1} - A_ref
            pk = (gk0 * k0)[:, :, :-1]  # exponent A_ref - A_n
            ga5[:, :, 1, :h - 1] += pq
            ga5[:, :, 0, :h - 1] -= pk
            ga5[:, :, 0, h - 1] += pk.sum(2) - pq.sum(2)
            h *= 2
        return gq, gk, gv, ga.double()


def _chunk_states(upd: torch.Tensor, dec: torch.Tensor) -> torch.Tensor:
    """The state entering every chunk, ``S_c = dec_{c-1} * S_{c-1} + upd_{c-1}`` (S_0 = 0), for ``upd`` (G, nc, N, N)
    and ``dec`` (G, nc, N, 1) (a Python loop over the chunks; written in place when no graph is recorded and not
    compiling)."""
    if autograd_needed((upd, dec)) or torch.compiler.is_compiling():  # (dynamo refuses out= views)
        states = [torch.zeros_like(upd[:, 0])]
        for dec_c, upd_c in zip(dec.unbind(1)[:-1], upd.unbind(1)[:-1]):  # unbind: cheap backward
            states.append(torch.addcmul(upd_c, states[-1], dec_c))
        return torch.stack(states, dim=1)
    out = torch.empty_like(upd)
    out[:, 0] = 0
    for c in range(1, upd.shape[1]):
        torch.addcmul(upd[:, c - 1], out[:, c - 1], dec[:, c - 1], out=out[:, c])
    return out


def _chunk_states_closed(upd: torch.Tensor, log_dec: torch.Tensor) -> torch.Tensor:
    """:func:`_chunk_states` without a loop over the chunks (for export: a graph whose size does not grow with
    T): ``S_c = sum_{c' < c} exp(L_{c-1} - L_{c'}) upd_{c'}`` with L the cumulative log chunk decays ``log_dec``
    (G, nc, N) float64 - every factor <= 1. O(nc^2 N^2) per group instead of O(nc N^2)."""
    nc = upd.shape[1]
    cum = torch.cumsum(log_dec, dim=1)  # (G, nc, N)
    if is_symbolic(nc):  # (a slice of nc - 1 chunks would make torch.export guard on nc != 2)
        prev = cum - log_dec  # L_{c-1}
    else:
        prev = F.pad(cum[:, :-1], (0, 0, 1, 0))  # L_{c-1}
    idx = torch.arange(nc, device=upd.device)
    before = (idx[None, :] < idx[:, None])[None, :, :, None]  # c' < c, dims (1, c, c', 1)
    expo = torch.where(before, prev[:, :, None] - cum[:, None, :], torch.full((), float("-inf"), dtype=cum.dtype,
                                                                              device=cum.device))
    weight = torch.exp(expo).to(upd.dtype)  # (G, c, c', N)
    return torch.einsum("gcdj,gdji->gcji", weight, upd)


def _causal_chunked(r, k, v, logd, chunk):
    """Causal RWKV-6 pass WITHOUT the bonus term: ``y_t = r_t . sum_{n<t} prod_{n<m<t} d_m k_n v_n^T``.

    r, k, v, logd (G, T, N) in the compute dtype; ``chunk`` a power of two. Inside a chunk: :class:`_IntraChunk`;
    across chunks an (N x N) state (Python loop over chunks) whose every factor is a decay <= 1.
    """
    g, t_len, n = r.shape
    dt = r.dtype
    symbolic = is_symbolic(t_len)  # (torch.export with a dynamic image size: no branch on T)
    # symbolic T: always padded, to at least two chunks (the padding comes after every real token of this causal
    # pass: it changes nothing), so the program holds one path for every T; its ceiling has no negative operands
    # (ONNX's integer division truncates, not floors)
    nc = torch.sym_max(2, (t_len + chunk - 1) // chunk) if symbolic else -(-t_len // chunk)
    pad = nc * chunk - t_len
    if symbolic or pad:
        r, k, v, logd = (F.pad(x, (0, 0, 0, pad)) for x in (r, k, v, logd))
    r, k, v, logd = (x.reshape(g * nc, chunk, n) for x in (r, k, v, logd))
    a = torch.cumsum(logd.double(), dim=1)  # A_i: log prod_{m <= i} d_m inside the chunk
    a_ex = F.pad(a[:, :-1], (0, 0, 1, 0))  # A_{i-1}
    y = _IntraChunk.apply(r, k, v, a)
    if symbolic or nc > 1:  # (exponents: exact float64 differences rounded once to dt; exp in dt)
        q_dec = r * torch.exp(a_ex.to(dt))
        k_dec = k * torch.exp((a[:, -1:] - a).to(dt))  # decay from n (exclusive) to the chunk end
        upd = torch.matmul(k_dec.transpose(1, 2), v).reshape(g, nc, n, n)
        if torch.compiler.is_exporting():
            state = _chunk_states_closed(upd, a[:, -1].reshape(g, nc, n)).reshape(g * nc, n, n)
        else:
            chunk_decay = torch.exp(a[:, -1].to(dt)).reshape(g, nc, n, 1)
            state = _chunk_states(upd, chunk_decay).reshape(g * nc, n, n)
        y = y + torch.matmul(q_dec, state)
    if symbolic:  # (a new tensor: a slice view makes torch.export guard on its contiguity, i.e. on pad == 0)
        return y.reshape(g, nc * chunk, n).index_select(1, torch.arange(t_len, device=y.device))
    return y.reshape(g, nc * chunk, n)[:, :t_len]


# recompute=None: the backward recomputes from the inputs when r holds at least this many elements (the stored graph
# would keep ~55 planes of r's size - ~220 MB per call from here on); below it, the extra forward costs more than
# the memory is worth (small calls are bound by per-op overhead)
RECOMPUTE_MIN_NUMEL = 1 << 20


def bi_wkv6_reference(r: torch.Tensor, k: torch.Tensor, v: torch.Tensor, logd: torch.Tensor,
                      u: torch.Tensor, chunk: Optional[int] = None, recompute: Optional[bool] = None) -> torch.Tensor:
    """O(T)-memory chunked reference (fp32 or float64 accumulation; result in v's dtype).

    ``chunk`` (a power of two) tokens per chunk; None: one chunk up to 64 tokens, else 16 (the fastest on CPU from
    196 to 4096 tokens). Stable for any ``logd <= 0`` (also -30 per step): every exponentiated quantity is a sum
    of log decays over a token range, i.e. <= 0. Differentiable by autograd; with ``recompute`` the backward
    recomputes the chunked intermediates from the inputs (activation checkpointing of this op: it keeps the
    inputs for the backward instead of ~55 planes of r's size); None: when r holds at least
    ``RECOMPUTE_MIN_NUMEL`` elements. On CPU (eager) it computes :func:`~.direct.bi_wkv6_direct` instead (both
    directions from one set of chunks, up to ``chunk`` tokens each; None: 64 up to 64 tokens, 32 up to 512, else
    64) unless the decays are too strong for it: a chunk total below -60 even in 4-token chunks, or, when a gradient
    is recorded, any per-token decay below e^-2 (``TRAIN_MAX_DECAY``).
    """
    t_len = r.shape[1]
    if is_symbolic(t_len):  # torch.export with a dynamic image size: one chunk size for every T
        max_chunk = chunk = chunk or 16  # (no bi_wkv6_direct while tracing: max_chunk unused)
    else:
        max_chunk = chunk or (32 if 64 < t_len <= 512 else 64)  # (CPU: bi_wkv6_direct's largest chunk)
    if chunk is None:
        chunk = 16 if t_len > 64 else 1 << max(t_len - 1, 0).bit_length()
    if chunk < 1 or chunk & (chunk - 1):
        raise ValueError(f"bi_wkv6_reference: chunk must be a power of two, got {chunk}")
    if recompute is None:  # (not while exporting: a size test on an exported dynamic dim would specialise it)
        recompute = not torch.compiler.is_exporting() and r.numel() >= RECOMPUTE_MIN_NUMEL
    with no_autocast(r):
        if recompute and autograd_needed((r, k, v, logd, u)):
            return checkpoint(_bi_wkv6_reference, r, k, v, logd, u, chunk, max_chunk, use_reentrant=False)
        return _bi_wkv6_reference(r, k, v, logd, u, chunk, max_chunk)


def _bi_wkv6_reference(r, k, v, logd, u, chunk, max_chunk):
    if r.device.type == "cpu" and holds_values(r):  # (bi_wkv6_direct picks its chunk from logd's values)
        graph = autograd_needed((r, k, v, logd, u))
        y = bi_wkv6_direct(r, k, v, logd, u, chunk=max_chunk, max_decay=TRAIN_MAX_DECAY if graph else None)
        if y is not None:
            return y
    dt = reference_dtype(r, k, v, logd, u)
    b, t_len, h, n = r.shape
    # exp(-1e4) is 0 in every float format: clamping keeps -inf (a decay of exactly 0) from making inf - inf
    logd = logd.clamp(min=-1e4)
    xs = [x.to(dt).permute(0, 2, 1, 3).reshape(b * h, t_len, n) for x in (r, k, v, logd)]
    both = [torch.cat([x, x.flip(1)], dim=0) for x in xs]  # causal pass and reversed pass in one batch
    if not is_symbolic(t_len):  # (symbolic T: the chunk as given, the tokens padded)
        chunk = min(chunk, 1 << (t_len - 1).bit_length())  # a power of two, no larger than needed
    y2 = _causal_chunked(*both, chunk)
    y = y2[: b * h] + y2[b * h:].flip(1)
    rr, kk, vv = xs[:3]
    bonus = (rr * kk * u.to(dt).repeat(b, 1)[:, None, :]).sum(-1, keepdim=True)
    y = y + bonus * vv
    return y.reshape(b, h, t_len, n).permute(0, 2, 1, 3).to(v.dtype)
