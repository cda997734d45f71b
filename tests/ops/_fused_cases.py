"""Check the fused Triton elementwise kernels (``vision_rwkv.ops.fused``) against float64 references, case by case.

Imported by ``test_fused_triton.py`` (CUDA, in-process) and run as a script in a subprocess with
``TRITON_INTERPRET=1`` (CPU): ``python _fused_cases.py '<json dict of cases>'`` prints one JSON object
{case name: result}. A result holds the relative errors ``|out - ref| / |ref|`` (2-norm, float64) of the output and
of every gradient, whether everything was finite, whether dtypes are as promised, or an error string.

Outputs are NaN-poisoned before every launch (``VRWKV_TRITON_DEBUG=1``), so an element a kernel forgets to write
shows up as a non-finite value. Inputs are random (never zeros) and drawn fresh per case (seeded by the case).
"""
from __future__ import annotations

import json
import sys
import traceback

import torch

from _case_utils import DTYPES, check_result, rel_err as _rel, run_script_in_interpreter


def _randn(shape, g, dtype, device, scale=1.0):
    return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype).to(device)


def _stacked(out):
    """One (M, B, N, C) tensor from a mixing op's output, its ``split=True`` tuple or its groups (``split=(2, 1)``:
    (n, B, N, C) views and (B, N, C) planes); cat's backward hands each part its own gradient, as a caller unpacking
    them would."""
    if not isinstance(out, tuple):
        return out
    return torch.cat([o if o.dim() == 4 else o.unsqueeze(0) for o in out])


def _weights(leaves: dict, a: torch.Tensor, vectors: bool):
    """The interpolation weights as leaves: ``a`` (M, C) itself, or (``vectors``, the models' training call) M leaves
    of shape (1, 1, C) as the parameters are stored. Returns (the op's argument from the leaves, the (M, C) matrix
    for the reference)."""
    if not vectors:
        leaves["a"] = a
        return (lambda t: t["a"]), (lambda t: t["a"])
    m, c = a.shape
    for i in range(m):
        leaves[f"a{i}"] = a[i].reshape(1, 1, c).clone()
    return ((lambda t: tuple(t[f"a{i}"] for i in range(m))),
            (lambda t: torch.cat([t[f"a{i}"].reshape(1, c) for i in range(m)])))


def _with_residual(case: dict, leaves: dict, g, device: str, shape: tuple, call, rf):
    """A GEMM op's call (``call(t, **kw)``) and reference with a block's residual add + LayerNorm (``residual=``):
    adds the residual x / layer scale / LayerNorm affine leaves; the checked output is s (post-norm) or
    s + 0.7 n (pre-norm), as for ``add_norm``. Returns (fn, rf, output dtype)."""
    from vision_rwkv.ops import fused
    from vision_rwkv.ops.fused import reference as ref

    post = case["residual"] == "post"
    c = shape[-1]
    leaves.update(res_x=_randn(shape, g, torch.float32, device), ln_w=_randn((c,), g, torch.float32, device) + 1.0,
                  ln_b=_randn((c,), g, torch.float32, device))
    if case.get("gamma", True):
        leaves["gamma"] = _randn((c,), g, torch.float32, device)
    n_dtype = DTYPES[case.get("n_dtype", "fp32")]

    def spec(t, x_res=None):
        return fused.ResidualNorm(t["res_x"] if x_res is None else x_res, t.get("gamma"), t["ln_w"], t["ln_b"], 1e-5,
                                  post, n_dtype, x_res is not None)

    def combine(out):
        s, n = out
        return s if post else s + 0.7 * n.to(s.dtype)

    def fused_fn(t):
        if case.get("inplace"):  # s written into (a copy of) the residual x
            x_own = t["res_x"].detach().clone()
            s, n = call(t, residual=spec(t, x_own))
            if s.untyped_storage().data_ptr() != x_own.untyped_storage().data_ptr():
                raise AssertionError("the residual epilogue with inplace=True did not write into x")
            return combine((s, n))
        return combine(call(t, residual=spec(t)))

    def ref_fn(t):
        return combine(ref.add_norm_reference(t["res_x"], rf(t), t.get("gamma"), t["ln_w"], t["ln_b"], 1e-5, post,
                                              n_dtype))
    return fused_fn, ref_fn, torch.float32


def _inputs(case: dict, device: str):
    """Leaves (float tensors, requires_grad), the call on the fused op, the call on the reference."""
    from vision_rwkv.ops import fused
    from vision_rwkv.ops.fused import reference as ref

    g = torch.Generator().manual_seed(case.get("seed", 0))
    dtype = DTYPES[case.get("dtype", "fp32")]
    out_dtype = DTYPES[case["out_dtype"]] if "out_dtype" in case else None
    op = case["op"]
    backend = case.get("backend", "triton")
    if op in ("token_shift_mix", "shift_lerp"):
        B, H, W, C = case["shape"]
        M = case.get("M", 3)
        hs = case.get("head_size")
        x = _randn((B, H * W, C), g, dtype, device)
        a = torch.rand(M, C, generator=g, dtype=torch.float64).float().to(device)
        leaves = {"x": x}
        arg_a, mat_a = _weights(leaves, a, case.get("vectors", False))
        if case.get("with_m"):
            leaves["m"] = _randn((M, B, H * W, C), g, dtype, device, 0.5)
        split = case.get("split", False)  # M separate outputs / groups (gradients read in place), checked stacked
        if op == "shift_lerp":
            fn = lambda t: _stacked(fused.shift_lerp(t["x"], (H, W), arg_a(t), hs, out_dtype, backend,  # noqa: E731
                                                     split=split))
            rf = lambda t: ref.token_shift_mix_reference(t["x"], (H, W), 1 - mat_a(t), None, hs)  # noqa: E731
        else:
            fn = lambda t: _stacked(fused.token_shift_mix(t["x"], (H, W), arg_a(t), t.get("m"), hs,  # noqa: E731
                                                          out_dtype, backend, split=split))
            rf = lambda t: ref.token_shift_mix_reference(t["x"], (H, W), mat_a(t), t.get("m"), hs)  # noqa: E731
        odt = out_dtype or dtype
    elif op == "token_shift_mix_lora":
        B, H, W, C = case["shape"]
        M, R = case.get("M", 5), case.get("R", 16)
        hs = case.get("head_size")
        leaves = {"x": _randn((B, H * W, C), g, dtype, device)}
        arg_a, mat_a = _weights(leaves, torch.rand(M, C, generator=g, dtype=torch.float64).float().to(device),
                                case.get("vectors", False))
        leaves.update(h=_randn((B, H * W, M * R), g, dtype, device, 0.5), w2=_randn((M, R, C), g, torch.float32,
                                                                                   device, 0.3))
        fn = lambda t: _stacked(fused.token_shift_mix_lora(t["x"], (H, W), arg_a(t), t["h"], t["w2"], hs,  # noqa
                                                           out_dtype, backend, split=case.get("split", False)))

        def rf(t):
            m = torch.bmm(t["h"].reshape(-1, M, R).transpose(0, 1), t["w2"]).view(M, B, H * W, C)
            return ref.token_shift_mix_reference(t["x"], (H, W), mat_a(t), m, hs)
        odt = out_dtype or dtype
    elif op == "sigmoid_mul":
        shape = case["shape"]
        leaves = {"r": _randn(shape, g, dtype, device, 3.0), "y": _randn(shape, g, dtype, device)}
        fn = lambda t: fused.sigmoid_mul(t["r"], t["y"], backend)  # noqa: E731
        rf = lambda t: ref.sigmoid_mul_reference(t["r"], t["y"])  # noqa: E731
        odt = dtype
    elif op == "relu_square":
        leaves = {"x": _randn(case["shape"], g, dtype, device, 2.0)}
        if case.get("inplace"):  # over a temporary (x * 1), as the models do with a Linear output
            fn = lambda t: fused.relu_square(t["x"] * 1, backend, inplace=True)  # noqa: E731
        else:
            fn = lambda t: fused.relu_square(t["x"], backend)  # noqa: E731
        rf = lambda t: ref.relu_square_reference(t["x"])  # noqa: E731
        odt = dtype
    elif op in ("linear_relu_square", "linear_sigmoid_mul"):
        shape, n = case["shape"], case["N"]
        leaves = {"x": _randn(shape, g, dtype, device), "weight": _randn((n, shape[-1]), g, torch.float32, device,
                                                                         shape[-1] ** -0.5)}
        if op == "linear_relu_square":
            fn = lambda t: fused.linear_relu_square(t["x"], t["weight"], backend)  # noqa: E731
            rf = lambda t: ref.linear_relu_square_reference(t["x"], t["weight"])  # noqa: E731
            odt = dtype
        else:
            ydt = DTYPES[case.get("y_dtype", case.get("dtype", "fp32"))]
            leaves["y"] = _randn(tuple(shape[:-1]) + (n,), g, ydt, device)
            fn = lambda t: fused.linear_sigmoid_mul(t["x"], t["weight"], t["y"], backend)  # noqa: E731
            rf = lambda t: ref.linear_sigmoid_mul_reference(t["x"], t["weight"], t["y"])  # noqa: E731
            odt = torch.promote_types(dtype, ydt)
    elif op in ("linear_tanh", "linear_decay"):
        # the RWKV-6 LoRA stages: the (K, N) LoRA matrix passed transposed (a strided (N, K) view, as the models do)
        shape, n = case["shape"], case["N"]
        leaves = {"x": _randn(shape, g, dtype, device),
                  "w": _randn((shape[-1], n), g, torch.float32, device, shape[-1] ** -0.5)}

        def weight(t):
            return t["w"].t() if case.get("transposed", True) else t["w"].t().contiguous()

        if op == "linear_tanh":
            fn = lambda t: fused.linear_tanh(t["x"], weight(t), backend)  # noqa: E731
            rf = lambda t: ref.linear_tanh_reference(t["x"], weight(t))  # noqa: E731
            odt = dtype
        else:
            leaves["w0"] = _randn((n,), g, torch.float32, device, 0.5) - 1.0
            fn = lambda t: fused.linear_decay(t["x"], weight(t), t["w0"], backend)  # noqa: E731
            rf = lambda t: ref.linear_decay_reference(t["x"], weight(t), t["w0"])  # noqa: E731
            odt = torch.float32
    elif op == "mix_linear":
        # a projection of a Q-Shift interpolation (v4 mu / v6 maa, optional LoRA offset from a column slice of the
        # LoRA hidden, as the models pass it), with each epilogue
        B, H, W, C = case["shape"]
        n, hs, act = case["N"], case.get("head_size"), case.get("act", "none")
        one_minus, rank = case.get("one_minus", False), case.get("R")
        leaves = {"x": _randn((B, H * W, C), g, dtype, device),
                  "a": torch.rand(C, generator=g, dtype=torch.float64).float().to(device),
                  "weight": _randn((n, C), g, torch.float32, device, C ** -0.5)}
        if rank:
            leaves["h"] = _randn((B, H * W, 3 * rank), g, dtype, device, 0.5)
            leaves["w2"] = _randn((rank, C), g, torch.float32, device, 0.3)
        if act == "sigmoid_mul":
            leaves["y"] = _randn((B, H * W, n), g, dtype, device)

        def mix_args(t):
            h = t["h"][..., rank:2 * rank] if rank else None  # the middle slice: a strided view
            return (t["x"], (H, W), t["a"], t["weight"], hs, h, t.get("w2"), one_minus, act, t.get("y"))

        call = lambda t, **kw: fused.mix_linear(*mix_args(t), backend=backend, **kw)  # noqa: E731
        fn = call
        rf = lambda t: ref.mix_linear_reference(*mix_args(t))  # noqa: E731
        odt = dtype
        if "residual" in case:
            fn, rf, odt = _with_residual(case, leaves, g, device, (B, H * W, n), call, rf)
    elif op == "mix_linear_group":
        # P projections of one x in one launch (v4 key / value; v6 key / value / receptance / gate with the LoRA
        # offsets from a column slice of the LoRA hidden, as the models pass it); the checked output stacks them
        B, H, W, C = case["shape"]
        n, hs, P = case["N"], case.get("head_size"), case["P"]
        one_minus, rank = case.get("one_minus", False), case.get("R")
        leaves = {"x": _randn((B, H * W, C), g, dtype, device),
                  "a": torch.rand(P, C, generator=g, dtype=torch.float64).float().to(device)}
        for p in range(P):
            leaves[f"weight{p}"] = _randn((n, C), g, torch.float32, device, C ** -0.5)
        if rank:
            leaves["h"] = _randn((B, H * W, (P + 1) * rank), g, dtype, device, 0.5)
            leaves["w2"] = _randn((P, rank, C), g, torch.float32, device, 0.3)

        def group_args(t):
            h = t["h"][..., rank:] if rank else None  # all but the first slice: a strided view
            return (t["x"], (H, W), t["a"], [t[f"weight{p}"] for p in range(P)], hs, h, t.get("w2"), one_minus)

        fn = lambda t: torch.stack(fused.mix_linear_group(*group_args(t), backend=backend))  # noqa: E731
        rf = lambda t: torch.stack(ref.mix_linear_group_reference(*group_args(t)))  # noqa: E731
        odt = dtype
    elif op == "group_norm_mul":
        shape, groups = case["shape"], case["groups"]
        c = shape[-1]
        act = case.get("gate_act")
        leaves = {"y": _randn(shape, g, dtype, device, 2.0) + 0.5, "g": _randn(shape, g, dtype, device),
                  "weight": _randn((c,), g, torch.float32, device) + 1.0,
                  "bias": _randn((c,), g, torch.float32, device)}
        fn = lambda t: fused.group_norm_mul(t["y"], t["g"], groups, t["weight"], t["bias"], 1e-5, act,  # noqa: E731
                                            out_dtype, backend)
        rf = lambda t: ref.group_norm_mul_reference(t["y"], t["g"], groups, t["weight"], t["bias"], 1e-5,  # noqa
                                                    act)
        odt = out_dtype or dtype
    elif op == "mix_mlp":
        # the channel mix's key-value MLP on the interpolated input (hidden on chip)
        B, H, W, C = case["shape"]
        hid, hs, one_minus = case["hidden"], case.get("head_size"), case.get("one_minus", False)
        leaves = {"x": _randn((B, H * W, C), g, dtype, device),
                  "a": torch.rand(C, generator=g, dtype=torch.float64).float().to(device),
                  "key_weight": _randn((hid, C), g, torch.float32, device, C ** -0.5),
                  "value_weight": _randn((C, hid), g, torch.float32, device, hid ** -0.5)}
        fn = lambda t: fused.mix_mlp(t["x"], (H, W), t["a"], t["key_weight"], t["value_weight"], hs,  # noqa: E731
                                     one_minus, backend)
        rf = lambda t: ref.mix_mlp_reference(t["x"], (H, W), t["a"], t["key_weight"], t["value_weight"], hs,  # noqa
                                             one_minus)
        odt = dtype
    elif op == "linear_add_norm":  # a projection with the block's residual add + LayerNorm (always a residual)
        shape, n = case["shape"], case["N"]
        leaves = {"x": _randn(shape, g, dtype, device),
                  "weight": _randn((n, shape[-1]), g, torch.float32, device, shape[-1] ** -0.5)}
        call = lambda t, **kw: fused.linear_add_norm(t["x"], t["weight"], kw["residual"], backend)  # noqa: E731
        rf = lambda t: torch.nn.functional.linear(t["x"], t["weight"].to(t["x"].dtype))  # noqa: E731
        fn, rf, odt = _with_residual(case, leaves, g, device, tuple(shape[:-1]) + (n,), call, rf)
    elif op == "group_norm_mul_linear":
        shape, groups, n = case["shape"], case["groups"], case["N"]
        c = shape[-1]
        act = case.get("gate_act")
        leaves = {"y": _randn(shape, g, dtype, device, 2.0) + 0.5, "g": _randn(shape, g, dtype, device),
                  "gn_weight": _randn((c,), g, torch.float32, device) + 1.0,
                  "gn_bias": _randn((c,), g, torch.float32, device),
                  "weight": _randn((n, c), g, torch.float32, device, c ** -0.5)}
        call = lambda t, **kw: fused.group_norm_mul_linear(t["y"], t["g"], groups, t["gn_weight"],  # noqa: E731
                                                           t["gn_bias"], t["weight"], 1e-5, act, backend, **kw)
        fn = call
        rf = lambda t: ref.group_norm_mul_linear_reference(t["y"], t["g"], groups, t["gn_weight"],  # noqa: E731
                                                           t["gn_bias"], 1e-5, act, t["weight"])
        odt = dtype
        if "residual" in case:
            fn, rf, odt = _with_residual(case, leaves, g, device, tuple(shape[:-1]) + (n,), call, rf)
    elif op == "lora_mlp":  # shape (..., K), R, N; the weights fp32 (parameters), cast to x's dtype by the op
        shape, R, N = case["shape"], case["R"], case["N"]
        leaves = {"x": _randn(shape, g, dtype, device), "w1": _randn((shape[-1], R), g, torch.float32, device, 0.3),
                  "w2": _randn((R, N), g, torch.float32, device, 0.3)}
        fn = lambda t: fused.lora_mlp(t["x"], t["w1"], t["w2"], backend)  # noqa: E731
        rf = lambda t: ref.lora_mlp_reference(t["x"], t["w1"], t["w2"])  # noqa: E731
        odt = dtype
    elif op == "decay_logd":
        shape = case["shape"]
        leaves = {"w0": _randn((shape[-1],), g, torch.float32, device) - 1.0, "z": _randn(shape, g, dtype, device)}
        fn = lambda t: fused.decay_logd(t["w0"], t["z"], backend)  # noqa: E731
        rf = lambda t: ref.decay_logd_reference(t["w0"], t["z"])  # noqa: E731
        odt = torch.float32
    elif op == "add_norm":
        shape, post = case["shape"], case.get("post", False)
        c = shape[-1]
        leaves = {"x": _randn(shape, g, torch.float32, device), "y": _randn(shape, g, dtype, device, 2.0) + 0.3,
                  "weight": _randn((c,), g, torch.float32, device) + 1.0,
                  "bias": _randn((c,), g, torch.float32, device)}
        if case.get("gamma", True):
            leaves["gamma"] = _randn((c,), g, torch.float32, device)
        scale = None
        if case.get("sample_scale"):  # a constant per-sample branch factor (drop path): sample 0 dropped, others
            scale = torch.rand(shape[0], generator=g, dtype=torch.float64) * 1.5 + 0.5  # random, never 1
            scale[0] = 0.0
            scale = scale.float().to(device)

        def combine(out):  # one output for the gradient check: both s and (pre-norm) n get a gradient
            s, n = out
            return s if post else s + 0.7 * n.to(s.dtype)

        inplace = bool(case.get("inplace"))

        def fn(t):  # inplace: s written into (a copy of) x, which the op returns as s
            x = t["x"].detach().clone() if inplace else t["x"]
            s, n = fused.add_norm(x, t["y"], t.get("gamma"), t["weight"], t["bias"], 1e-5, post, out_dtype,
                                  backend, sample_scale=scale, inplace=inplace)
            if inplace and s is not x:
                raise AssertionError("add_norm(inplace=True) did not return x as s")
            return combine((s, n))
        rf = lambda t: combine(ref.add_norm_reference(t["x"], t["y"], t.get("gamma"), t["weight"], t["bias"],  # noqa
                                                      1e-5, post, sample_scale=scale))
        odt = torch.float32
    else:
        raise ValueError(f"unknown op {op!r}")
    return leaves, fn, rf, odt


def _gemm_module(case: dict):
    """The kernel module whose launch settings the case's ``gemm`` entry sets."""
    from vision_rwkv.ops.fused import linear_triton, mix_linear_triton

    from vision_rwkv.ops.fused import mix_mlp_triton, norm_linear_triton

    modules = {"mix_linear": mix_linear_triton, "linear_add_norm": mix_linear_triton,
               "mix_linear_group": mix_linear_triton,
               "group_norm_mul_linear": norm_linear_triton, "mix_mlp": mix_mlp_triton}
    return modules.get(case["op"], linear_triton)


def _gemm_config(case: dict) -> dict:
    """Apply the case's GEMM launch settings (small tiles: several M / N tiles and K steps on tiny shapes);
    returns the previous settings."""
    if "gemm" not in case:
        return {}
    config = _gemm_module(case).CONFIG
    old = dict(config)
    config.update(case["gemm"])
    return old


def _run_infer(case: dict, fn, rf, odt, leaves: dict, args: dict) -> dict:
    """Forward-only check of an inference kernel: output error and flags; ``fused.add_norm`` (what the composed,
    unfused form calls) raises while the op runs, so a silent fallback fails the case."""
    from vision_rwkv.ops import fused

    def composed(*a, **k):
        raise AssertionError("the composed add_norm path ran instead of the fused epilogue")

    saved = fused.add_norm
    fused.add_norm = composed
    try:
        with torch.no_grad():
            if case.get("compile"):
                torch._dynamo.reset()
                y = torch.compile(lambda **t: fn(t), backend="aot_eager", fullgraph=True)(**args)
            else:
                y = fn(args)
    finally:
        fused.add_norm = saved
    y_ref = rf({k: v.detach().double() for k, v in leaves.items()})
    return {"y": _rel(y, y_ref), "dtype_ok": y.dtype == odt, "finite": bool(torch.isfinite(y).all())}


def run_case(case: dict, device: str) -> dict:
    from vision_rwkv.ops.fused import triton as fused_triton

    old_gemm = _gemm_config(case)
    old_fused = dict(fused_triton.CONFIG)
    fused_triton.CONFIG.update(case.get("fused", {}))  # (e.g. bwd_programs: several row blocks per program)
    try:
        leaves, fn, rf, odt = _inputs(case, device)
        leaves = {k: v.clone().requires_grad_() for k, v in leaves.items()}
        if case.get("layout") == "T":  # non-contiguous activations: same values, transposed storage
            args = {k: (v.transpose(0, 1).contiguous().transpose(0, 1) if v.dim() >= 3 else v)
                    for k, v in leaves.items()}
        else:
            args = dict(leaves)
        if case.get("infer"):  # inference-only kernels (no autograd): forward under no_grad, the composed
            return _run_infer(case, fn, rf, odt, leaves, args)  # fallback (add_norm) must not run
        if case.get("inplace"):  # in-place forms: eager inference only
            with torch.no_grad():
                y = fn(args)
            y_ref = rf({k: v.detach().double() for k, v in leaves.items()})
            return {"y": _rel(y, y_ref), "dtype_ok": y.dtype == odt, "finite": bool(torch.isfinite(y).all())}
        if case.get("compile"):
            torch._dynamo.reset()  # every case compiles the same lambda code: no recompile limit across cases
            cfn = torch.compile(lambda **t: fn(t) * 2, backend="aot_eager", fullgraph=True)
            y = cfn(**args) / 2
        else:
            y = fn(args)
        gen = torch.Generator().manual_seed(1234)
        gy = torch.randn(y.shape, generator=gen, dtype=torch.float64).to(y.dtype).to(y.device)
        grads = torch.autograd.grad(y, list(leaves.values()), gy)
        ref_in = {k: v.detach().double().requires_grad_() for k, v in leaves.items()}
        y_ref = rf(ref_in)
        g_ref = torch.autograd.grad(y_ref, list(ref_in.values()), gy.double())
        out = {"y": _rel(y, y_ref),
               "dtype_ok": y.dtype == odt and all(gr.dtype == v.dtype for gr, v in zip(grads, leaves.values()))}
        for name, a, b in zip(leaves, grads, g_ref):
            out["g" + name] = _rel(a, b)
        out["finite"] = bool(torch.isfinite(y).all()) and all(bool(torch.isfinite(gr).all()) for gr in grads)
        return out
    except Exception as e:  # reported to the test, which fails with the traceback
        return {"error": f"{type(e).__name__}: {e}\n{traceback.format_exc()}"}
    finally:
        if old_gemm:
            _gemm_module(case).CONFIG.update(old_gemm)
        fused_triton.CONFIG.clear()
        fused_triton.CONFIG.update(old_fused)


def tolerances(dtype: str) -> tuple[float, float]:
    """(output, gradients) relative tolerances (METHOD.md: fp32 far under 1e-3 vs float64; bf16 1e-3..1e-2).
    The tolerance follows the lowest precision among the inputs and the output."""
    if dtype == "fp32":
        return 1e-6, 1e-5
    if dtype == "fp16":
        return 2e-3, 4e-3
    return 1e-2, 2e-2


def check(result: dict, case: dict) -> None:
    """Assert a case result is within tolerance (raises AssertionError naming the quantity).
    The tolerance follows the lowest precision among the inputs and the output."""
    dts = [case.get(k, "fp32") for k in ("dtype", "out_dtype", "y_dtype", "n_dtype")]
    worst = "bf16" if "bf16" in dts else "fp16" if "fp16" in dts else "fp32"
    check_result(result, *tolerances(worst))


def run_in_interpreter(cases: dict, timeout: float = 900) -> dict:
    """Run ``cases`` {name: case} on CPU under TRITON_INTERPRET=1 in a fresh subprocess."""
    return run_script_in_interpreter(__file__, [json.dumps(cases)], timeout)


if __name__ == "__main__":
    torch.set_num_threads(1)
    _cases = json.loads(sys.argv[1])
    _res = {name: run_case(case, "cpu") for name, case in _cases.items()}
    print(json.dumps(_res))
