"""Plain-PyTorch references of the v4 bidirectional WKV (DESIGN.md §3).

Shapes: ``k``, ``v`` (B, T, C); ``w``, ``u`` (C,) are the PER-STEP decay and bonus (the model passes
``spatial_decay / T`` and ``spatial_first / T``). Two functions ("modes"):

* ``"exact"`` - the paper's Eq. 5: ``y_t = sum_n W_tn v_n / sum_n W_tn`` with ``W_tn = exp(k_n - (|t-n|-1) w)``
  for n != t and ``W_tt = exp(u + k_t)``.
* ``"original"`` - the function the pre-2025 CUDA kernel computes (released checkpoints were trained with it):
  T split into chunks of ``S = ceil(T / chunks)`` tokens; with ``s`` the start of t's chunk,
  ``W_tn = exp(k_n - w (t-n))`` (n < s), ``exp(k_n - w (t-n-1))`` (n = s < t),
  ``exp(k_n - w (t-n-1)) + (1 - e^w) exp(k_n + w (t-n))`` (s < n < t),
  ``exp(u + k_t) + [t > s] (1 - e^w) exp(k_t)`` (n = t), ``exp(k_n - w (n-t))`` (n > t).
"""
from __future__ import annotations

import math

import torch

__all__ = ["bi_wkv_reference", "bi_wkv_naive", "MODES"]

MODES = ("exact", "original")


def _naive_factor(w: torch.Tensor, u: torch.Tensor, t_len: int, mode: str, chunks: int) -> torch.Tensor:
    """(C, T, T) multiplier of exp(k_n) in W_tn."""
    idx = torch.arange(t_len, device=w.device)
    t = idx[:, None].to(w.dtype)
    n = idx[None, :].to(w.dtype)
    wc = w[:, None, None]
    uc = u[:, None, None]
    eye = (idx[:, None] == idx[None, :])
    if mode == "exact":
        dist = (t - n).abs() - 1
        return torch.where(eye, torch.exp(uc), torch.exp(-dist * wc))
    size = math.ceil(t_len / chunks)
    s = (idx[:, None] // size * size).to(w.dtype)  # start of t's chunk
    one_m_ew = -torch.expm1(wc)
    before = torch.exp(-wc * (t - n))
    inside = torch.exp(-wc * (t - n - 1))
    grow = one_m_ew * torch.exp(wc * (t - n))
    after = torch.exp(-wc * (n - t))
    diag = torch.exp(uc) + (t > s).to(w.dtype) * one_m_ew
    f = torch.where(n < s, before, torch.where(n == s, inside, inside + grow))
    f = torch.where(n > t, after, f)
    return torch.where(eye, diag, f)


def bi_wkv_naive(w: torch.Tensor, u: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mode: str = "exact",
                 chunks: int = 32) -> torch.Tensor:
    """O(T^2)-memory form of either mode (a weighted average over positions); for tests. Computes in k's dtype."""
    if mode not in MODES:
        raise ValueError(f"bi_wkv_naive: unknown mode {mode!r}; expected one of {MODES}")
    t_len = k.shape[1]
    kc = k.transpose(1, 2)  # (B, C, T)
    vc = v.transpose(1, 2)
    kmax = kc.amax(dim=-1, keepdim=True).detach()
    a = torch.exp(kc - kmax)[:, :, None, :]  # (B, C, 1, T) over n
    weight = _naive_factor(w, u, t_len, mode, chunks)[None] * a  # (B, C, T, T)
    y = (weight * vc[:, :, None, :]).sum(-1) / weight.sum(-1)
    return y.transpose(1, 2)


def bi_wkv_reference(w: torch.Tensor, u: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mode: str = "exact",
                     chunks: int = 32) -> torch.Tensor:
    """O(T)-memory reference (fp32 accumulation; result in v's dtype)."""
    dt = torch.promote_types(k.dtype, torch.float32)
    y = bi_wkv_naive(w.to(dt), u.to(dt), k.to(dt), v.to(dt), mode, chunks)
    return y.to(v.dtype)
