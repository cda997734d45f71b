"""Plain-PyTorch references of the RWKV-6 bidirectional WKV (DESIGN.md §4).

Per head with state over key channels j and value channels i:
``y_t[i] = sum_j r_t[j] (u[j] k_t[j] v_t[i] + sum_{n != t} prod_{m strictly between n and t} d_m[j] k_n[j] v_n[i])``,
i.e. a causal RWKV-6 pass with bonus ``u`` plus the reversed causal pass with ``u = 0``; no normaliser.
Shapes: ``r, k, v, logd`` (B, T, H, N) with ``logd = log d <= 0``; ``u`` (H, N).
"""
from __future__ import annotations

import torch

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


def bi_wkv6_reference(r: torch.Tensor, k: torch.Tensor, v: torch.Tensor, logd: torch.Tensor,
                      u: torch.Tensor) -> torch.Tensor:
    """O(T)-memory reference (fp32 accumulation; result in v's dtype)."""
    dt = torch.promote_types(r.dtype, torch.float32)
    y = bi_wkv6_naive(r.to(dt), k.to(dt), v.to(dt), logd.to(dt), u.to(dt))
    return y.to(v.dtype)
