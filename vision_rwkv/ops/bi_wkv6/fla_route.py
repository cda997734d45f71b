"""The bidirectional RWKV-6 WKV through flash-linear-attention's causal chunk kernels (``VRWKV_TRITON_V6=algo=fla``).

An opt-in comparison point and building block, never a requirement: the issue-3 question it answers is how far our
own kernels (``triton_chunk.py``) are from a well-tuned causal implementation. BiWKV6 (``reference.py``) is a causal
RWKV-6 pass with the bonus u plus the time-reversed causal pass with u = 0, so two calls of fla's chunk forward
(``fla.ops.rwkv6.chunk.chunk_rwkv6_fwd``, scale 1) give y, and two of its backward give the gradients; the reversed
pass runs on time-flipped copies (4 inputs and, in the backward, the output gradient: extra traffic our kernels do not
have). Semantics kept from our kernels: log decays below ``LOGD_MIN`` (e^-60) count as e^-60 and get exactly zero
gradient; y and the gradients come back in their inputs' dtypes; u's gradient is the causal pass's (the reversed pass
has no bonus). fla's chunk backward needs the forward's intra-chunk score matrix A, which our ``_bwd`` entry point
does not keep: it is recomputed (fla's cumulative-decay and intra kernels, a fraction of a forward).

Written against flash-linear-attention 0.6 (``pip install flash-linear-attention``); it uses fla's functional chunk
entry points, not its autograd Function, so it also runs inside our custom ops. CPU tests use a plain-PyTorch
stand-in of those entry points (``tests/ops/_fla_standin.py``); the CUDA tests run the real package when it is
installed.
"""
from __future__ import annotations

import torch

__all__ = ["fla_chunk_module", "bi_fwd", "bi_bwd"]

_ENTRY_POINTS = ("chunk_rwkv6_fwd", "chunk_rwkv6_bwd", "chunk_rwkv6_fwd_cumsum", "chunk_rwkv6_fwd_intra", "RCP_LN2")
CHUNK = 64  # fla's chunk size (its default)


def fla_chunk_module():
    """``fla.ops.rwkv6.chunk``, checked for the entry points this route calls; a clear error when fla is missing or
    is a version without them."""
    try:
        from fla.ops.rwkv6 import chunk
    except ImportError as e:
        raise RuntimeError("bi_wkv6: VRWKV_TRITON_V6 algo='fla' needs flash-linear-attention (pip install "
                           f"flash-linear-attention; written against 0.6), which does not import here: {e}") from e
    missing = [name for name in _ENTRY_POINTS if not hasattr(chunk, name)]
    if missing:
        raise RuntimeError(f"bi_wkv6: algo='fla' was written against flash-linear-attention 0.6; this fla "
                           f"({getattr(chunk, '__file__', '?')}) lacks {', '.join(missing)}")
    return chunk


def _prepare(r, k, v, logd, u, logd_min: float):
    """Contiguous inputs, the log decay clamped in fp32, and the time-flipped copies for the reversed pass."""
    r, k, v, u = (x.contiguous() for x in (r, k, v, u))
    ld = logd.float().clamp(min=logd_min).contiguous()  # (fla's kernels index (B, T, H, N) as contiguous)
    flipped = tuple(torch.flip(x, dims=(1,)).contiguous() for x in (r, k, v, ld))
    return (r, k, v, ld, u), flipped


def bi_fwd(r, k, v, logd, u, logd_min: float) -> torch.Tensor:
    """y (B, T, H, N) in v's dtype: the causal pass with bonus u + the reversed causal pass without it, each by fla's
    chunk forward; their sum is formed in fp32."""
    fc = fla_chunk_module()
    (r, k, v, ld, u), (rf, kf, vf, lf) = _prepare(r, k, v, logd, u, logd_min)
    with torch.autocast(r.device.type, enabled=False):
        y = fc.chunk_rwkv6_fwd(r, k, v, ld, u, 1.0, None, False, chunk_size=CHUNK)[3].float()
        y_rev = fc.chunk_rwkv6_fwd(rf, kf, vf, lf, torch.zeros_like(u), 1.0, None, False, chunk_size=CHUNK)[3]
    return y.add_(torch.flip(y_rev, dims=(1,))).to(v.dtype)


def _pass_bwd(fc, r, k, v, ld, u, gy):
    """Gradients (r, k, v, log decay, u) of one causal pass, its intra-chunk scores A recomputed first."""
    gi, ge = fc.chunk_rwkv6_fwd_cumsum(ld, chunk_size=CHUNK, scale=fc.RCP_LN2)
    A = fc.chunk_rwkv6_fwd_intra(r, k, gi, ge, u, 1.0, chunk_size=CHUNK)
    return fc.chunk_rwkv6_bwd(r, k, v, ld, u, 1.0, None, A, gy, None, chunk_size=CHUNK)[:5]


def bi_bwd(r, k, v, logd, u, gy, logd_min: float):
    """Gradients (r, k, v, logd, u) in their inputs' dtypes; logd's is exactly 0 where logd < ``logd_min``."""
    fc = fla_chunk_module()
    dtypes = [x.dtype for x in (r, k, v, logd, u)]
    (r, k, v, ld, u), (rf, kf, vf, lf) = _prepare(r, k, v, logd, u, logd_min)
    gy = gy.to(v.dtype).contiguous()
    gy_rev = torch.flip(gy, dims=(1,)).contiguous()
    with torch.autocast(r.device.type, enabled=False):
        causal = _pass_bwd(fc, r, k, v, ld, u, gy)
        rev = _pass_bwd(fc, rf, kf, vf, lf, torch.zeros_like(u), gy_rev)
    grads = [a.float() + torch.flip(b.float(), dims=(1,)) for a, b in zip(causal[:4], rev[:4])]
    grads[3] = torch.where(logd >= logd_min, grads[3], 0.0)  # the clamp's derivative (and 0, not NaN, at -inf)
    grads.append(causal[4])
    return tuple(g.to(dt) for g, dt in zip(grads, dtypes))
