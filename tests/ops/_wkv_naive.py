"""Naive O(T^2) float64 references for the Bi-WKV operators, written from DESIGN.md §3-§4.

Used by the Triton tests (and runnable inside the TRITON_INTERPRET subprocess). They build the full weight matrix,
so keep T small. Everything is computed in float64 on the input's device.
"""
from __future__ import annotations

import math

import torch


def _weights_exact(w: torch.Tensor, u: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """log-weights (B, C, T, T) of Eq. 5: -(|t-n|-1) w + k_n off the diagonal, u + k_t on it."""
    T = k.shape[1]
    idx = torch.arange(T, device=k.device, dtype=torch.float64)
    dist = (idx[:, None] - idx[None, :]).abs()  # (t, n)
    kk = k.double().transpose(1, 2)[:, :, None, :]  # (B, C, 1, n)
    logw = -(dist - 1)[None, None] * w.double()[None, :, None, None] + kk
    diag = torch.eye(T, dtype=torch.bool, device=k.device)
    logw = torch.where(diag, u.double()[None, :, None, None] + kk, logw)
    return logw


def bi_wkv_naive(w, u, k, v, mode: str = "exact", chunks: int = 32) -> torch.Tensor:
    """y (B, T, C) float64 of the v4 Bi-WKV; mode "exact" (Eq. 5) or "original" (closed form, P = chunks)."""
    B, T, C = k.shape
    vv = v.double().transpose(1, 2)[:, :, None, :]  # (B, C, 1, n)
    if mode == "exact":
        logw = _weights_exact(w, u, k)
        m = logw.amax(-1, keepdim=True)
        W = torch.exp(logw - m)
        return ((W * vv).sum(-1) / W.sum(-1)).transpose(1, 2)
    if mode != "original":
        raise ValueError(mode)
    S = math.ceil(T / chunks)
    wd = w.double()[None, :, None, None]
    ud = u.double()[None, :, None, None]
    kk = k.double().transpose(1, 2)[:, :, None, :]
    t = torch.arange(T, device=k.device)[:, None]
    n = torch.arange(T, device=k.device)[None, :]
    s = (t // S) * S
    tf, nf = t.double(), n.double()
    e = torch.exp(kk)  # may overflow for huge k: only used with moderate k in tests
    W = torch.zeros(B, C, T, T, dtype=torch.float64, device=k.device)
    W = torch.where(n < s, e * torch.exp(-wd * (tf - nf)), W)
    W = torch.where((n == s) & (s < t), e * torch.exp(-wd * (tf - nf - 1)), W)
    mid = (n > s) & (n < t)
    W = torch.where(mid, e * torch.exp(-wd * (tf - nf - 1)) + (1 - torch.exp(wd)) * e * torch.exp(wd * (tf - nf)), W)
    diag = (n == t)
    W = torch.where(diag, e * torch.exp(ud) + (t > s) * (1 - torch.exp(wd)) * e, W)
    W = torch.where(n > t, e * torch.exp(-wd * (nf - tf)), W)
    return ((W * vv).sum(-1) / W.sum(-1)).transpose(1, 2)


def bi_wkv6_naive(r, k, v, logd, u) -> torch.Tensor:
    """y (B, T, H, N) float64 of the bidirectional RWKV-6 WKV (DESIGN.md §4)."""
    B, T, H, N = r.shape
    r, k, v, logd, u = (x.double() for x in (r, k, v, logd, u))
    c = torch.cumsum(logd, dim=1)  # inclusive cumulative log decay (B, T, H, N)
    # decay between n < t: sum_{n<m<t} logd_m = c[t-1] - c[n]
    cex = c - logd  # c[t-1]
    t = torch.arange(T, device=r.device)
    lower = t[:, None] > t[None, :]  # n < t
    # causal: exponent cex[t] - c[n]; anticausal (n > t): c[n-1] - c[t] = cex[n] - c[t]
    ex_c = cex[:, :, None] - c[:, None, :]  # (B, t, n, H, N)
    ex_a = cex[:, None, :] - c[:, :, None]
    expo = torch.where(lower[None, :, :, None, None], ex_c, torch.where(lower.T[None, :, :, None, None], ex_a, torch.full_like(ex_c, -math.inf)))
    Wt = torch.exp(expo)  # (B, t, n, H, N)
    A = torch.einsum("bthj,bnhj,btnhj->bthn", r, k, Wt)  # (B, t, H, n)
    A = A + torch.diag_embed(torch.einsum("bthj,hj,bthj->bht", r, u, k)).permute(0, 2, 1, 3)
    return torch.einsum("bthn,bnhi->bthi", A, v)
