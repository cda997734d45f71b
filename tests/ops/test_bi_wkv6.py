"""RWKV-6 bidirectional WKV: chunked reference vs the naive form, precision, gradients, fixtures of the original."""
import pytest
import torch

from vision_rwkv.ops import bi_wkv6, bi_wkv6_naive, bi_wkv6_reference

from _recompute import check_recompute

F64 = torch.float64


def make_inputs(b, t, h, n, decay=(0.0, 1.0), dtype=F64, seed=0):
    """logd uniform in -[lo, hi] per token and channel (the model's -exp(w))."""
    g = torch.Generator().manual_seed(seed)
    r, k, v = (torch.randn(b, t, h, n, generator=g, dtype=F64) for _ in range(3))
    lo, hi = decay
    logd = -(lo + (hi - lo) * torch.rand(b, t, h, n, generator=g, dtype=F64))
    u = torch.randn(h, n, generator=g, dtype=F64)
    return [x.to(dtype) for x in (r, k, v, logd, u)]


def rel_err(a, b):
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


def rows_direct(r, k, v, logd, u, rows):
    """Output rows straight from DESIGN.md §4 (float64): products of d over the tokens strictly between n and t."""
    r, k, v, logd, u = (x.double() for x in (r, k, v, logd, u))
    t_len = r.shape[1]
    out = []
    for t in rows:
        acc = torch.einsum("bhj,hj,bhj,bhi->bhi", r[:, t], u, k[:, t], v[:, t])
        # log of prod_{n<m<t} d_m for n < t (suffix sums) and of prod_{t<m<n} d_m for n > t (prefix sums)
        zero = torch.zeros_like(logd[:, :1])
        before = torch.cat([logd[:, 1:t].flip(1).cumsum(1).flip(1), zero], 1) if t > 0 else logd[:, :0]
        after = torch.cat([zero, logd[:, t + 1:-1].cumsum(1)], 1) if t < t_len - 1 else logd[:, :0]
        for lo, hi, dec in ((0, t, before), (t + 1, t_len, after)):
            acc = acc + torch.einsum("bhj,bnhj,bnhi->bhi", r[:, t], torch.exp(dec) * k[:, lo:hi], v[:, lo:hi])
        out.append(acc)
    return torch.stack(out, 1)


def test_naive_matches_definition():
    args = make_inputs(2, 9, 2, 3, decay=(0.0, 2.0))
    rows = list(range(9))
    torch.testing.assert_close(bi_wkv6_naive(*args), rows_direct(*args, rows))


@pytest.mark.parametrize("t", [1, 2, 3, 15, 16, 17, 33, 100])
@pytest.mark.parametrize("decay", [(0.0, 1e-3), (0.0, 1.0), (20.0, 30.0)])
@pytest.mark.parametrize("chunk", [4, 64])
def test_reference_matches_naive_float64(t, decay, chunk):
    args = make_inputs(2, t, 2, 5, decay=decay, seed=t)
    torch.testing.assert_close(bi_wkv6_reference(*args, chunk=chunk), bi_wkv6_naive(*args), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("t", [7, 64, 100])
@pytest.mark.parametrize("decay", [(0.0, 1e-4), (0.0, 2.0), (25.0, 30.0)])
def test_fp32_close_to_float64(t, decay):
    args = make_inputs(1, t, 3, 8, decay=decay, seed=t)
    y32 = bi_wkv6(*(x.float() for x in args), backend="reference")
    assert y32.dtype == torch.float32
    assert rel_err(y32, bi_wkv6_naive(*args)) < 1e-6


def test_fp32_mixed_strong_and_weak_decay():
    """Huge decays early in a chunk followed by tiny ones: relative decays must not lose digits (no A - A)."""
    r, k, v, logd, u = make_inputs(1, 64, 2, 8, decay=(0.0, 1e-3), seed=5)
    logd[:, :20] = -30.0
    y32 = bi_wkv6(*(x.float() for x in (r, k, v, logd, u)), backend="reference")
    assert rel_err(y32, bi_wkv6_naive(r, k, v, logd, u)) < 1e-6


@pytest.mark.parametrize("dtype,tol", [(torch.bfloat16, 1e-2), (torch.float16, 2e-3)])
def test_half_inputs_accumulate_in_fp32(dtype, tol):
    args = make_inputs(2, 40, 2, 8, decay=(0.0, 1.0), dtype=dtype)
    y = bi_wkv6(*args, backend="reference")
    assert y.dtype == dtype
    assert rel_err(y, bi_wkv6_naive(*(x.double() for x in args))) < tol


@pytest.mark.parametrize("t,chunk,decay", [(1, 64, (0.0, 1.0)), (7, 2, (0.0, 1.0)), (9, 4, (0.0, 3.0)),
                                           (6, 4, (20.0, 30.0))])
def test_gradcheck(t, chunk, decay):
    args = [x.requires_grad_() for x in make_inputs(1, t, 2, 3, decay=decay, seed=t)]
    fn = lambda *a: bi_wkv6_reference(*a, chunk=chunk)  # noqa: E731
    assert torch.autograd.gradcheck(fn, args)


def test_gradients_match_naive():
    base = make_inputs(2, 37, 2, 4, decay=(0.0, 2.0), seed=1)
    gy = torch.randn(2, 37, 2, 4, dtype=F64)
    grads = []
    for fn in (lambda *a: bi_wkv6_reference(*a, chunk=8), bi_wkv6_naive):
        args = [x.clone().requires_grad_() for x in base]
        (fn(*args) * gy).sum().backward()
        grads.append([a.grad for a in args])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("decay", [(0.0, 1e-3), (0.0, 1.0), (20.0, 30.0)])
def test_fp32_gradients_close_to_float64(decay):
    """Also the log-decay gradient, which is tiny for strong decays: no O(1) terms may cancel in fp32."""
    base = make_inputs(1, 150, 2, 8, decay=decay, seed=2)
    base[3][:, 40:50] = -30.0
    gy = torch.randn(1, 150, 2, 8, dtype=F64)
    grads = []
    for dt in (F64, torch.float32):
        args = [x.to(dt).detach().requires_grad_() for x in base]
        (bi_wkv6(*args, backend="reference") * gy.to(dt)).sum().backward()
        grads.append([a.grad for a in args])
    for name, a, b in zip(("r", "k", "v", "logd", "u"), grads[1], grads[0]):
        assert rel_err(a, b) < 2e-6, name


def test_long_sequence_4096_tokens():
    args = [x.requires_grad_() for x in make_inputs(1, 4096, 2, 4, decay=(0.0, 0.05), dtype=torch.float32)]
    y = bi_wkv6(*args, backend="reference")
    rows = [0, 63, 64, 2000, 4095]
    assert rel_err(y[:, rows], rows_direct(*args, rows)) < 1e-6
    y.square().sum().backward()
    assert all(torch.isfinite(a.grad).all() for a in args)


# ---------------------------------------------------------------- fixtures of the original CUDA kernel

@pytest.mark.parametrize("case", ["T16", "T50"])
def test_fixture_forward_backward(load_fixture, case):
    e = load_fixture("kernels_io.pt")["v6"][case]
    i, o = e["inputs"], e["outputs"]
    h, n = i["u"].shape
    r, k, v, w = (i[name].reshape(1, -1, h, n).clone().requires_grad_() for name in ("r", "k", "v", "w"))
    u = i["u"].clone().requires_grad_()
    y = bi_wkv6(r, k, v, -torch.exp(w), u, backend="reference")  # the file's w is raw: decay = exp(-exp(w))
    assert rel_err(y.reshape(o["y"].shape), o["y"]) < 2e-6
    (y.reshape(i["gy"].shape) * i["gy"]).sum().backward()
    for name, t in (("gr", r), ("gk", k), ("gv", v), ("gw", w), ("gu", u)):
        assert rel_err(t.grad.reshape(o[name].shape), o[name]) < 3e-6, name


# ---------------------------------------------------------------- input validation

def test_bad_inputs():
    r, k, v, logd, u = make_inputs(1, 5, 2, 4, dtype=torch.float32)
    with pytest.raises(ValueError, match="logd has shape"):
        bi_wkv6(r, k, v, logd[:, :4], u)
    with pytest.raises(ValueError, match="u has shape"):
        bi_wkv6(r, k, v, logd, u.flatten())
    with pytest.raises(ValueError, match=r"\(B, T, H, N\)"):
        bi_wkv6(r[0], k[0], v[0], logd[0], u)
    with pytest.raises(ValueError, match="T=0"):
        bi_wkv6(r[:, :0], k[:, :0], v[:, :0], logd[:, :0], u)
    with pytest.raises(TypeError, match="dtype"):
        bi_wkv6(r, k.int(), v, logd, u)
    with pytest.raises(ValueError, match="device"):
        bi_wkv6(r, k, v, logd, u.to("meta"))
    with pytest.raises(ValueError, match="backend"):
        bi_wkv6(r, k, v, logd, u, backend="fast")


@pytest.mark.parametrize("grad", [False, True])
def test_shape_tracing_under_fake_tensor_mode(grad):
    """FakeTensorMode (shape-only tracing, as memory estimators use) runs the op: no branch reads the decays."""
    from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode
    with FakeTensorMode():
        args = [x.requires_grad_(grad) for x in make_inputs(2, 37, 2, 4, dtype=torch.float32)]
        y = bi_wkv6(*args)
        assert isinstance(y, FakeTensor) and y.shape == (2, 37, 2, 4) and y.dtype == torch.float32
        if grad:
            grads = torch.autograd.grad(y.sum(), args)
            assert [g.shape for g in grads] == [a.shape for a in args]


def test_autocast_region_keeps_fp32_accumulation():
    args = make_inputs(1, 70, 2, 8, dtype=torch.float32)
    plain = bi_wkv6(*args, backend="reference")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = bi_wkv6(*args, backend="reference")
    assert inside.dtype == torch.float32
    torch.testing.assert_close(inside, plain, rtol=0, atol=0)


def test_zero_decay_minus_inf_log():
    """logd = -inf (a decay of exactly 0) cuts the sequence; no NaN from inf - inf, gradients finite."""
    r, k, v, logd, u = make_inputs(1, 40, 2, 3, decay=(0.0, 1.0))
    logd[:, 17] = -float("inf")
    clipped = logd.clamp(min=-800.0)  # exp(-800) == 0 in float64 as well
    args = [x.requires_grad_() for x in (r, k, v, logd, u)]
    y = bi_wkv6_reference(*args, chunk=8)
    torch.testing.assert_close(y, bi_wkv6_naive(r, k, v, clipped, u), rtol=1e-12, atol=1e-12)
    y.sum().backward()
    assert all(torch.isfinite(a.grad).all() for a in args)


def test_reference_recompute_keeps_only_the_inputs(monkeypatch):
    """With ``recompute`` the backward recomputes the chunked intermediates: autograd keeps the inputs (~55 planes of
    r's size without), and the gradients are those of the stored graph. The default recomputes from
    ``RECOMPUTE_MIN_NUMEL`` elements of r on (below it the extra forward costs more than the memory is worth)."""
    from vision_rwkv.ops.bi_wkv6 import reference as ref6

    base = make_inputs(2, 45, 2, 8, decay=(0.0, 2.0), dtype=torch.float32, seed=2)
    check_recompute(monkeypatch, ref6, base, base[0].numel(),
                    lambda a, rc: bi_wkv6_reference(*a, recompute=rc), lambda a: bi_wkv6(*a, backend="reference"))


def test_chunk_must_be_power_of_two():
    with pytest.raises(ValueError, match="power of two"):
        bi_wkv6_reference(*make_inputs(1, 5, 1, 2), chunk=12)


@pytest.mark.parametrize("shape", [(0, 5, 2, 4), (1, 5, 0, 4), (1, 5, 2, 0)])
def test_empty_batch_head_or_channel_gives_an_empty_output(shape):
    b, t, h, n = shape
    r, k, v, logd = (torch.randn(shape, requires_grad=True) for _ in range(4))
    u = torch.randn(h, n, requires_grad=True)
    y = bi_wkv6(r, k, v, logd, u)
    assert y.shape == shape
    grads = torch.autograd.grad(y.sum(), (r, k, v, logd, u))
    assert all(g.shape == x.shape and not g.any() for g, x in zip(grads, (r, k, v, logd, u)))


def test_compiles_without_graph_breaks_in_inference_past_one_chunk():
    """T > 64 without gradients takes the chunked reference's in-place state path in eager mode; traced, the
    states are built functionally (dynamo refuses out= views)."""
    r, k, v, logd, u = make_inputs(1, 65, 1, 4, dtype=torch.float32)
    fn = torch.compile(lambda *a: bi_wkv6(*a), backend="eager", fullgraph=True)
    torch.testing.assert_close(fn(r, k, v, logd, u), bi_wkv6(r, k, v, logd, u), rtol=1e-5, atol=1e-5)


def test_chunk_states_closed_form_matches_the_loop():
    """The loop-free chunk states (used while exporting) equal the recurrence, strong and -1e4 decays included."""
    from vision_rwkv.ops.bi_wkv6.reference import _chunk_states, _chunk_states_closed
    torch.manual_seed(0)
    upd = torch.randn(3, 9, 4, 4, dtype=torch.float64)
    log_dec = -torch.rand(3, 9, 4, dtype=torch.float64) * torch.tensor([0.1, 3.0, 30.0, 1e4], dtype=torch.float64)
    torch.testing.assert_close(_chunk_states_closed(upd, log_dec), _chunk_states(upd, log_dec.exp()[..., None]),
                               rtol=1e-12, atol=1e-12)


def test_exports_past_one_chunk_with_a_dynamic_batch():
    """torch.export of the reference at T > 64 (chunk states without a loop, no size-dependent recompute choice)
    matches eager at other batch sizes, also where it records autograd."""
    class Wkv(torch.nn.Module):
        def forward(self, r, k, v, logd):
            return bi_wkv6(r, k, v, logd, self.u)
    mod = Wkv()
    mod.u = torch.nn.Parameter(torch.randn(2, 4))
    batch = torch.export.Dim("b", min=1, max=1 << 16)
    inputs = tuple(make_inputs(2, 97, 2, 4, dtype=torch.float32)[:4])
    program = torch.export.export(mod, inputs, dynamic_shapes=[{0: batch}] * 4)
    other = make_inputs(3, 97, 2, 4, dtype=torch.float32)[:4]
    torch.testing.assert_close(program.module()(*other), mod(*other), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("t", [7, 40])  # (the CPU direct form, and the scan form under autograd's decay bound)
def test_one_float64_argument_computes_in_float64(t):
    """Mixed fp32 / float64 arguments compute in float64 whichever argument is float64 (the dtype came from r: a
    float64 output with fp32 accuracy, 3e-6 off in the audit)."""
    args = make_inputs(2, t, 2, 4, decay=(0.0, 3.0), seed=3)
    want = bi_wkv6(*args, backend="reference")
    for i in range(5):
        mixed = [a.float() if j == i else a for j, a in enumerate(args)]
        got = bi_wkv6(*mixed, backend="reference")
        rounded = bi_wkv6(*[a.float().double() if j == i else a for j, a in enumerate(args)], backend="reference")
        assert got.dtype == (torch.float32 if i == 2 else F64), i  # (the output follows v)
        assert (got.double() - rounded).abs().max() < (1e-5 if i == 2 else 1e-12), i  # float64 on the rounded input
    assert (want - rounded).abs().max() > 0  # (the rounding is visible: the check above can fail)
