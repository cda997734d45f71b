"""v4 bidirectional WKV (Vision-RWKV): public entry point with backend dispatch."""
from __future__ import annotations

import math

import torch

from .._validate import check_chunks, check_shape, check_tensors
from ..dispatch import resolve_backend, triton_impl
from .reference import MODES, bi_wkv_naive, bi_wkv_reference, original_kernel_kv_grads

__all__ = ["bi_wkv", "bi_wkv_reference", "bi_wkv_naive", "original_kernel_kv_grads", "MODES"]


def bi_wkv(w: torch.Tensor, u: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mode: str = "exact",
           chunks: int = 32, backend: str | None = None, scale: float = 1.0) -> torch.Tensor:
    """Bidirectional WKV of Vision-RWKV: per batch and channel, the weighted average ``y_t = sum_n W_tn v_n /
    sum_n W_tn`` over all T positions.

    Mode "exact" (the paper's Eq. 5) weighs ``W_tn = exp(k_n - (|t - n| - 1) w)`` for n != t and ``W_tt =
    exp(u + k_t)``; mode "original" uses the weights of the pre-2025 CUDA kernel, which restart inside chunks of
    ``ceil(T / chunks)`` tokens (every weight of both modes is written out in :mod:`vision_rwkv.ops.bi_wkv.reference`).

    Args:
        w, u: (C,) per-step decay and bonus (the model passes ``spatial_decay / T`` and ``spatial_first / T``, or,
            with ``scale``, the parameters themselves).
        k, v: (B, T, C) keys and values.
        mode: "exact" (the paper's Eq. 5) or "original" (the function of the pre-2025 CUDA kernel that trained the
            released checkpoints, chunk size ``ceil(T / chunks)``).
        chunks: P, the original kernel's chunk count (used by "original" only; 32, or 16 for VRWKV-L / seg).
        backend: None (auto), "reference" or "triton".
        scale: the decay and bonus used are ``scale * w`` and ``scale * u`` (gradients w.r.t. w and u): with
            ``scale = 1 / T`` the Triton kernels scale the parameters as they load them, so a training step launches
            no division for them (equal to ``w / T`` within one rounding).
    Returns:
        (B, T, C) tensor in v's dtype (fp32 accumulation whatever the input dtype).

    Range: every factor is formed relative to one max of k per (batch, channel), so the result is accurate while
    the total decay ``|w| * T`` plus the spread of k over the sequence stays below ~88 (fp32's exponent range;
    ~709 in float64). The models' ``w = spatial_decay / T`` keeps ``|w| * T`` at the parameter's size (~1-10).
    Past it (an unscaled per-step decay for a long sequence, or keys spread by > ~80) the terms underflow: first
    silently inaccurate (3e-2 off at ``|w| * T`` = 100 with one key 120 above the rest), then inf / NaN (at ~200).
    Long sequences alone lose nothing (T = 20000 within 2e-6 of float64). No check runs (it would cost a sync).
    """
    op = "bi_wkv"
    device = check_tensors(op, w=w, u=u, k=k, v=v)
    if mode not in MODES:
        raise ValueError(f"{op}: unknown mode {mode!r}; expected one of {MODES}")
    chunks = check_chunks(op, chunks)
    if k.dim() != 3:
        raise ValueError(f"{op}: k must have shape (B, T, C), got {tuple(k.shape)}")
    b, t, c = k.shape
    if t < 1:
        raise ValueError(f"{op}: empty sequence (T=0)")
    check_shape(op, "v", v, (b, t, c))
    check_shape(op, "w", w, (c,))
    check_shape(op, "u", u, (c,))
    if torch.compiler.is_compiling():
        pass  # traced with dynamic shapes, scale may be symbolic (e.g. 1 / T): checked in eager calls
    elif isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale <= 0:
        raise ValueError(f"{op}: scale must be a finite float > 0, got {scale!r}")
    if resolve_backend(op, device, backend, (w.dtype, u.dtype, k.dtype, v.dtype)) == "triton":
        return triton_impl(op)(w, u, k, v, mode, chunks, float(scale))
    if scale != 1:
        w, u = w * scale, u * scale
    return bi_wkv_reference(w, u, k, v, mode, chunks)
