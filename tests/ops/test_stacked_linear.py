"""``stacked_linear``: M projections as one batched GEMM, forward and backward vs per-weight ``F.linear``."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from op_recorder import OpRecorder

from vision_rwkv.ops.stacked_linear import stacked_linear


def _inputs(m, lead, c, c_out, seed=0, x_grad=True):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(m, *lead, c, generator=gen, dtype=torch.float64).float().requires_grad_(x_grad)
    ws = [torch.randn(c_out, c, generator=gen).div_(c ** 0.5).requires_grad_() for _ in range(m)]
    return x, ws


@pytest.mark.parametrize("m,lead,c,c_out", [(3, (2, 5), 6, 7), (4, (1, 9), 8, 8), (2, (13,), 5, 3), (1, (3, 2), 4, 4)])
def test_matches_per_weight_linears_forward_and_backward(m, lead, c, c_out):
    x, ws = _inputs(m, lead, c, c_out)
    y = stacked_linear(x, ws)
    assert y.shape == (m, *lead, c_out) and y.dtype == x.dtype
    ref = torch.stack([F.linear(x[i], w) for i, w in enumerate(ws)])
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)
    g = torch.randn(y.shape, generator=torch.Generator().manual_seed(1))
    grads = torch.autograd.grad(y, [x, *ws], g)
    x2, ws2 = _inputs(m, lead, c, c_out)
    ref_grads = torch.autograd.grad(torch.stack([F.linear(x2[i], w) for i, w in enumerate(ws2)]), [x2, *ws2], g)
    for got, want in zip(grads, ref_grads):
        assert torch.isfinite(got).all()
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_weight_gradients_accumulate_without_copies():
    """Each weight gradient is a contiguous slice in the weight's layout: autograd's accumulation takes it as it is
    (autograd's own bmm backward of ``x @ stack(W)^T`` gives transposed views, copied once per weight)."""
    x, ws = _inputs(3, (4, 5), 6, 6)
    y = stacked_linear(x, ws)
    with OpRecorder() as rec:
        y.sum().backward()
    assert rec.ops.count("aten.bmm") == 2, rec.ops
    assert "aten.copy_" not in rec.ops and "aten.clone" not in rec.ops, rec.ops
    for w in ws:
        assert w.grad.is_contiguous() and w.grad.shape == w.shape


def test_only_the_needed_gradients():
    x, ws = _inputs(2, (3,), 4, 5, x_grad=False)
    y = stacked_linear(x, ws)
    gw = torch.autograd.grad(y.sum(), ws)
    torch.testing.assert_close(gw[1], torch.ones(3, 5).t() @ x[1])
    x, ws = _inputs(2, (3,), 4, 5)
    for w in ws:
        w.requires_grad_(False)
    with OpRecorder() as rec:
        gx, = torch.autograd.grad(stacked_linear(x, ws).sum(), [x])
    assert rec.ops.count("aten.bmm") == 2  # the forward's and d x; no weight-gradient GEMM
    torch.testing.assert_close(gx[0], torch.ones(3, 5) @ ws[0])


def test_bf16_autocast_like_linear():
    """Under autocast (bf16 inputs, fp32 weights, as the models call it): bf16 output equal to autocast's F.linear,
    fp32 weight gradients close to autocast's; one stack + one cast of the weights in the forward."""
    x, ws = _inputs(3, (2, 6), 16, 8)
    xb = x.detach().bfloat16().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with OpRecorder() as rec:
            y = stacked_linear(xb, ws)
        ref = torch.stack([F.linear(xb[i], w) for i, w in enumerate(ws)])
    assert rec.ops.count("aten.stack") == 1 and rec.ops.count("aten._to_copy") == 1, rec.ops
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), ref.float(), rtol=1e-2, atol=1e-2)
    g = torch.randn(y.shape).bfloat16()
    got = torch.autograd.grad(y, ws, g)
    want = torch.autograd.grad(ref, ws, g)
    for a, b in zip(got, want):
        assert a.dtype == torch.float32
        torch.testing.assert_close(a, b, rtol=2e-2, atol=2e-2)


def test_no_grad_path():
    x, ws = _inputs(3, (4,), 5, 2)
    with torch.no_grad():
        y = stacked_linear(x, ws)
    assert not y.requires_grad
    torch.testing.assert_close(y, torch.stack([x[i] @ w.t() for i, w in enumerate(ws)]).detach())


def test_given_stack_takes_the_gradient_as_one_tensor():
    """``stacked=`` (a training step's cast_weights output): used as the weight, its gradient one contiguous
    (M, C_out, C) tensor; the weights themselves only give the shapes."""
    x, ws = _inputs(3, (2, 5), 6, 4)
    stacked = torch.stack([w.detach() for w in ws]).requires_grad_()
    y = stacked_linear(x, ws, stacked=stacked)
    torch.testing.assert_close(y, torch.stack([F.linear(x[i], w) for i, w in enumerate(ws)]), rtol=1e-5, atol=1e-5)
    g = torch.randn(y.shape, generator=torch.Generator().manual_seed(5))
    with OpRecorder() as rec:
        gx, gs = torch.autograd.grad(y, [x, stacked], g)
    assert rec.ops.count("aten.bmm") == 2 and "aten.copy_" not in rec.ops, rec.ops
    assert gs.is_contiguous() and all(w.grad is None for w in ws)
    for i in range(3):
        torch.testing.assert_close(gs[i], g[i].reshape(-1, 4).t() @ x[i].reshape(-1, 6), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(gx[i], g[i] @ ws[i].detach(), rtol=1e-5, atol=1e-5)


def test_bad_inputs_raise_clear_errors():
    x, ws = _inputs(3, (4,), 5, 2)
    with pytest.raises(ValueError, match="2 weights for the 3 inputs"):
        stacked_linear(x, ws[:2])
    with pytest.raises(ValueError, match="weight 1 is"):
        stacked_linear(x, [ws[0], torch.randn(3, 5), ws[2]])
    with pytest.raises(ValueError, match=r"\(C_out, 5\)"):
        stacked_linear(x, [torch.randn(2, 4)] * 3)
    with pytest.raises(ValueError, match="must be an"):
        stacked_linear(torch.randn(5), ws)
    with pytest.raises(ValueError, match=r"stacked must be the \(3, 2, 5\) stack"):
        stacked_linear(x, ws, stacked=torch.zeros(3, 5, 2))
    with pytest.raises(ValueError, match="torch.float32, got .* torch.bfloat16"):
        stacked_linear(x, ws, stacked=torch.zeros(3, 2, 5, dtype=torch.bfloat16))
