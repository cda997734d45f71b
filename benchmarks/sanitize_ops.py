"""Small forward+backward calls of every Triton kernel family, meant to run under compute-sanitizer (memcheck):

* v4 Bi-WKV: tile-scan and register-sequential (``seq=1``, the default) kernels, single- and multi-chunk paths, both
  modes, odd sizes; the seq kernels' output gate, forward and backward (the token mix's training path);
* v6 Bi-WKV: walk and chunk-parallel (``algo=chunk``, the default) kernels, several state chunks, head size 80; the
  time mix's entry points (the decay's pre-activation read, the GroupNorm * gate formed as y is stored);
* the fused elementwise kernels and the GEMM-epilogue kernels (partial tiles in M, N and K);
* the mixed-operand GEMMs (``mix_linear``, v4 and v6 with the LoRA offset, every epilogue; ``mix_linear_group``;
  ``group_norm_mul_linear``; ``mix_mlp``) and their residual-epilogue forms (inference: forward only), whose operand
  loads gather neighbour tokens.

fp32 and bf16 everywhere. Prints one line per case; exits non-zero if an output or gradient is non-finite.
    compute-sanitizer --tool memcheck --error-exitcode 3 python benchmarks/sanitize_ops.py
    SANITIZE_SECTIONS=v6,mix python benchmarks/sanitize_ops.py     # some of the sections v4, v6, fused, mix
"""
import os
import sys

import torch

os.environ.setdefault("VRWKV_TRITON_DEBUG", "1")
from vision_rwkv.ops import fused  # noqa: E402
from vision_rwkv.ops.bi_wkv import triton as v4  # noqa: E402
from vision_rwkv.ops.bi_wkv6 import triton as v6  # noqa: E402
from vision_rwkv.ops.fused import shift_triton as ft  # noqa: E402

if sys.argv[1:2] in (["-h"], ["--help"]):
    sys.exit(print(__doc__))
dev = sys.argv[1] if len(sys.argv) > 1 else "cuda"  # "cpu" with TRITON_INTERPRET=1: a dry run of this script
SECTIONS = ("v4", "v6", "fused", "mix")
_WANTED = [x.strip() for x in os.environ.get("SANITIZE_SECTIONS", ",".join(SECTIONS)).split(",") if x.strip()]
if set(_WANTED) - set(SECTIONS):
    raise SystemExit(f"SANITIZE_SECTIONS: unknown {sorted(set(_WANTED) - set(SECTIONS))}; known: {SECTIONS}")


def section(name, items):
    """``items`` when the cases of section ``name`` run (``SANITIZE_SECTIONS``, comma-separated; default all), else
    nothing: processes can split the cases between them (compile warm-ups in parallel, see device_run10.sh)."""
    return items if name in _WANTED else ()

bad = 0
torch.manual_seed(0)
DTYPES = (torch.float32, torch.bfloat16)


def check(tag, outputs, leaves):
    """Backward with a random cotangent, then count the case bad if anything is non-finite."""
    global bad
    outs = outputs if isinstance(outputs, tuple) else (outputs,)
    torch.autograd.backward(outs, [torch.randn_like(o) for o in outs])
    ok = all(torch.isfinite(t).all().item() for t in (*outs, *(x.grad for x in leaves)))
    bad += not ok
    print(*tag, "ok" if ok else "NON-FINITE", flush=True)


def check_fwd(tag, outputs):
    """Forward-only kernels (the residual epilogues run without autograd): count the case bad if non-finite."""
    global bad
    outs = [o for o in (outputs if isinstance(outputs, tuple) else (outputs,)) if o is not None]
    ok = all(torch.isfinite(o).all().item() for o in outs)
    bad += not ok
    print(*tag, "ok" if ok else "NON-FINITE", flush=True)


def leaf(*shape, dtype=torch.float32, scale=1.0):
    return (torch.randn(*shape, device=dev) * scale).to(dtype).requires_grad_()


def with_config(config, settings, fn):
    old = dict(config)
    config.update(settings)
    try:
        fn()
    finally:
        config.clear()
        config.update(old)


V4_CASES = [((2, 37, 40), "exact", 32, {}), ((2, 300, 40), "exact", 32, {}), ((1, 301, 33), "original", 32, {}),
            ((2, 53, 17), "original", 4, {"chunk_t": 8}), ((1, 1, 5), "exact", 32, {})]
for seq in section("v4", (0, 1)):
    for (B, T, C), mode, P, cfg in V4_CASES:
        for dt in DTYPES:
            def run_v4():
                w, u = leaf(C, scale=1 / T), leaf(C, scale=1 / T)
                k, v = leaf(B, T, C, dtype=dt), leaf(B, T, C, dtype=dt)
                check(("v4", "seq" if seq else "scan", (B, T, C), mode, P, dt), v4.bi_wkv_triton(w, u, k, v, mode, P),
                      (w, u, k, v))
            with_config(v4.CONFIG, dict(cfg, seq=seq), run_v4)

# the v4 token mix's training path: the output gate formed by the seq forward, its gradient by the seq backward
for (B, T, C), mode, P, cfg in section("v4", V4_CASES):
    for dt in DTYPES:
        def run_v4_gate():
            w, u = (torch.randn(C, device=dev) / T for _ in range(2))
            k, v, r, gout = (torch.randn(B, T, C, device=dev).to(dt) for _ in range(4))
            gated, m, car = v4._fwd(w, u, k, v, mode, P, 1.0 / T, gate=r)
            check_fwd(("v4 gated bwd", (B, T, C), mode, P, dt),
                      (gated, *v4._bwd(w, u, k, v, m, car, gout, mode, P, 1.0 / T, gate=r)))
        with_config(v4.CONFIG, dict(cfg, seq=1), run_v4_gate)

# the v6 kernel variants the sweep times (benchmarks/sweep.py) and a device run may make default: the walk kernels
# (value columns in blocks of 32 too), the chunk kernels with the states walked (the default up to 16 state chunks)
# or scanned, carried by the output / backward kernels, 16-bit, and the log decay's suffix sums by their own kernel
V6_VARIANTS = (("walk", {}), ("walk", {"walk_bv": 32}), ("chunk", {"state_t": 32}),
               ("chunk", {"state_t": 32, "state_walk": 0, "suffix_inline": 0}),
               ("chunk", {"state_t": 32, "fwd_carry": 1, "bwd_carry": 1}),
               ("chunk", {"state_t": 32, "fwd_carry": 1, "state_walk": 64, "state_dtype": "input"}))
for algo, cfg in section("v6", V6_VARIANTS):
    for (B, T, H, N) in [(2, 37, 2, 64), (1, 20, 1, 80), (1, 1, 1, 64), (1, 131, 2, 64)]:
        for dt in DTYPES:
            def run_v6():
                r, k, v = (leaf(B, T, H, N, dtype=dt) for _ in range(3))
                logd = (-torch.exp(torch.randn(B, T, H, N, device=dev))).to(dt).requires_grad_()
                u = leaf(H, N)
                check(("v6", algo, cfg, (B, T, H, N), dt), v6.bi_wkv6_triton(r, k, v, logd, u), (r, k, v, logd, u))
            with_config(v6.CONFIG, dict(cfg, algo=algo), run_v6)

# the RWKV-6 time mix's entry points: z and w0 read (the log decay formed as loaded), the GroupNorm * silu(gate)
# formed as y is stored (the walk route: as its two direction planes are summed), y kept or not; z's gradient
for algo, cfg in section("v6", (("walk", {}), ("chunk", {"state_t": 32}))):
    for (B, T, H, N) in [(2, 37, 2, 64), (1, 20, 1, 80)]:
        for dt in DTYPES:
            def run_v6_step():
                r, k, v, z, g, gy = (torch.randn(B, T, H, N, device=dev).to(dt) for _ in range(6))
                u, w0, nw, nb = (torch.randn(*s, device=dev) for s in ((H, N), (H * N,), (H * N,), (H * N,)))
                for keep in (True, False):
                    check_fwd(("v6 decay+norm", algo, (B, T, H, N), dt, "y kept" if keep else "no y"),
                              v6._fwd(r, k, v, z, u, w0=w0, norm=(g, nw, nb, 1e-5, dt, keep)))
                check_fwd(("v6 decay bwd", algo, (B, T, H, N), dt), v6._bwd(r, k, v, z, u, gy, w0=w0))
            with_config(v6.CONFIG, dict(cfg, algo=algo), run_v6_step)

for dt in section("fused", DTYPES):
    B, Hh, Ww, C = 2, 5, 7, 40
    x, a = leaf(B, Hh * Ww, C, dtype=dt), leaf(3, C)
    check(("token_shift_mix", dt), fused.token_shift_mix(x, (Hh, Ww), a, backend="triton"), (x, a))
    check(("shift_lerp split", dt), torch.stack(fused.shift_lerp(x, (Hh, Ww), a, backend="triton", split=True)),
          (x, a))
    x, a, h, w2 = leaf(B, Hh * Ww, C, dtype=dt), leaf(5, C), leaf(B, Hh * Ww, 5 * 16, dtype=dt), leaf(5, 16, C)
    check(("token_shift_mix_lora", dt), fused.token_shift_mix_lora(x, (Hh, Ww), a, h, w2, 8, backend="triton"),
          (x, a, h, w2))
    check(("token_shift_mix_lora split", dt), torch.stack(fused.token_shift_mix_lora(
        x, (Hh, Ww), a, h, w2, 8, backend="triton", split=True)), (x, a, h, w2))
    # the time mix's second mixing backward: d x added into the first's gradient of x, in place
    with torch.no_grad():
        gx0 = torch.randn(B, Hh * Ww, C, device=dev).to(dt)
        check_fwd(("token_shift_mix bwd into gx", dt), ft._tsm_bwd(x, Hh, Ww, 8, a[:1], None, [x], gx=gx0)[:2])
    r, y = leaf(3, 37, dtype=dt), leaf(3, 37, dtype=dt)
    check(("sigmoid_mul", dt), fused.sigmoid_mul(r, y, backend="triton"), (r, y))
    x = leaf(5, 13, dtype=dt)
    check(("relu_square", dt), fused.relu_square(x, backend="triton"), (x,))
    y, g, wt, bs = leaf(2, 7, 48, dtype=dt), leaf(2, 7, 48, dtype=dt), leaf(48), leaf(48)
    check(("group_norm_mul", dt), fused.group_norm_mul(y, g, 3, wt, bs, gate_act="silu", backend="triton"),
          (y, g, wt, bs))
    w0, z = leaf(24), leaf(3, 5, 24, dtype=dt)
    check(("decay_logd", dt), fused.decay_logd(w0, z, backend="triton"), (w0, z))
    gen = torch.Generator().manual_seed(1)  # (its own draws: the later cases keep their inputs)
    specs = (((3, 37, 80), 1.0, dt), ((80, 24), 0.3, torch.float32), ((24, 72), 0.3, torch.float32))
    xl, l1, l2 = ((torch.randn(*s, generator=gen) * c).to(dev, t).requires_grad_() for s, c, t in specs)
    check(("lora_mlp", dt), fused.lora_mlp(xl, l1, l2, backend="triton"), (xl, l1, l2))  # (partial tiles)
    x, y, gam, wt, bs = leaf(3, 7, 40), leaf(3, 7, 40, dtype=dt), leaf(40), leaf(40), leaf(40)
    check(("add_norm pre", dt), fused.add_norm(x, y, gam, wt, bs, backend="triton"), (x, y, gam, wt, bs))
    keep = torch.tensor([0.0, 1.25, 0.8], device=x.device)  # drop path's per-sample factors (3 samples of 7 rows)
    check(("add_norm post drop path", dt), fused.add_norm(x, y, gam, wt, bs, post=True, backend="triton",
                                                          sample_scale=keep)[0], (x, y, gam, wt, bs))
    for shape, n, gemm in (((2, 37, 40), 24, dict(bm=16, bn=16, bk=16)), ((3, 70, 192), 200, {})):
        def run_gemm():
            x, wt = leaf(*shape, dtype=dt), leaf(n, shape[-1], scale=shape[-1] ** -0.5)
            y = leaf(*shape[:-1], n, dtype=dt)
            check(("linear_relu_square", dt, shape, n), fused.linear_relu_square(x, wt, backend="triton"), (x, wt))
            check(("linear_sigmoid_mul", dt, shape, n), fused.linear_sigmoid_mul(x, wt, y, backend="triton"),
                  (x, wt, y))
            w1, w0 = leaf(shape[-1], n, scale=shape[-1] ** -0.5), leaf(n)  # LoRA layout: (K, N), used transposed
            check(("linear_tanh", dt, shape, n), fused.linear_tanh(x, w1.t(), backend="triton"), (x, w1))
            check(("linear_decay", dt, shape, n), fused.linear_decay(x, w1.t(), w0, backend="triton"), (x, w1, w0))
        from vision_rwkv.ops.fused import linear_triton

        with_config(linear_triton.CONFIG, gemm, run_gemm)

from vision_rwkv.ops.fused import mix_linear_triton, mix_mlp_triton, norm_linear_triton  # noqa: E402

SMALL = dict(bm=16, bn=16, bk=16, res_elems=256)
for dt in section("mix", DTYPES):
    B, Hh, Ww, C, N = 2, 5, 7, 40, 24
    T = Hh * Ww

    def run_mix():
        x, a, wt = leaf(B, T, C, dtype=dt), leaf(C), leaf(N, C, scale=C ** -0.5)
        y = leaf(B, T, N, dtype=dt)
        for act in ("none", "relu_square", "tanh", "sigmoid_mul"):
            gated = y if act == "sigmoid_mul" else None
            check(("mix_linear v4", act, dt), fused.mix_linear(x, (Hh, Ww), a, wt, one_minus=True, act=act, y=gated,
                                                                backend="triton"),
                  (x, a, wt) + ((y,) if gated is not None else ()))
        h, w2 = leaf(B, T, 48, dtype=dt), leaf(16, C)
        check(("mix_linear v6 lora", dt), fused.mix_linear(x, (Hh, Ww), a, wt, 8, h[..., 16:32], w2, backend="triton"),
              (x, a, wt, h, w2))
        ws, a4, w24 = [leaf(N, C, scale=C ** -0.5) for _ in range(4)], leaf(4, C), leaf(4, 16, C)
        check(("mix_linear_group v4", dt), torch.stack(fused.mix_linear_group(x, (Hh, Ww), a4[:2], ws[:2],
                                                                               one_minus=True, backend="triton")),
              (x, a4, *ws[:2]))
        h5 = leaf(B, T, 80, dtype=dt)
        check(("mix_linear_group v6 lora", dt), torch.stack(fused.mix_linear_group(
            x, (Hh, Ww), a4, ws, 8, h5[..., 16:], w24, backend="triton")), (x, a4, *ws, h5, w24))
        wk, wv = leaf(72, C, scale=C ** -0.5), leaf(C, 72, scale=72 ** -0.5)
        check(("mix_mlp", dt), fused.mix_mlp(x, (Hh, Ww), a, wk, wv, one_minus=True, backend="triton"), (x, a, wk, wv))
        with torch.no_grad():
            for post in (False, True):
                res = fused.ResidualNorm(torch.randn(B, T, C, device=dev), torch.randn(C, device=dev),
                                         torch.randn(C, device=dev), torch.randn(C, device=dev), 1e-5, post, dt)
                wc = torch.randn(C, C, device=dev) * C ** -0.5
                check_fwd(("mix_linear residual", "post" if post else "pre", dt),
                          fused.mix_linear(x, (Hh, Ww), a, wc, act="sigmoid_mul", y=x, backend="triton", residual=res))
                check_fwd(("linear_add_norm", "post" if post else "pre", dt),
                          fused.linear_add_norm(x, wc, res, backend="triton"))

    def run_gn():
        y, g, gw, gb = leaf(2, 7, 48, dtype=dt), leaf(2, 7, 48, dtype=dt), leaf(48), leaf(48)
        wt = leaf(N, 48, scale=48 ** -0.5)
        check(("group_norm_mul_linear", dt), fused.group_norm_mul_linear(y, g, 3, gw, gb, wt, gate_act="silu",
                                                                         backend="triton"), (y, g, gw, gb, wt))
        with torch.no_grad():
            res = fused.ResidualNorm(torch.randn(2, 7, 48, device=dev), None, torch.randn(48, device=dev),
                                     torch.randn(48, device=dev), 1e-5, False, dt)
            check_fwd(("group_norm_mul_linear residual", dt),
                      fused.group_norm_mul_linear(y, g, 3, gw, gb, torch.randn(48, 48, device=dev), gate_act="silu",
                                                  backend="triton", residual=res))

    with_config(mix_linear_triton.CONFIG, SMALL,
                lambda: with_config(mix_mlp_triton.CONFIG, dict(bm=16, bh=16), run_mix))
    with_config(norm_linear_triton.CONFIG, dict(bm=16, bn=16, res_elems=256), run_gn)

if dev == "cuda":
    torch.cuda.synchronize()
print("sanitize cases done, bad =", bad)
sys.exit(1 if bad else 0)
