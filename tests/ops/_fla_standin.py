"""A plain-PyTorch stand-in for the entry points of flash-linear-attention's ``fla.ops.rwkv6.chunk`` that
``vision_rwkv.ops.bi_wkv6.fla_route`` calls. fla's Triton kernels do not run in the CPU interpreter, so the CPU tests
check the route's own work (the reversed pass on flipped copies with u = 0, the sums, the clamp and its derivative,
the dtypes, the recomputed scores handed to the backward) against this, and the CUDA tests run the real package.

Semantics as fla documents them (``naive_chunk_rwkv6``): a causal pass, o_t = scale * r_t . (S_t + diag(u) k_t v_t^T)
with S_{t+1} = diag(exp(g_t)) S_t + k_t v_t^T, S_0 = 0, in float64 here. The backward differentiates the same loop and
checks that it was handed the scores the intra entry point made for the same r, k and u.
"""
from __future__ import annotations

import contextlib
import sys
import types

import torch

RCP_LN2 = 1.4426950408889634


def _causal(q, k, v, g, u, scale):
    B, T, H, K = q.shape
    S = q.new_zeros((B, H, K, v.shape[-1]))
    out = []
    for t in range(T):
        kv = k[:, t, :, :, None] * v[:, t, :, None, :]
        out.append(torch.einsum("bhj,bhji->bhi", q[:, t] * scale, S + u[None, :, :, None] * kv))
        S = S * torch.exp(g[:, t])[..., None] + kv
    return torch.stack(out, 1)


def chunk_rwkv6_fwd_cumsum(g, chunk_size, scale=None, cu_seqlens=None, chunk_indices=None):
    assert cu_seqlens is None and scale == RCP_LN2
    # fla's kernels take differences of in-chunk cumulative sums: a -inf log decay would make them NaN
    assert torch.isfinite(g).all(), "fla needs finite log decays"
    return ("gi", g), ("ge", g)


def chunk_rwkv6_fwd_intra(q, k, gi, ge, u, scale, cu_seqlens=None, chunk_size=64, chunk_indices=None):
    assert gi[0] == "gi" and ge[0] == "ge" and gi[1] is ge[1]
    return {"q": q, "k": k, "g": gi[1], "u": u}


def chunk_rwkv6_fwd(q, k, v, g, u, scale, initial_state, output_final_state, cu_seqlens=None, chunk_size=64,
                    chunk_indices=None):
    assert initial_state is None and not output_final_state and cu_seqlens is None
    assert q.is_contiguous() and k.is_contiguous() and v.is_contiguous() and g.is_contiguous()
    A = chunk_rwkv6_fwd_intra(q, k, *chunk_rwkv6_fwd_cumsum(g, chunk_size, RCP_LN2), u, scale)
    return A, None, None, _causal(*(x.double() for x in (q, k, v, g, u)), scale).to(v.dtype)


def chunk_rwkv6_bwd(q, k, v, g, u, scale, initial_state, A, do, dht, cu_seqlens=None, chunk_size=64,
                    chunk_indices=None):
    assert initial_state is None and dht is None and cu_seqlens is None
    assert all(x.is_contiguous() for x in (q, k, v, g, u, do))
    assert A["q"] is q and A["k"] is k and A["g"] is g and A["u"] is u, "scores of other inputs"
    with torch.enable_grad():
        leaves = [x.detach().double().requires_grad_() for x in (q, k, v, g, u)]
        grads = torch.autograd.grad(_causal(*leaves, scale), leaves, do.double(), allow_unused=True)
    grads = [torch.zeros_like(x) if gr is None else gr for gr, x in zip(grads, leaves)]  # (g is unused at T = 1)
    return (*(x.float() for x in grads), None)


@contextlib.contextmanager
def installed():
    """``fla``, ``fla.ops``, ``fla.ops.rwkv6`` and ``fla.ops.rwkv6.chunk`` in ``sys.modules`` as this stand-in, for
    the duration (whatever was there before is put back)."""
    chunk = types.ModuleType("fla.ops.rwkv6.chunk")
    for name in ("RCP_LN2", "chunk_rwkv6_fwd", "chunk_rwkv6_bwd", "chunk_rwkv6_fwd_cumsum", "chunk_rwkv6_fwd_intra"):
        setattr(chunk, name, globals()[name])
    mods = {"fla": types.ModuleType("fla"), "fla.ops": types.ModuleType("fla.ops"),
            "fla.ops.rwkv6": types.ModuleType("fla.ops.rwkv6"), "fla.ops.rwkv6.chunk": chunk}
    mods["fla"].ops, mods["fla.ops"].rwkv6, mods["fla.ops.rwkv6"].chunk = (mods["fla.ops"], mods["fla.ops.rwkv6"],
                                                                           chunk)
    saved = {name: sys.modules.get(name) for name in mods}
    sys.modules.update(mods)
    try:
        yield chunk
    finally:
        for name, mod in saved.items():
            if mod is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = mod
