"""The RWKV-6 bidirectional WKV's CPU form (``bi_wkv6/direct.py``) vs the naive float64 form, forward and gradients,
and when the reference takes it."""
import pytest
import torch

from vision_rwkv.ops import bi_wkv6, bi_wkv6_naive
from vision_rwkv.ops.bi_wkv6 import direct as direct6
from vision_rwkv.ops.bi_wkv6 import reference as ref6
from vision_rwkv.ops.bi_wkv6.direct import bi_wkv6_direct

from test_bi_wkv6 import make_inputs, rel_err


@pytest.mark.parametrize("b,t,h,n", [(1, 1, 1, 4), (2, 2, 3, 5), (1, 7, 2, 8), (2, 33, 3, 6), (1, 100, 2, 8),
                                     (3, 200, 1, 3)])
@pytest.mark.parametrize("decay", [(0.0, 1e-3), (0.0, 1.0), (1.8, 1.87)])
@pytest.mark.parametrize("chunk", [4, 32])
def test_matches_naive(b, t, h, n, decay, chunk):
    """float64 to rounding, fp32 within 1e-6 of the largest output; T not a multiple of the chunk, one token,
    batch 1, odd head sizes; decays up to a total of ~-60 over 32-token chunks."""
    args = make_inputs(b, t, h, n, decay=decay, seed=t + n)
    naive = bi_wkv6_naive(*args)
    y = bi_wkv6_direct(*args, chunk=chunk)
    assert y.dtype == torch.float64 and y.is_contiguous()
    torch.testing.assert_close(y, naive, rtol=1e-12, atol=1e-12)
    y32 = bi_wkv6_direct(*(x.float() for x in args), chunk=chunk)
    assert y32.dtype == torch.float32 and y32.is_contiguous()
    assert rel_err(y32, naive) < 1e-6


def test_chunks_halve_for_strong_decays():
    """Decays of ~5 per token: 32- and 16-token chunks would need factors up to e^160 / e^80, 8-token ones e^40."""
    args = make_inputs(2, 50, 2, 8, decay=(4.9, 5.0), seed=3)
    seen = []
    cum = direct6._chunk_log_decays
    direct6_calls = lambda *a: seen.append(cum(*a)) or seen[-1]  # noqa: E731
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(direct6, "_chunk_log_decays", direct6_calls)
        y = bi_wkv6_direct(*args, chunk=32)
    assert seen[0].shape[1] == 8
    torch.testing.assert_close(y, bi_wkv6_naive(*args), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("decay", [(20.0, 30.0), (float("nan"), float("nan"))])
def test_declines_when_no_chunk_fits(decay):
    """Not even 4-token chunks keep e^{-A} <= e^60 (or the decays are NaN): None, and the reference's binary tree
    computes the result."""
    args = make_inputs(1, 20, 2, 4, decay=decay, seed=1)
    assert bi_wkv6_direct(*args) is None


def test_mixed_strong_and_weak_decays_fp32():
    """Huge decays early in the sequence, tiny ones after: the chunks shrink where needed, no digits lost."""
    r, k, v, logd, u = make_inputs(1, 64, 2, 8, decay=(0.0, 1e-3), seed=5)
    logd[:, :20] = -12.0
    y = bi_wkv6_direct(*(x.float() for x in (r, k, v, logd, u)))
    assert y is not None
    assert rel_err(y, bi_wkv6_naive(r, k, v, logd, u)) < 1e-6


@pytest.mark.parametrize("dtype,tol", [(torch.bfloat16, 1e-2), (torch.float16, 2e-3)])
def test_half_inputs(dtype, tol):
    args = make_inputs(2, 40, 2, 8, decay=(0.0, 1.0), dtype=dtype)
    y = bi_wkv6_direct(*args)
    assert y.dtype == dtype
    assert rel_err(y, bi_wkv6_naive(*(x.double() for x in args))) < tol


def test_non_contiguous_inputs():
    """Head-interleaved slices of a wider tensor (the model's views of (B, T, C) projections are similar)."""
    r, k, v, logd, u = make_inputs(2, 21, 4, 6, decay=(0.0, 1.0), seed=2)
    sl = [x[:, :, ::2] for x in (r, k, v, logd)]
    assert not sl[0].is_contiguous()
    torch.testing.assert_close(bi_wkv6_direct(*sl, u[::2]), bi_wkv6_naive(*sl, u[::2]), rtol=1e-12, atol=1e-12)


def test_reference_routes_cpu_calls(monkeypatch):
    """The reference computes eager CPU calls here (the binary tree not run): inference (also under CPU autocast, in
    fp32) and, with decays down to e^-2 per token, training; the binary tree takes training calls with stronger
    decays and any call whose decays are too strong for the split factors."""
    calls, tree = [], []
    monkeypatch.setattr(ref6, "bi_wkv6_direct", lambda *a, **kw: calls.append(1) or bi_wkv6_direct(*a, **kw))
    apply = ref6._IntraChunk.apply
    monkeypatch.setattr(ref6._IntraChunk, "apply", lambda *a: tree.append(1) or apply(*a))

    def run(args, expect_tree, grad=False):
        calls.clear(), tree.clear()
        args = [x.clone().requires_grad_(grad) for x in args]
        naive = bi_wkv6_naive(*(x.detach().double() for x in args))
        y = bi_wkv6(*args, backend="reference")
        assert rel_err(y.detach(), naive) < 1e-6
        assert calls and bool(tree) == expect_tree
        return y

    weak = make_inputs(2, 70, 2, 8, decay=(0.0, 1.0), dtype=torch.float32, seed=4)
    run(weak, expect_tree=False)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert run(weak, expect_tree=False).dtype == torch.float32
    run(weak, expect_tree=False, grad=True)
    strong = make_inputs(1, 20, 2, 4, decay=(20.0, 30.0), dtype=torch.float32, seed=1)
    run(strong, expect_tree=True)
    medium = make_inputs(1, 40, 2, 4, decay=(2.0, 3.0), dtype=torch.float32, seed=1)
    run(medium, expect_tree=False)
    run(medium, expect_tree=True, grad=True)


@pytest.mark.parametrize("t,chunk,decay", [(1, 32, (0.0, 1.0)), (7, 4, (0.0, 1.0)), (13, 4, (1.9, 2.0)),
                                           (33, 8, (0.0, 0.1))])
def test_gradcheck(t, chunk, decay):
    """float64 gradients of every input (u included) against finite differences; several chunks each way."""
    args = [x.requires_grad_() for x in make_inputs(2, t, 2, 3, decay=decay, seed=t)]
    assert torch.autograd.gradcheck(lambda *a: bi_wkv6_direct(*a, chunk=chunk, max_decay=2.0), args)


@pytest.mark.parametrize("decay", [(0.0, 1e-3), (0.0, 1.0), (1.9, 2.0)])
@pytest.mark.parametrize("t", [37, 150])
def test_fp32_gradients_close_to_float64(t, decay):
    """fp32 gradients within 2e-6 of the float64 naive form's (relative to each gradient's largest entry), as the
    binary tree's: the log-decay gradient's cancellation stays small up to TRAIN_MAX_DECAY."""
    base = make_inputs(2, t, 2, 8, decay=decay, seed=t)
    gy = torch.randn(2, t, 2, 8, dtype=torch.float64)
    grads = []
    for dt, fn in ((torch.float64, bi_wkv6_naive), (torch.float32, bi_wkv6_direct)):
        args = [x.to(dt).detach().requires_grad_() for x in base]
        (fn(*args) * gy.to(dt)).sum().backward()
        grads.append([a.grad for a in args])
    for name, a, b in zip(("r", "k", "v", "logd", "u"), grads[1], grads[0]):
        assert a.dtype == torch.float32 and rel_err(a, b) < 2e-6, name


def test_max_decay_declines():
    r, k, v, logd, u = make_inputs(1, 30, 2, 4, decay=(0.0, 1.0), seed=6)
    assert bi_wkv6_direct(r, k, v, logd, u, max_decay=2.0) is not None
    logd[0, 17, 1, 2] = -2.01
    assert bi_wkv6_direct(r, k, v, logd, u, max_decay=2.0) is None
    logd[0, 17, 1, 2] = float("nan")
    assert bi_wkv6_direct(r, k, v, logd, u, max_decay=2.0) is None


def test_scan_states_both_directions():
    """S_c = d_{c-1} S_{c-1} + U_{c-1} from the front, R_c = d_{c+1} R_{c+1} + V_{c+1} from the back."""
    g, nc, n = 2, 5, 3
    upd = torch.randn(g, nc, 2 * n, n, dtype=torch.float64)
    dec = torch.rand(g, nc, n, 1, dtype=torch.float64)
    st = direct6._scan_states(upd, dec)
    fwd = torch.zeros(g, n, n, dtype=torch.float64)
    for c in range(nc):
        torch.testing.assert_close(st[:, c, :n], fwd)
        fwd = dec[:, c] * fwd + upd[:, c, :n]
    rev = torch.zeros(g, n, n, dtype=torch.float64)
    for c in reversed(range(nc)):
        torch.testing.assert_close(st[:, c, n:], rev)
        rev = dec[:, c] * rev + upd[:, c, n:]
