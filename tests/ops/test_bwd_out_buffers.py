"""WKV backwards writing the caller's gradient buffers (``out=``: the token-mix steps pass slices of one stacked
(k, v, r[, g]) gradient instead of stacking afterwards) give exactly the gradients of the default call - v4 seq and
tile kernels, v6 chunk and walk kernels (the walk's per-dtype grouping included) and the fla route, fp32 / bf16 -,
and the mixing backward adds d x into the caller's buffer (``gx=``).
CPU: the kernels under TRITON_INTERPRET=1 in a subprocess (this file as a script), NaN-poisoned outputs."""
import contextlib
import json
import sys

import pytest
import torch

pytest.importorskip("triton")

CASES = {  # name -> (op, config, dtype)
    "v4_seq": ("v4", {"seq": 1, "seq_t": 4}, "fp32"),
    "v4_tile_bf16": ("v4", {"seq": 0, "chunk_t": 8, "single_max_t": 8}, "bf16"),
    "v6_chunk_bf16": ("v6", {"algo": "chunk", "state_t": 32}, "bf16"),
    "v6_walk": ("v6", {"algo": "walk"}, "fp32"),
    "v6_walk_bf16": ("v6", {"algo": "walk"}, "bf16"),
    "v6_fla_bf16": ("v6", {"algo": "fla"}, "bf16"),  # (fla's entry points stood in for: _fla_standin.py)
    # the mixing backward adding d x into the caller's gradient of x (``gx=``: the RWKV-6 time mix's two mixing
    # backwards share one d x), with m given and with the ddlerp LoRA's m formed in the kernel
    "tsm_acc": ("tsm", {}, "fp32"),
    "tsm_lora_acc_bf16": ("tsm", {"lora": True}, "bf16"),
}


def _run(name):
    from vision_rwkv.ops.bi_wkv import triton as t4
    from vision_rwkv.ops.bi_wkv6 import triton as t6

    op, cfg, dn = CASES[name]
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dn]
    g = torch.Generator().manual_seed(0)
    if op == "tsm":
        return _run_tsm(cfg, dtype, g)
    if op == "v4":
        t4.CONFIG.update(cfg)
        B, T, C = 2, 23, 40
        w, u = -5 + 8 * torch.rand(C, generator=g), torch.randn(C, generator=g)
        k, v, gy = (torch.randn(B, T, C, generator=g).to(dtype) for _ in range(3))
        y, m, car = t4._fwd(w, u, k, v, "exact", 3, 1.0 / T)
        ref = t4._bwd(w, u, k, v, m, car, gy, "exact", 3, 1.0 / T)
        stacked = torch.full((3, B, T, C), float("nan"), dtype=dtype)
        out = tuple(stacked.unbind(0)[:2])
        got = t4._bwd(w, u, k, v, m, car, gy, "exact", 3, 1.0 / T, out=out)
        same = all(torch.equal(a, b) for a, b in zip(ref, got)) and got[1] is out[0] and got[2] is out[1]
        return {"same": same, "untouched": bool(torch.isnan(stacked[2]).all())}
    t6.CONFIG.update(cfg)
    B, T, H, N = 2, 37, 2, 16
    r, k, v, gy = (torch.randn(B, T, H, N, generator=g).to(dtype) for _ in range(4))
    logd, u = -torch.rand(B, T, H, N, generator=g) * 2, torch.randn(H, N, generator=g) * 0.1
    from _fla_standin import installed

    with installed() if cfg["algo"] == "fla" else contextlib.nullcontext():
        ref = t6._bwd(r, k, v, logd, u, gy)
        stacked = torch.full((4, B, T, H, N), float("nan"), dtype=dtype)
        out = (stacked[2], stacked[0], stacked[1])  # (r, k, v: the time mix's stack order is k, v, r, g)
        got = t6._bwd(r, k, v, logd, u, gy, out=out)
    same = all(torch.equal(a, b) for a, b in zip(ref, got)) and all(a is b for a, b in zip(got, out))
    return {"same": same, "untouched": bool(torch.isnan(stacked[3]).all())}


def _run_tsm(cfg, dtype, g):
    from vision_rwkv.ops.fused import shift_triton as ft

    B, H, W, C, M, R = 2, 3, 5, 24, 2, 16
    x = torch.randn(B, H * W, C, generator=g).to(dtype)
    a = tuple(torch.rand(C, generator=g) for _ in range(M))
    grads = [torch.randn(B, H * W, C, generator=g).to(dtype) for _ in range(M)]
    kw = {}
    if cfg.get("lora"):
        kw["lora"] = ((torch.randn(B, H * W, M * R, generator=g) * 0.5).to(dtype), torch.randn(M, R, C, generator=g))
        m = None
    else:
        m = (torch.randn(M, B, H * W, C, generator=g) * 0.5).to(dtype)
    gx, ga, gm = ft._tsm_bwd(x, H, W, 8, a, m, grads, **kw)
    buf = torch.randn(B, H * W, C, generator=g).to(dtype)
    want = buf.double() + gx.double()
    stacked = torch.full((2, B, H * W, C), float("nan"), dtype=dtype)  # (d x into plane 0; plane 1 stays NaN)
    acc = stacked[0].copy_(buf)
    gx2, ga2, gm2 = ft._tsm_bwd(x, H, W, 8, a, m, grads, gx=acc, **kw)
    tol = 1e-6 if dtype == torch.float32 else 1e-2  # (one rounding of the sum, against two)
    err = ((gx2.double() - want).abs().max() / want.abs().max()).item()
    return {"same": gx2 is acc and err < tol and torch.equal(ga, ga2) and torch.equal(gm, gm2),
            "untouched": bool(torch.isnan(stacked[1]).all())}


@pytest.fixture(scope="module")
def results():
    from _case_utils import run_script_in_interpreter

    return run_script_in_interpreter(__file__, [json.dumps(list(CASES))], timeout=600)


@pytest.mark.parametrize("name", list(CASES))
def test_out_buffers_hold_the_default_gradients(results, name):
    assert results[name] == {"same": True, "untouched": True}, results[name]


def test_bad_mixing_gradient_buffer_is_named():
    from vision_rwkv.ops.fused import shift_triton as ft

    x = torch.randn(1, 6, 8)
    with pytest.raises(ValueError, match=r"token_shift_mix backward: out gx must be a contiguous \(1, 6, 8\)"):
        ft._tsm_bwd(x, 2, 3, 0, torch.rand(1, 8), None, [x], gx=torch.empty(1, 6, 8, dtype=torch.float64))


def test_gated_residual_backward_needs_the_branch():
    from vision_rwkv.ops.fused import add_norm_triton as ft

    s, w = torch.randn(2, 8), torch.ones(8)
    with pytest.raises(ValueError, match="a gated branch needs y"):
        ft._add_norm_bwd(None, s, None, w, w, 1e-5, False, s, s, s.dtype, y_dtype=s.dtype, gate=s)


def test_bad_out_buffers_are_named():
    from vision_rwkv.ops.bi_wkv6 import triton as t6

    r = torch.randn(1, 5, 1, 16)
    with pytest.raises(ValueError, match=r"bi_wkv6 backward: out gk must be a contiguous \(1, 5, 1, 16\)"):
        t6._bwd(r, r, r, -r.abs(), torch.randn(1, 16), r, out=(torch.empty_like(r), torch.empty(1, 5, 16), r))


if __name__ == "__main__":
    print(json.dumps({name: _run(name) for name in json.loads(sys.argv[1])}))
