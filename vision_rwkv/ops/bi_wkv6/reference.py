"""Plain-PyTorch references of the RWKV-6 bidirectional WKV (DESIGN.md §4).

Per head with state over key channels j and value channels i:
``y_t[i] = sum_j r_t[j] (u[j] k_t[j] v_t[i] + sum_{n != t} prod_{m strictly between n and t} d_m[j] k_n[j] v_n[i])``,
i.e. a causal RWKV-6 pass with bonus ``u`` plus the reversed causal pass with ``u = 0``; no normaliser.
Shapes: ``r, k, v, logd`` (B, T, H, N) with ``logd = log d <= 0``; ``u`` (H, N).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

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


def _intra_chunk(q, k, v, a, a_ex):
    """Strictly-causal part inside chunks of L = 2^m tokens: ``y_t = sum_{n<t} (q_t . k_n exp(A_{t-1} - A_n)) v_n``.

    q, k, v (G, L, N) in the compute dtype; a = A (inclusive cumulative log decay inside the chunk) and
    a_ex = A_{t-1}, both float64 so that their differences keep every digit. Binary-tree split: at each level,
    every block's second half attends to its first half through the block midpoint ``ref``, with the safe factors
    exp(A_{t-1} - A_ref) <= 1 on the queries and exp(A_ref - A_n) <= 1 on the keys (never exp(A) * exp(-A)).
    Cost O(L^2 N) per chunk, memory O(L N log L).
    """
    g, l, n = q.shape
    dt = q.dtype
    y = None  # output of the blocks of the current level, built bottom-up (h = 1, 2, 4, ...)
    h = 1
    while h < l:
        nb = l // (2 * h)
        # unbind (not indexing): its backward is one stack instead of a zero-filled tensor per slice
        (_, q1), (k0, _), (v0, _), (a0, _), (_, ax1) = (
            x.reshape(g, nb, 2, h, n).unbind(2) for x in (q, k, v, a, a_ex))
        ref = a0[:, :, h - 1:h]  # (G, nb, 1, N): A at the last token of the first half
        qf = q1 * torch.exp((ax1 - ref).to(dt))
        kf = k0 * torch.exp((ref - a0).to(dt))
        if h == 1:
            contrib = (qf * kf).sum(-1, keepdim=True) * v0
        else:
            contrib = torch.matmul(torch.matmul(qf, kf.transpose(-1, -2)), v0)
        if y is None:
            y = torch.cat([torch.zeros_like(contrib), contrib], dim=2)
        else:
            y0, y1 = y.reshape(g, nb, 2, h, n).unbind(2)
            y = torch.cat([y0, y1 + contrib], dim=2)
        h *= 2
    return y.reshape(g, l, n) if y is not None else torch.zeros_like(v)


def _causal_chunked(r, k, v, logd, chunk):
    """Causal RWKV-6 pass WITHOUT the bonus term: ``y_t = r_t . sum_{n<t} prod_{n<m<t} d_m k_n v_n^T``.

    r, k, v, logd (G, T, N) in the compute dtype; ``chunk`` a power of two. Inside a chunk: :func:`_intra_chunk`;
    across chunks an (N x N) state (Python loop over chunks) whose every factor is a decay <= 1.
    """
    g, t_len, n = r.shape
    nc = -(-t_len // chunk)
    pad = nc * chunk - t_len
    r, k, v, logd = (F.pad(x, (0, 0, 0, pad)).reshape(g * nc, chunk, n) for x in (r, k, v, logd))
    a = torch.cumsum(logd.double(), dim=1)  # A_i: log prod_{m <= i} d_m inside the chunk
    a_ex = F.pad(a[:, :-1], (0, 0, 1, 0))  # A_{i-1}
    y = _intra_chunk(r, k, v, a, a_ex)
    if nc > 1:
        dt = r.dtype
        q_dec = r * torch.exp(a_ex).to(dt)  # decay from the chunk start to t (exclusive of t)
        k_dec = k * torch.exp(a[:, -1:] - a).to(dt)  # decay from n (exclusive) to the chunk end
        upd = torch.matmul(k_dec.transpose(1, 2), v).reshape(g, nc, n, n)
        chunk_decay = torch.exp(a[:, -1]).to(dt).reshape(g, nc, n, 1)
        states = [torch.zeros_like(upd[:, 0])]
        for dec_c, upd_c in zip(chunk_decay.unbind(1)[:-1], upd.unbind(1)[:-1]):  # unbind: cheap backward
            states.append(states[-1] * dec_c + upd_c)
        state = torch.stack(states, dim=1).reshape(g * nc, n, n)
        y = y + torch.matmul(q_dec, state)
    return y.reshape(g, nc * chunk, n)[:, :t_len]


def bi_wkv6_reference(r: torch.Tensor, k: torch.Tensor, v: torch.Tensor, logd: torch.Tensor,
                      u: torch.Tensor, chunk: int = 64) -> torch.Tensor:
    """O(T)-memory chunked reference (fp32 or float64 accumulation; result in v's dtype).

    ``chunk`` (a power of two) tokens per chunk. Stable for any ``logd <= 0`` (also -30 per step): every
    exponentiated quantity is a sum of log decays over a token range, i.e. <= 0. Differentiable by autograd.
    """
    dt = torch.promote_types(r.dtype, torch.float32)
    b, t_len, h, n = r.shape
    xs = [x.to(dt).permute(0, 2, 1, 3).reshape(b * h, t_len, n) for x in (r, k, v, logd)]
    both = [torch.cat([x, x.flip(1)], dim=0) for x in xs]  # causal pass and reversed pass in one batch
    chunk = min(chunk, 1 << (t_len - 1).bit_length())  # a power of two, no larger than needed
    y2 = _causal_chunked(*both, chunk)
    y = y2[: b * h] + y2[b * h:].flip(1)
    rr, kk, vv = xs[:3]
    bonus = (rr * kk * u.to(dt).repeat(b, 1)[:, None, :]).sum(-1, keepdim=True)
    y = y + bonus * vv
    return y.reshape(b, h, t_len, n).permute(0, 2, 1, 3).to(v.dtype)
