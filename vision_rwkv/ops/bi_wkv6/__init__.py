"""RWKV-6 bidirectional WKV (VRWKV6, RWKV-CLIP): public entry point with backend dispatch."""
from __future__ import annotations

import torch

from .._validate import check_shape, check_tensors
from ..dispatch import resolve_backend, triton_impl
from .reference import bi_wkv6_naive, bi_wkv6_reference

__all__ = ["bi_wkv6", "bi_wkv6_reference", "bi_wkv6_naive"]


def bi_wkv6(r: torch.Tensor, k: torch.Tensor, v: torch.Tensor, logd: torch.Tensor, u: torch.Tensor,
            backend: str | None = None) -> torch.Tensor:
    """Bidirectional RWKV-6 WKV: a causal RWKV-6 pass with bonus ``u`` plus the time-reversed pass without it.

    Per batch and head: ``y_t[i] = sum_j r_t[j] (u[j] k_t[j] v_t[i] + sum_{n != t} D_tn[j] k_n[j] v_n[i])``, where
    ``D_tn`` is the product of the decays ``exp(logd_m)`` of the tokens strictly between n and t (no normaliser;
    also written out in :mod:`vision_rwkv.ops.bi_wkv6.reference`).

    Args:
        r, k, v: (B, T, H, N) receptance, keys, values.
        logd: (B, T, H, N) log of the per-token, per-channel decay (<= 0; the model passes ``-exp(w)``). Positive
            values are outside the contract and not checked (that would cost a device sync): the result is then
            undefined.
        u: (H, N) bonus of the current token.
        backend: None (auto), "reference" or "triton".
    Returns:
        (B, T, H, N) tensor in v's dtype (fp32 accumulation whatever the input dtype).
    """
    op = "bi_wkv6"
    device = check_tensors(op, r=r, k=k, v=v, logd=logd, u=u)
    if r.dim() != 4:
        raise ValueError(f"{op}: r must have shape (B, T, H, N), got {tuple(r.shape)}")
    b, t, h, n = r.shape
    if t < 1:
        raise ValueError(f"{op}: empty sequence (T=0)")
    for name, x in (("k", k), ("v", v), ("logd", logd)):
        check_shape(op, name, x, (b, t, h, n))
    check_shape(op, "u", u, (h, n))
    if r.numel() == 0:  # an empty batch / head / channel dimension: an empty output, still in the autograd graph
        return v * 0 + (r.sum() + k.sum() + logd.sum() + u.sum()).to(v.dtype) * 0
    if resolve_backend(op, device, backend, tuple(x.dtype for x in (r, k, v, logd, u))) == "triton":
        return triton_impl(op)(r, k, v, logd, u)
    return bi_wkv6_reference(r, k, v, logd, u)
