"""v4 Bi-WKV: O(T) reference vs the naive O(T^2) forms, precision, gradients, fixtures of the original kernel."""
import math

import pytest
import torch

from vision_rwkv.ops import bi_wkv, bi_wkv_naive, bi_wkv_reference
from vision_rwkv.ops.bi_wkv.reference import _naive_factor, original_kernel_kv_grads

from _recompute import check_recompute

F64 = torch.float64


def make_inputs(b, t, c, decay=5.0, k_scale=3.0, dtype=F64, seed=0):
    """Per-step w = decay / T with decays of both signs (growth and decay), bonus u = first / T."""
    g = torch.Generator().manual_seed(seed)
    w = (torch.rand(c, generator=g, dtype=F64) * 2 - 1) * decay / t
    u = torch.randn(c, generator=g, dtype=F64) / t
    k = torch.randn(b, t, c, generator=g, dtype=F64) * k_scale
    v = torch.randn(b, t, c, generator=g, dtype=F64)
    return [x.to(dtype) for x in (w, u, k, v)]


def rel_err(a, b):
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


def rows_direct(w, u, k, v, mode, chunks, rows):
    """Output rows ``rows`` straight from the definition of DESIGN.md §3 (float64, O(T) per row)."""
    w, u, k, v = (x.double() for x in (w, u, k, v))
    t_len = k.shape[1]
    n = torch.arange(t_len, dtype=F64)[:, None]
    out = []
    for t in rows:
        if mode == "exact":
            f = torch.exp(-((t - n).abs() - 1) * w)
            f[t] = torch.exp(u)
        else:
            size = math.ceil(t_len / chunks)
            s = size * (t // size)
            f = torch.where(n < s, torch.exp(-w * (t - n)), torch.exp(-w * (t - n - 1)))
            inside = (n > s) & (n < t)
            f = f + inside * (-torch.expm1(w)) * torch.exp(w * (t - n))
            f = torch.where(n > t, torch.exp(-w * (n - t)), f)
            f[t] = torch.exp(u) + (t > s) * (-torch.expm1(w))
        wt = f[None] * torch.exp(k - k.amax(1, keepdim=True))
        out.append((wt * v).sum(1) / wt.sum(1))
    return torch.stack(out, 1)


@pytest.mark.parametrize("t", [1, 2, 3, 31, 32, 33, 100])
@pytest.mark.parametrize("mode,chunks", [("exact", 32), ("original", 32), ("original", 16), ("original", 5)])
def test_reference_matches_naive_float64(t, mode, chunks):
    for b, decay in ((1, 8.0), (2, 0.5)):
        w, u, k, v = make_inputs(b, t, 5, decay=decay, seed=t)
        ref = bi_wkv_reference(w, u, k, v, mode, chunks, block=4)  # small blocks: several scan levels
        torch.testing.assert_close(ref, bi_wkv_naive(w, u, k, v, mode, chunks), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("t,chunks", [(33, 3), (100, 5), (64, 1)])
@pytest.mark.parametrize("max_block", [4, 64])
def test_original_block_and_scan_forms(monkeypatch, t, chunks, max_block):
    """"original" mode computes chunks of up to ORIGINAL_MAX_BLOCK tokens as blocks of whole chunks, longer ones by
    scans: both match the naive form (float64), forward and gradients, with decays and growth."""
    from vision_rwkv.ops.bi_wkv import reference as ref4

    monkeypatch.setattr(ref4, "ORIGINAL_MAX_BLOCK", max_block)
    scans = []
    fn = ref4._original_weights_scans
    monkeypatch.setattr(ref4, "_original_weights_scans", lambda *a: scans.append(1) or fn(*a))
    for decay in (-8.0, 8.0):
        w, u, k, v = make_inputs(2, t, 3, decay=decay, seed=t)
        gy = torch.randn(2, t, 3, dtype=F64)
        outs = []
        for f in (bi_wkv_reference, bi_wkv_naive):
            args = [x.clone().requires_grad_() for x in (w, u, k, v)]
            y = f(*args, "original", chunks)
            (y * gy).sum().backward()
            outs.append([y.detach()] + [a.grad for a in args])
        for a, b in zip(*outs):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    assert bool(scans) == (-(-t // chunks) > max_block)


def test_naive_matches_literal_rows():
    w, u, k, v = make_inputs(2, 37, 3)
    rows = [0, 1, 5, 17, 36]
    for mode in ("exact", "original"):
        torch.testing.assert_close(bi_wkv_naive(w, u, k, v, mode, 8)[:, rows], rows_direct(w, u, k, v, mode, 8, rows))


def test_original_differs_from_exact():
    w, u, k, v = make_inputs(1, 50, 4, decay=6.0)
    assert rel_err(bi_wkv_reference(w, u, k, v, "original"), bi_wkv_reference(w, u, k, v, "exact")) > 1e-4


@pytest.mark.parametrize("t", [2, 33, 100, 257])
@pytest.mark.parametrize("mode,chunks", [("exact", 32), ("original", 32), ("original", 16)])
@pytest.mark.parametrize("decay", [-8.0, 8.0, 0.5])
def test_fp32_close_to_float64(t, mode, chunks, decay):
    w, u, k, v = make_inputs(2, t, 7, decay=decay, seed=t)
    exact = bi_wkv_naive(w, u, k, v, mode, chunks)
    y32 = bi_wkv(*(x.float() for x in (w, u, k, v)), mode=mode, chunks=chunks, backend="reference")
    assert y32.dtype == torch.float32
    assert rel_err(y32, exact) < 2e-6


def test_large_keys_and_decay_do_not_overflow():
    t = 64
    w, u, _, v = make_inputs(1, t, 6, decay=8.0)
    k = (torch.rand(1, t, 6, dtype=F64) * 2 - 1) * 60  # exp(60) overflows fp32 without the max shift
    k[0, 3] = 60.0
    for mode in ("exact", "original"):
        y = bi_wkv(w.float(), u.float(), k.float(), v.float(), mode=mode, backend="reference")
        assert torch.isfinite(y).all()
        assert rel_err(y, bi_wkv_naive(w, u, k, v, mode)) < 2e-6


@pytest.mark.parametrize("dtype,tol", [(torch.bfloat16, 1e-2), (torch.float16, 2e-3)])
def test_half_inputs_accumulate_in_fp32(dtype, tol):
    w, u, k, v = make_inputs(2, 65, 5, decay=4.0, dtype=dtype)
    for mode in ("exact", "original"):
        y = bi_wkv(w, u, k, v, mode=mode, backend="reference")
        assert y.dtype == dtype
        exact = bi_wkv_naive(*(x.double() for x in (w, u, k, v)), mode)  # same (rounded) inputs
        assert rel_err(y, exact) < tol


def test_output_dtype_follows_v():
    w, u, k, v = make_inputs(1, 9, 3, dtype=torch.float32)
    assert bi_wkv(w, u, k, v.bfloat16(), backend="reference").dtype == torch.bfloat16
    for vv in (v, v.bfloat16()):  # contiguous (B, T, C), as the kernels write it: y.view(B, -1) works
        assert bi_wkv(w, u, k, vv, backend="reference").is_contiguous()


@pytest.mark.parametrize("mode,chunks,t", [("exact", 32, 1), ("exact", 32, 7), ("original", 3, 7),
                                           ("original", 2, 5), ("original", 32, 9)])
def test_gradcheck(mode, chunks, t):
    w, u, k, v = make_inputs(1, t, 3, decay=3.0, k_scale=1.0, seed=t)
    args = [x.requires_grad_() for x in (w, u, k, v)]
    fn = lambda *a: bi_wkv_reference(*a, mode=mode, chunks=chunks, block=2)  # noqa: E731
    assert torch.autograd.gradcheck(fn, args)


@pytest.mark.parametrize("mode", ["exact", "original"])
def test_gradients_match_naive(mode):
    w, u, k, v = make_inputs(2, 45, 5, decay=6.0, seed=3)
    gy = torch.randn(2, 45, 5, dtype=F64)
    grads = []
    for fn in (bi_wkv_reference, bi_wkv_naive):
        args = [x.clone().requires_grad_() for x in (w, u, k, v)]
        (fn(*args, mode, 7) * gy).sum().backward()
        grads.append([a.grad for a in args])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("mode", ["exact", "original"])
@pytest.mark.parametrize("decay", [-8.0, 8.0])
def test_fp32_gradients_close_to_float64(mode, decay):
    w, u, k, v = make_inputs(2, 300, 5, decay=decay, seed=4)
    gy = torch.randn(2, 300, 5, dtype=F64)
    grads = []
    for dt in (F64, torch.float32):
        args = [x.to(dt).detach().requires_grad_() for x in (w, u, k, v)]
        (bi_wkv(*args, mode=mode, backend="reference") * gy.to(dt)).sum().backward()
        grads.append([a.grad for a in args])
    # gw sums B * T * T products in fp32: a few 1e-6; the others about 1e-7
    for name, a, b, tol in zip("wukv", grads[1], grads[0], (6e-6, 1e-6, 1e-6, 1e-6)):
        assert rel_err(a, b) < tol, name


@pytest.mark.parametrize("mode", ["exact", "original"])
@pytest.mark.parametrize("t, total", [(33, -47.0), (40, -60.0), (65, -70.0), (100, -80.0), (196, -87.0)])
def test_strong_growth_inside_the_range_keeps_finite_gradients(mode, t, total):
    """|w| T up to ~88 with growth (w < 0) and a ragged last block: "original" mode's gradient of w was NaN from
    |w| T = 47 at T = 33 (the carry past the padded last block overflowed, then was scaled by exp(-w))."""
    w = torch.tensor([total / t, total / t / 2, 0.3 / t], dtype=F64)
    u = torch.randn(3, dtype=F64, generator=torch.Generator().manual_seed(1))
    _, _, k, v = make_inputs(2, t, 3, k_scale=0.0, seed=5)
    gy = torch.randn(2, t, 3, dtype=F64)
    grads = []
    for dt in (F64, torch.float32):
        args = [x.to(dt).detach().requires_grad_() for x in (w, u, k, v)]
        y = bi_wkv(*args, mode=mode, backend="reference")
        (y * gy.to(dt)).sum().backward()
        grads.append([y] + [a.grad for a in args])
    # (gw sums products of up to e^87 in fp32: a few 1e-5 at the range's edge)
    for name, a, b, tol in zip(("y", "w", "u", "k", "v"), grads[1], grads[0], (2e-5, 1e-4, 2e-5, 2e-5, 2e-5)):
        assert torch.isfinite(a).all() and rel_err(a, b) < tol, name


@pytest.mark.parametrize("mode", ["exact", "original"])
def test_reference_recompute_keeps_only_the_inputs(monkeypatch, mode):
    """With ``recompute`` the backward recomputes the scans: autograd keeps the inputs (~14 / ~22 planes of k's size
    without, in exact / original mode), and the gradients are those of the stored graph. The default recomputes from
    ``RECOMPUTE_MIN_NUMEL`` elements of k on."""
    from vision_rwkv.ops.bi_wkv import reference as ref4

    base = make_inputs(2, 70, 6, decay=6.0, dtype=torch.float32, seed=2)
    check_recompute(monkeypatch, ref4, base, base[2].numel(),
                    lambda a, rc: bi_wkv_reference(*a, mode, 5, recompute=rc),
                    lambda a: bi_wkv(*a, mode=mode, chunks=5, backend="reference"))


@pytest.mark.parametrize("mode", ["exact", "original"])
def test_long_grid_4096_tokens(mode):
    """A 64x64 grid: fp32 O(T) result against rows computed from the definition, gradients finite."""
    w, u, k, v = make_inputs(1, 4096, 4, decay=7.0, dtype=torch.float32)
    args = [x.requires_grad_() for x in (w, u, k, v)]
    y = bi_wkv(*args, mode=mode, backend="reference")
    rows = [0, 1, 127, 128, 2049, 4095]
    assert rel_err(y[:, rows], rows_direct(w, u, k, v, mode, 32, rows)) < 2e-6
    y.square().sum().backward()
    assert all(torch.isfinite(a.grad).all() for a in args)


# ---------------------------------------------------------------- fixtures of the original CUDA kernels

V4_CASES = ["T16", "T50", "T196", "T1024"]


@pytest.fixture(scope="module")
def kernels_v4(load_fixture):
    return load_fixture("kernels_io.pt")["v4"]


@pytest.mark.parametrize("case", V4_CASES)
def test_fixture_forward(kernels_v4, case):
    e = kernels_v4[case]
    w, u, k, v = (e["inputs"][n] for n in ("w", "u", "k", "v"))
    assert rel_err(bi_wkv(w, u, k, v, mode="exact", backend="reference"), e["y_eq5_f64"]) < 2e-6
    y = bi_wkv(w, u, k, v, mode="original", chunks=32, backend="reference")
    assert rel_err(y, e["y_closed_form_f64"]) < 2e-6
    assert rel_err(y, e["y_old_kernel"]) < 5e-6
    # in float64 the reference reproduces the float64 targets to rounding
    w, u, k, v = (x.double() for x in (w, u, k, v))
    assert rel_err(bi_wkv_reference(w, u, k, v, "exact"), e["y_eq5_f64"]) < 1e-12
    assert rel_err(bi_wkv_reference(w, u, k, v, "original", 32), e["y_closed_form_f64"]) < 1e-12


@pytest.mark.parametrize("case", V4_CASES)
def test_fixture_original_backward_w_u(kernels_v4, case):
    """The original backward's gw, gu are the exact derivatives of its forward (its gk, gv are not: not targeted)."""
    e = kernels_v4[case]
    args = [e["inputs"][n].clone().requires_grad_() for n in ("w", "u", "k", "v")]
    y = bi_wkv(*args, mode="original", chunks=32, backend="reference")
    (y * e["inputs"]["gy"]).sum().backward()
    g = e["grads_cuda_new"]
    assert rel_err(args[0].grad, g["gw"]) < 5e-6
    assert rel_err(args[1].grad, g["gu"]) < 5e-6


def test_original_kernel_kv_grads_formula():
    """O(T) helper vs the DESIGN.md formula written with full (T, T) weight matrices (float64)."""
    w, u, k, v = make_inputs(2, 23, 3, decay=5.0)
    gy = torch.randn(2, 23, 3, dtype=F64)
    gk, gv = original_kernel_kv_grads(w, u, k, v, gy, chunks=4, block=4)
    ek = torch.exp(k).transpose(1, 2)[:, :, None, :]  # (B, C, 1, n)
    w5 = _naive_factor(w, u, 23, "exact", 4)[None] * ek  # (B, C, t, n)
    wc = _naive_factor(w, u, 23, "original", 4)[None] * ek
    vt, gt = v.transpose(1, 2), gy.transpose(1, 2)
    zc = wc.sum(-1)
    yc = (wc * vt[:, :, None, :]).sum(-1) / zc
    gv_ref = ((gt / zc)[..., None] * w5).sum(2)
    gk_ref = ((gt / zc)[..., None] * w5 * (vt[:, :, None, :] - yc[..., None])).sum(2)
    torch.testing.assert_close(gv, gv_ref.transpose(1, 2))
    torch.testing.assert_close(gk, gk_ref.transpose(1, 2))


@pytest.mark.parametrize("case", V4_CASES)
def test_fixture_original_kernel_kv_grads(kernels_v4, case):
    e = kernels_v4[case]
    gk, gv = original_kernel_kv_grads(*(e["inputs"][n] for n in ("w", "u", "k", "v", "gy")), chunks=32)
    assert rel_err(gk, e["grads_cuda_new"]["gk"]) < 5e-6
    assert rel_err(gv, e["grads_cuda_new"]["gv"]) < 5e-6


# ---------------------------------------------------------------- input validation

def test_bad_inputs():
    w, u, k, v = make_inputs(2, 5, 3, dtype=torch.float32)
    with pytest.raises(ValueError, match="mode"):
        bi_wkv(w, u, k, v, mode="fast")
    with pytest.raises(ValueError, match="chunks"):
        bi_wkv(w, u, k, v, mode="original", chunks=0)
    with pytest.raises(ValueError, match="v has shape"):
        bi_wkv(w, u, k, v[:, :4])
    with pytest.raises(ValueError, match="w has shape"):
        bi_wkv(w[:2], u, k, v)
    with pytest.raises(ValueError, match=r"\(B, T, C\)"):
        bi_wkv(w, u, k[0], v[0])
    with pytest.raises(ValueError, match="T=0"):
        bi_wkv(w, u, k[:, :0], v[:, :0])
    with pytest.raises(TypeError, match="dtype"):
        bi_wkv(w, u, k.long(), v)
    with pytest.raises(TypeError, match="torch.Tensor"):
        bi_wkv(w.tolist(), u, k, v)
    with pytest.raises(ValueError, match="device"):
        bi_wkv(w.to("meta"), u, k, v)
    with pytest.raises(ValueError, match="backend"):
        bi_wkv(w, u, k, v, backend="cuda")
    for block in (1, 0, 2.0, True):  # (block 1 would recurse forever)
        with pytest.raises(ValueError, match="block must be an int >= 2"):
            bi_wkv_reference(w, u, k, v, block=block)


def test_chunks_checked_in_every_public_function():
    """``chunks`` is an int >= 1 for the public references too (chunks=0 was a ZeroDivisionError there), and any
    integer type is accepted (a NumPy integer, as read from a config array)."""
    np = pytest.importorskip("numpy")
    w, u, k, v = make_inputs(2, 7, 3, dtype=torch.float64)
    calls = {"bi_wkv": lambda c: bi_wkv(w, u, k, v, mode="original", chunks=c),
             "bi_wkv_reference": lambda c: bi_wkv_reference(w, u, k, v, mode="original", chunks=c),
             "bi_wkv_naive": lambda c: bi_wkv_naive(w, u, k, v, mode="original", chunks=c),
             "original_kernel_kv_grads": lambda c: original_kernel_kv_grads(w, u, k, v, v, chunks=c)}
    for name, call in calls.items():
        for bad in (0, -1, 2.0, True, "4", None):
            with pytest.raises(ValueError, match=f"{name}: chunks must be an int >= 1"):
                call(bad)
        want = call(4)
        for same in (np.int64(4), np.int32(4)):
            got = call(same)
            for g, e in zip(got if isinstance(got, tuple) else (got,), want if isinstance(want, tuple) else (want,)):
                torch.testing.assert_close(g, e, rtol=0, atol=0)


def test_autocast_region_keeps_fp32_accumulation():
    w, u, k, v = make_inputs(2, 70, 5, decay=5.0, dtype=torch.float32)
    for mode in ("exact", "original"):
        plain = bi_wkv(w, u, k, v, mode=mode, backend="reference")
        with torch.autocast("cpu", dtype=torch.bfloat16):
            inside = bi_wkv(w, u, k, v, mode=mode, backend="reference")
        assert inside.dtype == torch.float32
        torch.testing.assert_close(inside, plain, rtol=0, atol=0)


@pytest.mark.parametrize("mode", ["exact", "original"])
def test_scale_uses_scaled_parameters_and_their_gradients(mode):
    """``scale``: the decay and bonus used are scale * w, scale * u (the models pass the stored parameters and 1 / T;
    the Triton kernels scale as they load); the gradients are w.r.t. the unscaled w, u."""
    g = torch.Generator().manual_seed(3)
    t_len = 13
    w_p = (torch.randn(6, generator=g, dtype=torch.float64) * 3).requires_grad_()
    u_p = torch.randn(6, generator=g, dtype=torch.float64).requires_grad_()
    k, v = (torch.randn(2, t_len, 6, generator=g, dtype=torch.float64) for _ in range(2))
    y = bi_wkv(w_p, u_p, k, v, mode=mode, chunks=4, scale=1 / t_len)
    gw, gu = torch.autograd.grad(y.sum(), (w_p, u_p))
    y_ref = bi_wkv(w_p / t_len, u_p / t_len, k, v, mode=mode, chunks=4)
    gw_ref, gu_ref = torch.autograd.grad(y_ref.sum(), (w_p, u_p))
    torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close((gw, gu), (gw_ref, gu_ref), rtol=1e-10, atol=1e-12)
    for bad in (0.0, -1.0, float("nan"), float("inf"), True, "0.5"):
        with pytest.raises(ValueError, match="scale must be a finite float > 0"):
            bi_wkv(w_p, u_p, k, v, scale=bad)


def test_compiles_with_dynamic_shapes_and_a_symbolic_scale():
    """The models pass scale = 1 / T; traced with dynamic shapes it is a symbolic float (no Python-level check)."""
    fn = torch.compile(lambda w, u, k, v: bi_wkv(w, u, k, v, scale=1.0 / k.shape[1]), backend="eager",
                       fullgraph=True, dynamic=True)
    for t in (9, 13):
        w, u, k, v = make_inputs(2, t, 8, dtype=torch.float32)
        torch.testing.assert_close(fn(w, u, k, v), bi_wkv(w, u, k, v, scale=1.0 / t), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mode", ["exact", "original"])
def test_one_float64_argument_computes_in_float64(mode):
    """Mixed fp32 / float64 arguments compute in float64 whichever argument is float64 (the dtype came from k: a
    float64 output with fp32 accuracy, 1e-7 off in the audit)."""
    args = make_inputs(2, 40, 3, seed=6)
    for i in range(4):
        mixed = [a.float() if j == i else a for j, a in enumerate(args)]
        rounded = [a.float().double() if j == i else a for j, a in enumerate(args)]
        got, want = (bi_wkv(*x, mode=mode, backend="reference") for x in (mixed, rounded))
        assert got.dtype == (torch.float32 if i == 3 else F64)  # (the output follows v)
        assert (got.double() - want).abs().max() < (1e-6 if i == 3 else 1e-12), i
