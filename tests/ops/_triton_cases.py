"""Check the Triton Bi-WKV kernels against float64 references, case by case.

Imported by ``test_bi_wkv_triton.py`` / ``test_bi_wkv6_triton.py`` (CUDA, in-process) and run as a script in a
subprocess with ``TRITON_INTERPRET=1`` (CPU): ``python _triton_cases.py <op> '<json list of cases>'`` prints one JSON
object {case name: result}. A result holds the relative errors ``|out - ref| / |ref|`` (2-norm, float64) of y and of
every gradient, whether everything was finite, and an error string when the call raised.

Outputs are NaN-poisoned before every launch (``VRWKV_TRITON_DEBUG=1``), so an element a kernel forgets to write
shows up as a non-finite value.
"""
from __future__ import annotations

import contextlib
import json
import math
import sys
import traceback

import torch

from _case_utils import DTYPES, check_result, rel_err as _rel, run_script_in_interpreter


def _maybe_noncontig(x: torch.Tensor, layout: str) -> torch.Tensor:
    """Same values, other strides: 'T' = stored time-major-last (a transposed copy), 'S' = every other element."""
    if layout == "T":
        return x.transpose(1, -1).contiguous().transpose(1, -1)
    if layout == "S":
        big = torch.zeros(*x.shape[:-1], 2 * x.shape[-1], dtype=x.dtype, device=x.device)
        big[..., ::2] = x
        return big[..., ::2]
    return x


def v4_inputs(B, T, C, dtype, device, seed=0, kscale=1.0, kpm=None, wT=None, wstep=None, uT=None):
    g = torch.Generator().manual_seed(seed)
    if kpm is not None:  # k = +-kpm
        k = (torch.randint(0, 2, (B, T, C), generator=g) * 2 - 1).double() * kpm
    else:
        k = torch.randn(B, T, C, generator=g, dtype=torch.float64) * kscale
    v = torch.randn(B, T, C, generator=g, dtype=torch.float64)
    if wstep is not None:  # per-step decays given directly
        w = torch.tensor(wstep, dtype=torch.float64).repeat(C)[:C]
    else:
        wt = torch.tensor(wT, dtype=torch.float64).repeat(C)[:C] if wT is not None else \
            -5 + 8 * torch.rand(C, generator=g, dtype=torch.float64)
        w = wt / T
    ut = torch.tensor(uT, dtype=torch.float64).repeat(C)[:C] if uT is not None else torch.randn(C, generator=g,
                                                                                               dtype=torch.float64)
    u = ut / T
    gy = torch.randn(B, T, C, generator=g, dtype=torch.float64)
    cast = lambda x: x.to(dtype).to(device)  # noqa: E731
    return w.float().to(device), u.float().to(device), cast(k), cast(v), cast(gy)


# a case without its own kernel choice runs the kernels that are not the default (v4: the tile scans, v6: the walk);
# the "_seq" / "_chunk" case variants run the defaults (VRWKV_TRITON_V4 seq=1, VRWKV_TRITON_V6 algo=chunk)
V4_BASE = {"seq": 0}
V6_BASE = {"algo": "walk"}


def run_v4(case: dict, device: str) -> dict:
    from vision_rwkv.ops import bi_wkv_naive, bi_wkv_reference
    from vision_rwkv.ops.bi_wkv import triton as tri

    from vision_rwkv.ops.bi_wkv import triton_seq

    cfg = dict(tri.CONFIG)
    tri.CONFIG.update(V4_BASE, **case.get("config", {}))
    carries = []  # carry-kernel launches (the seq kernels' inline carries skip them)
    launch_carry = tri.launch_carry
    tri.launch_carry = triton_seq.launch_carry = lambda *a, **kw: (carries.append(1), launch_carry(*a, **kw))[1]
    try:
        dtype = DTYPES[case.get("dtype", "fp32")]
        B, T, C = case["shape"]
        mode = case.get("mode", "exact")
        P = case.get("chunks", 32)
        w, u, k, v, gy = v4_inputs(B, T, C, dtype, device, seed=case.get("seed", 0), kscale=case.get("kscale", 1.0),
                                   kpm=case.get("kpm"), wT=case.get("wT"), wstep=case.get("wstep"), uT=case.get("uT"))
        # scale: the kernels take the parameters (w, u = per-step values / scale) and scale them as they load them
        scale = float(case.get("scale", 1.0))
        if scale != 1.0:
            w, u = (w.double() / scale).float(), (u.double() / scale).float()
        leaves = [x.clone().requires_grad_() for x in (w, u, k, v)]
        args = [_maybe_noncontig(x, case.get("layout", "")) if x.dim() == 3 else x for x in leaves]
        if case.get("public_api"):
            from vision_rwkv.ops import bi_wkv

            y = bi_wkv(*args, mode=mode, chunks=P, backend="triton", scale=scale)
        elif case.get("compile"):
            fn = torch.compile(lambda *a: tri.bi_wkv_triton(*a, mode=mode, chunks=P, scale=scale) * 2.0,
                               backend="aot_eager", fullgraph=True)
            y = fn(*args) / 2.0
        else:
            y = tri.bi_wkv_triton(*args, mode=mode, chunks=P, scale=scale)
        grads = torch.autograd.grad(y, leaves, gy)
        ref_in = [x.detach().double().requires_grad_() for x in (w, u, k, v)]
        ref_fn = bi_wkv_naive if B * C * T * T <= 2e7 else bi_wkv_reference  # naive: (B, C, T, T) weights
        y_ref = ref_fn(ref_in[0] * scale, ref_in[1] * scale, *ref_in[2:], mode, P)
        g_ref = torch.autograd.grad(y_ref, ref_in, gy.double())
        out = {"y": _rel(y, y_ref), "dtype_ok": y.dtype == v.dtype and all(
            g.dtype == x.dtype for g, x in zip(grads, leaves))}
        for name, a, b in zip(("gw", "gu", "gk", "gv"), grads, g_ref):
            out[name] = _rel(a, b)
        out["finite"] = bool(torch.isfinite(y).all()) and all(bool(torch.isfinite(g).all()) for g in grads)
        if "carry_launches" in case:  # forward + backward
            out["carry_path"] = len(carries) == case["carry_launches"] or (
                f"{len(carries)} carry-kernel launches, expected {case['carry_launches']}")
        return out
    except Exception as e:  # reported to the test, which fails with the traceback
        return {"error": f"{type(e).__name__}: {e}\n{traceback.format_exc()}"}
    finally:
        tri.CONFIG.clear()
        tri.CONFIG.update(cfg)
        tri.launch_carry = triton_seq.launch_carry = launch_carry


def v6_inputs(B, T, H, N, dtype, device, seed=0, dscale=1.0, dshift=0.0, logd_const=None, logd_tokens=None):
    g = torch.Generator().manual_seed(seed)
    r, k, v, gy = (torch.randn(B, T, H, N, generator=g, dtype=torch.float64) for _ in range(4))
    if logd_tokens is not None:  # a per-token pattern of log decays, repeated over T, each value within +-10%
        pattern = torch.tensor(logd_tokens, dtype=torch.float64).repeat(T // len(logd_tokens) + 1)[:T]
        logd = pattern.view(1, T, 1, 1) * (0.9 + 0.2 * torch.rand(B, T, H, N, generator=g, dtype=torch.float64))
    elif logd_const is not None:
        logd = torch.full((B, T, H, N), float(logd_const), dtype=torch.float64)
        logd[..., ::2] = -math.exp(dshift)
    else:
        logd = -torch.exp(torch.randn(B, T, H, N, generator=g, dtype=torch.float64) * dscale + dshift)
    u = torch.randn(H, N, generator=g, dtype=torch.float64)
    cast = lambda x: x.to(dtype).to(device)  # noqa: E731
    return cast(r), cast(k), cast(v), cast(logd), u.float().to(device), cast(gy)


def run_v6(case: dict, device: str) -> dict:
    from vision_rwkv.ops.bi_wkv6 import triton as tri

    cfg = dict(tri.CONFIG)
    tri.CONFIG.update(V6_BASE, **case.get("config", {}))
    stack = contextlib.ExitStack()
    if case.get("fla_standin"):  # algo=fla on CPU: fla's kernels do not run in the interpreter (see _fla_standin)
        from _fla_standin import installed

        stack.enter_context(installed())
    try:
        dtype = DTYPES[case.get("dtype", "fp32")]
        B, T, H, N = case["shape"]
        r, k, v, logd, u, gy = v6_inputs(B, T, H, N, dtype, device, seed=case.get("seed", 0),
                                         dscale=case.get("dscale", 1.0), dshift=case.get("dshift", 0.0),
                                         logd_const=case.get("logd_const"), logd_tokens=case.get("logd_tokens"))
        if case.get("logd_dtype"):  # as under autocast: r, k, v in 16 bits, the log decay in fp32
            logd = logd.to(DTYPES[case["logd_dtype"]])
        if case.get("decay"):
            return _run_v6_decay(tri, case, r, k, v, u, gy)
        leaves = [x.clone().requires_grad_() for x in (r, k, v, logd, u)]
        args = [_maybe_noncontig(x, case.get("layout", "")) if x.dim() == 4 else x for x in leaves]
        if case.get("public_api"):
            from vision_rwkv.ops import bi_wkv6

            y = bi_wkv6(*args, backend="triton")
        elif case.get("compile"):
            fn = torch.compile(lambda *a: tri.bi_wkv6_triton(*a) * 2.0, backend="aot_eager", fullgraph=True)
            y = fn(*args) / 2.0
        else:
            y = tri.bi_wkv6_triton(*args)
        if case.get("gy_dtype"):  # the backward's entry point with an output gradient in another dtype than v's
            grads = tri._bwd(*[a.detach() for a in args], gy.to(DTYPES[case["gy_dtype"]]))
        else:
            grads = torch.autograd.grad(y, leaves, gy)
        # e^-1e4 == e^-inf == 0: the references need finite log decays
        ref_in = [x.detach().double().clamp_min(-1e4).requires_grad_() for x in (r, k, v, logd, u)]
        ref_fn = _v6_ref_fn(B, T, H, N)
        y_ref = ref_fn(*ref_in)
        g_ref = torch.autograd.grad(y_ref, ref_in, gy.double())
        out = {"y": _rel(y, y_ref), "dtype_ok": y.dtype == v.dtype and all(
            g.dtype == x.dtype for g, x in zip(grads, leaves))}
        for name, a, b in zip(("gr", "gk", "gv", "glogd", "gu"), grads, g_ref):
            out[name] = _rel(a, b)
        out["finite"] = bool(torch.isfinite(y).all()) and all(bool(torch.isfinite(g).all()) for g in grads)
        out.update(_clamp_grad(logd, grads[3], tri.LOGD_MIN.value))
        return out
    except Exception as e:
        return {"error": f"{type(e).__name__}: {e}\n{traceback.format_exc()}"}
    finally:
        stack.close()
        tri.CONFIG.clear()
        tri.CONFIG.update(cfg)


def _clamp_grad(logd: torch.Tensor, glogd: torch.Tensor, logd_min: float) -> dict:
    """The kernels clamp log decays below ``logd_min`` (e^-60: pairs across such a token weigh < 1e-26): the
    gradient there is the clamp's, exactly 0. (The float64 reference's is ~e^logd, 0 as well, but the kernels' value
    without the clamp's derivative is rounding noise from differences of suffix sums, far inside the relative
    tolerance of the whole gradient: only an exact check sees it.) {} when no log decay is clamped."""
    clamped = logd.float() < logd_min
    if not bool(clamped.any()):
        return {}
    worst = glogd.float()[clamped].abs().max().item()
    return {"clamp_grad": True if worst == 0 else f"|glogd| up to {worst:.3e} where logd < {logd_min} (must be 0)"}


def _run_v6_decay(tri, case: dict, r, k, v, u, gy) -> dict:
    """The fused-decay entry points (``_fwd`` / ``_bwd`` with ``w0``: the kernels read the log decay's pre-activation
    z and form -exp(w0 + z)) against the float64 reference through that decay: y and the gradients of r, k, v, z,
    u and w0 (w0's: the tokens' sum of z's, as the time mix forms it)."""
    B, T, H, N = r.shape
    g = torch.Generator().manual_seed(1)
    z = (torch.randn(B, T, H, N, generator=g, dtype=torch.float64) * case.get("dscale", 1.0)).to(r.dtype).to(r.device)
    w0 = (torch.randn(H * N, generator=g, dtype=torch.float64) + case.get("dshift", 0.0)).float().to(r.device)
    z = _maybe_noncontig(z, case.get("layout", ""))
    y = tri._fwd(r, k, v, z, u, w0=w0)
    norm_out = _v6_norm_gate(tri, case, r, k, v, z, u, w0, y) if case.get("norm") else {}
    gr, gk, gv, gz, gu = tri._bwd(r, k, v, z, u, gy, w0=w0)
    gw0 = gz.float().sum((0, 1)).reshape(-1)
    # the unfused route (fused_decay=0: the log decay formed by its own kernel, its gradient chained after) computes
    # the same values
    fused, tri.CONFIG["fused_decay"] = tri.CONFIG["fused_decay"], 0
    y_unfused, gz_unfused = tri._fwd(r, k, v, z, u, w0=w0), tri._bwd(r, k, v, z, u, gy, w0=w0)[3]
    tri.CONFIG["fused_decay"] = fused
    unfused = {"y_vs_unfused": _rel(y, y_unfused), "gz_vs_unfused": _rel(gz, gz_unfused)}
    ref_in = [x.detach().double().requires_grad_() for x in (r, k, v, z, u, w0)]
    rr, kr, vr, zr, ur, w0r = ref_in
    y_ref = _v6_ref_fn(B, T, H, N)(rr, kr, vr, (-torch.exp(w0r.view(H, N) + zr)).clamp_min(-1e4), ur)
    g_ref = torch.autograd.grad(y_ref, ref_in, gy.double())
    grads = (gr, gk, gv, gz, gu, gw0)
    out = {"y": _rel(y, y_ref), "dtype_ok": y.dtype == v.dtype and gz.dtype == z.dtype and all(
        a.dtype == x.dtype for a, x in zip((gr, gk, gv), (r, k, v)))}
    for name, a, b in zip(("gr", "gk", "gv", "gz", "gu"), grads, g_ref):
        out[name] = _rel(a, b)
    # w0's gradient sums z's over every token: its error against the sum of magnitudes (the sum cancels)
    scale = g_ref[3].abs().sum((0, 1)).reshape(-1).norm()
    out["gw0"] = float((gw0.double().cpu() - g_ref[5].cpu()).norm() / scale)
    out["finite"] = bool(torch.isfinite(y).all()) and all(bool(torch.isfinite(a).all()) for a in grads)
    out.update(unfused)  # (0.0 in the interpreter: the same fp32 expression in both kernels)
    out.update(norm_out)
    return out


def _v6_norm_gate(tri, case: dict, r, k, v, z, u, w0, y) -> dict:
    """The forward with the time mix's GroupNorm * silu(gate) formed as y is stored (``norm=``), keeping y or not:
    the product against float64 (GroupNorm of the reference y) and against the unfused kernel on the stored y, and
    the kept y against the plain forward's."""
    B, T, H, N = r.shape
    g = torch.Generator().manual_seed(2)
    gate, nw, nb = (torch.randn(*shape, generator=g, dtype=torch.float64)
                    for shape in ((B, T, H, N), (H * N,), (H * N,)))
    gate = _maybe_noncontig(gate.to(r.dtype).to(r.device), "S")  # (every other element of a wider tensor)
    nw, nb = nw.float().to(r.device), nb.float().to(r.device)
    eps = 64e-5
    kept, gated = tri._fwd(r, k, v, z, u, w0=w0, norm=(gate, nw, nb, eps, r.dtype, True))
    none, gated2 = tri._fwd(r, k, v, z, u, w0=w0, norm=(gate, nw, nb, eps, r.dtype, False))
    yd = bi_wkv6_naive_decay(r, k, v, z, u, w0)
    mean = yd.mean(-1, keepdim=True)
    var = yd.var(-1, unbiased=False, keepdim=True)
    gd = gate.double()
    ref = ((yd - mean) / torch.sqrt(var + eps) * nw.double().view(H, N) + nb.double().view(H, N)) * gd * torch.sigmoid(gd)
    unfused = tri._norm_gate(y, gate, nw, nb, eps, r.dtype)
    return {"gated": _rel(gated, ref.to(gated.device)), "gated_vs_unfused": _rel(gated, unfused),
            "gated_no_y_vs_kept": _rel(gated2, gated), "kept_y_vs_plain": _rel(kept, y),
            "no_y": none is None or "y returned"}


def bi_wkv6_naive_decay(r, k, v, z, u, w0):
    """The float64 reference y through the decay -exp(w0 + z)."""
    B, T, H, N = r.shape
    args = [x.detach().double() for x in (r, k, v, z, u, w0)]
    return _v6_ref_fn(B, T, H, N)(*args[:3], (-torch.exp(args[5].view(H, N) + args[3])).clamp_min(-1e4), args[4])


def _v6_ref_fn(B, T, H, N):
    """The float64 reference for a shape: the naive O(T^2) form while small, else the chunked reference."""
    from vision_rwkv.ops import bi_wkv6_naive, bi_wkv6_reference

    return bi_wkv6_naive if B * T * T * H * N <= 2e7 else bi_wkv6_reference


RUNNERS = {"bi_wkv": run_v4, "bi_wkv6": run_v6}


# fp32 rounding in a recurrence over T steps grows like sqrt(T) ulps: the fp32 tolerances hold up to this many tokens
# and scale with sqrt(T / FP32_TOL_TOKENS) above (an H200 run gave y 2.0e-5 / 2.6e-5 and gu 4.1e-5 / 4.6e-5 at
# T = 65537, weak v4 decays, i.e. every token weighs in - against 1e-5 / 3e-5 at T <= 16384)
FP32_TOL_TOKENS = 4096


def tolerances(dtype: str, op: str, tokens: int = 0) -> tuple[float, float]:
    """(y, gradients) relative tolerances (METHOD.md: fp32 ~1e-5 vs float64; bf16 1e-3..1e-2), for ``tokens`` T."""
    if dtype == "fp32":
        scale = max(1.0, math.sqrt(tokens / FP32_TOL_TOKENS))
        return 1e-5 * scale, 3e-5 * scale
    if dtype == "fp16":
        return 3e-3, 1e-2
    return 1e-2, 2e-2


# the v6 log decay's gradients (d logd, d z, d w0) in fp32: suffix sums of differences of the four directional
# parts, so their cancellation amplifies the ~2^-22 per-product error of "tf32x3" dots (a GPU's fp32 precision here,
# emulated by vision_rwkv.ops.interpret_fixes): up to ~3e-5 with strong decays where every other quantity is ~1e-7
DECAY_GRADS = ("glogd", "gz", "gw0")
FP32_DECAY_GRAD_TOL = 1e-4


def check(result: dict, dtype: str, op: str, tokens: int = 0) -> None:
    """Assert a case result is within tolerance (raises AssertionError naming the quantity)."""
    tol_y, tol_grad = tolerances(dtype, op, tokens)
    keys = None
    if dtype == "fp32":
        keys = dict.fromkeys(DECAY_GRADS, FP32_DECAY_GRAD_TOL * max(1.0, math.sqrt(tokens / FP32_TOL_TOKENS)))
    check_result(result, tol_y, tol_grad, keys)


def run_in_interpreter(op: str, cases: dict, timeout: float = 600) -> dict:
    """Run ``cases`` {name: case} of ``op`` on CPU under TRITON_INTERPRET=1 in a fresh subprocess."""
    return run_script_in_interpreter(__file__, [op, json.dumps(cases)], timeout)


if __name__ == "__main__":
    torch.set_num_threads(1)
    _op, _cases = sys.argv[1], json.loads(sys.argv[2])
    _res = {name: RUNNERS[_op](case, "cpu") for name, case in _cases.items()}
    print(json.dumps(_res))
