"""Fused-op references and dispatch (CPU): the references compute exactly the model formulas, the public ops
pick the reference on CPU, clear errors name bad inputs, and the models' fused switch is off on CPU."""
import math

import pytest
import torch
import torch.nn.functional as F

from vision_rwkv.models._layers import lerp_mix
from vision_rwkv.ops import fused, q_shift
from vision_rwkv.ops.fused import reference as ref


def _rand(*shape, dtype=torch.float64):
    return torch.randn(*shape, dtype=dtype)


@pytest.mark.parametrize("shape,head_size", [((2, 3, 5, 7), None), ((1, 4, 4, 24), 8), ((1, 1, 6, 3), None)])
def test_token_shift_mix_reference_is_lerp_and_ddlerp(shape, head_size):
    b, h, w, c = shape
    x = _rand(b, h * w, c)
    mix = torch.rand(3, c, dtype=torch.float64)
    out = fused.shift_lerp(x, (h, w), mix, head_size)
    shifted = q_shift(x, (h, w), head_size)
    for i in range(3):
        torch.testing.assert_close(out[i], lerp_mix(x, shifted, mix[i]))
    m = _rand(3, b, h * w, c)
    dd = fused.token_shift_mix(x, (h, w), mix, m, head_size)
    for i in range(3):
        torch.testing.assert_close(dd[i], x + (shifted - x) * (mix[i] + m[i]))


def test_token_shift_mix_reference_gradcheck():
    x = _rand(1, 6, 5).requires_grad_()
    a = torch.rand(2, 5, dtype=torch.float64).requires_grad_()
    m = _rand(2, 1, 6, 5).requires_grad_()
    assert torch.autograd.gradcheck(lambda *t: ref.token_shift_mix_reference(t[0], (2, 3), t[1], t[2], None),
                                    (x, a, m))


def test_elementwise_references():
    r, y = _rand(4, 9), _rand(4, 9)
    torch.testing.assert_close(fused.sigmoid_mul(r, y), torch.sigmoid(r) * y)
    torch.testing.assert_close(fused.relu_square(r), torch.relu(r) ** 2)
    w0, z = _rand(9), _rand(2, 4, 9)
    torch.testing.assert_close(fused.decay_logd(w0, z), -torch.exp(w0 + z))
    # bf16 activations: math in fp32, result in the promoted dtype
    rb, yb = r.bfloat16(), y.float()
    assert fused.sigmoid_mul(rb, yb).dtype == torch.float32
    assert fused.relu_square(rb).dtype == torch.bfloat16


def test_group_norm_mul_reference_matches_module():
    y, g = _rand(2, 5, 12), _rand(2, 5, 12)
    gn = torch.nn.GroupNorm(3, 12, eps=1e-5).double()
    with torch.no_grad():
        gn.weight.normal_()
        gn.bias.normal_()
    expect = gn(y.reshape(10, 12)).reshape(2, 5, 12) * F.silu(g)
    out = fused.group_norm_mul(y, g, 3, gn.weight, gn.bias, 1e-5, gate_act="silu")
    torch.testing.assert_close(out, expect)
    out_bf16 = fused.group_norm_mul(y.float(), g.float(), 3, gn.weight.float(), gn.bias.float(),
                                    out_dtype=torch.bfloat16)
    assert out_bf16.dtype == torch.bfloat16
    assert math.isfinite(out_bf16.float().sum().item())


def test_cpu_uses_reference_and_models_stay_plain(monkeypatch):
    x = torch.randn(1, 4, 8)
    monkeypatch.delenv("VRWKV_BACKEND", raising=False)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert not fused.fused_enabled(x)
    assert fused._resolve("x", x.device, None) == "reference"
    with pytest.raises(RuntimeError, match="needs CUDA tensors"):
        fused.sigmoid_mul(x, x, backend="triton")
    monkeypatch.setenv("VRWKV_BACKEND", "triton")  # without the interpreter CPU stays on the reference
    assert not fused.fused_enabled(x)
    assert fused._resolve("x", x.device, None) == "reference"
    monkeypatch.setenv("VRWKV_BACKEND", "fast")
    with pytest.raises(ValueError, match="VRWKV_BACKEND"):
        fused.relu_square(x)


def test_compute_dtype_follows_autocast():
    x = torch.randn(2, 3)
    assert fused.compute_dtype(x) == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert fused.compute_dtype(x) == torch.bfloat16


def test_bad_inputs_name_the_problem():
    x = torch.randn(2, 12, 8)
    with pytest.raises(ValueError, match="grid_size"):
        fused.shift_lerp(x, (3, 5), torch.rand(3, 8))
    with pytest.raises(ValueError, match="head_size"):
        fused.shift_lerp(x, (3, 4), torch.rand(3, 8), head_size=3)
    with pytest.raises(ValueError, match=r"a must be \(M, C\)"):
        fused.token_shift_mix(x, (3, 4), torch.rand(3, 7))
    with pytest.raises(ValueError, match="m has shape"):
        fused.token_shift_mix(x, (3, 4), torch.rand(2, 8), torch.rand(3, 2, 12, 8))
    # the interpolation weights as separate vectors, and the split groups
    with pytest.raises(ValueError, match=r"a\[1\] has 7 elements"):
        fused.token_shift_mix(x, (3, 4), (torch.rand(8), torch.rand(1, 1, 7)))
    with pytest.raises(ValueError, match="1..8 vectors, got 9"):
        fused.token_shift_mix(x, (3, 4), [torch.rand(8)] * 9)
    with pytest.raises(TypeError, match=r"a\[0\] must be a torch.Tensor"):
        fused.shift_lerp(x, (3, 4), (0.5, torch.rand(8)))
    with pytest.raises(ValueError, match="group sizes summing to the 3 mixed inputs"):
        fused.token_shift_mix(x, (3, 4), torch.rand(3, 8), split=(2, 2))
    with pytest.raises(ValueError, match="w2 must be"):
        fused.token_shift_mix_lora(x, (3, 4), (torch.rand(8),) * 2, torch.rand(2, 12, 48), torch.rand(3, 16, 8))
    with pytest.raises(TypeError, match="dtype torch.int64"):
        fused.relu_square(torch.arange(4))
    with pytest.raises(ValueError, match="num_groups"):
        fused.group_norm_mul(x, x, 3, torch.ones(8), torch.zeros(8))
    with pytest.raises(ValueError, match="gate_act"):
        fused.group_norm_mul(x, x, 2, torch.ones(8), torch.zeros(8), gate_act="gelu")
    with pytest.raises(ValueError, match="y has shape"):
        fused.sigmoid_mul(x, x[:, :3])
    with pytest.raises(ValueError, match="unknown backend"):
        fused.sigmoid_mul(x, x, backend="cuda")


def test_mix_linear_bad_inputs_name_the_problem():
    x, w, a = torch.randn(2, 12, 8), torch.randn(5, 8), torch.rand(8)
    with pytest.raises(ValueError, match="grid_size"):
        fused.mix_linear(x, (3, 5), a, w)
    with pytest.raises(ValueError, match="a has shape"):
        fused.mix_linear(x, (3, 4), torch.rand(1, 8), w)
    with pytest.raises(ValueError, match="weight must be"):
        fused.mix_linear(x, (3, 4), a, torch.randn(5, 7))
    with pytest.raises(ValueError, match="act must be one of"):
        fused.mix_linear(x, (3, 4), a, w, act="gelu")
    with pytest.raises(ValueError, match="both h and w2"):
        fused.mix_linear(x, (3, 4), a, w, h=torch.randn(2, 12, 16))
    with pytest.raises(ValueError, match="h has shape"):
        fused.mix_linear(x, (3, 4), a, w, h=torch.randn(2, 12, 8), w2=torch.randn(16, 8))
    with pytest.raises(ValueError, match="w2 must be"):
        fused.mix_linear(x, (3, 4), a, w, h=torch.randn(2, 12, 16), w2=torch.randn(16, 5))
    with pytest.raises(ValueError, match="only of it"):
        fused.mix_linear(x, (3, 4), a, w, act="sigmoid_mul")
    with pytest.raises(ValueError, match="only of it"):
        fused.mix_linear(x, (3, 4), a, w, y=torch.randn(2, 12, 5))
    with pytest.raises(ValueError, match="y has shape"):
        fused.mix_linear(x, (3, 4), a, w, act="sigmoid_mul", y=torch.randn(2, 12, 4))


def test_mix_linear_group_bad_inputs_name_the_problem():
    x, ws, a = torch.randn(2, 12, 8), [torch.randn(5, 8), torch.randn(5, 8)], torch.rand(2, 8)
    with pytest.raises(ValueError, match="weights is empty"):
        fused.mix_linear_group(x, (3, 4), a, [])
    with pytest.raises(ValueError, match="grid_size"):
        fused.mix_linear_group(x, (3, 5), a, ws)
    with pytest.raises(ValueError, match="a has 8 rows for 2 weights"):
        fused.mix_linear_group(x, (3, 4), torch.rand(8), ws)
    with pytest.raises(ValueError, match=r"a\[1\] has shape"):
        fused.mix_linear_group(x, (3, 4), [a[0], torch.rand(7)], ws)
    with pytest.raises(ValueError, match=r"weights\[1\]: weight must be"):
        fused.mix_linear_group(x, (3, 4), a, [ws[0], torch.randn(5, 7)])
    with pytest.raises(ValueError, match="one N"):
        fused.mix_linear_group(x, (3, 4), a, [ws[0], torch.randn(6, 8)])
    with pytest.raises(ValueError, match="both h and w2"):
        fused.mix_linear_group(x, (3, 4), a, ws, w2=torch.randn(2, 16, 8))
    with pytest.raises(ValueError, match="w2 must be"):
        fused.mix_linear_group(x, (3, 4), a, ws, h=torch.randn(2, 12, 32), w2=torch.randn(3, 16, 8))
    with pytest.raises(ValueError, match="h has shape"):
        fused.mix_linear_group(x, (3, 4), a, ws, h=torch.randn(2, 12, 16), w2=torch.randn(2, 16, 8))
    with pytest.raises(TypeError, match=r"weights\[0\]"):
        fused.mix_linear_group(x, (3, 4), a, [ws[0].long(), ws[1]])


def test_mix_linear_group_is_one_mix_linear_per_projection():
    """Each output of the group is the single-projection op with that projection's row of a and LoRA slice."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 12, 16, generator=g, dtype=torch.float64)
    a = torch.rand(3, 16, generator=g, dtype=torch.float64)
    ws = [torch.randn(6, 16, generator=g, dtype=torch.float64) for _ in range(3)]
    h = torch.randn(2, 12, 3 * 4, generator=g, dtype=torch.float64)
    w2 = torch.randn(3, 4, 16, generator=g, dtype=torch.float64)
    for p, out in enumerate(fused.mix_linear_group(x, (3, 4), a, ws, one_minus=True)):
        torch.testing.assert_close(out, fused.mix_linear(x, (3, 4), a[p], ws[p], one_minus=True))
    for p, out in enumerate(fused.mix_linear_group(x, (3, 4), a, ws, 8, h, w2)):
        torch.testing.assert_close(out, fused.mix_linear(x, (3, 4), a[p], ws[p], 8, h[..., 4 * p:4 * p + 4], w2[p]))


def test_mix_linear_reference_is_the_shift_pass_and_the_projection():
    """The reference equals the interpolation op's output (v4 lerp / v6 ddlerp with the LoRA offset) fed to the
    projection and its activation (float64)."""
    g = torch.Generator().manual_seed(0)
    x, a = torch.randn(2, 12, 16, generator=g, dtype=torch.float64), torch.rand(16, generator=g, dtype=torch.float64)
    w, y = torch.randn(6, 16, generator=g, dtype=torch.float64), torch.randn(2, 12, 6, generator=g, dtype=torch.float64)
    h = torch.randn(2, 12, 4, generator=g, dtype=torch.float64)
    w2 = torch.randn(4, 16, generator=g, dtype=torch.float64)
    lerp = fused.shift_lerp(x, (3, 4), a[None])[0]
    torch.testing.assert_close(fused.mix_linear(x, (3, 4), a, w, one_minus=True, act="sigmoid_mul", y=y),
                               torch.sigmoid(lerp @ w.t()) * y)
    ddlerp = fused.token_shift_mix_lora(x, (3, 4), a[None], h, w2[None], head_size=8)[0]
    torch.testing.assert_close(fused.mix_linear(x, (3, 4), a, w, 8, h, w2, act="relu_square"),
                               torch.relu(ddlerp @ w.t()) ** 2)
    torch.testing.assert_close(fused.mix_linear(x, (3, 4), a, w, 8, h, w2, act="tanh"), torch.tanh(ddlerp @ w.t()))


def test_gemm_weight_grad_comes_in_the_weights_layout():
    """The GEMM-epilogue kernels' dW: for a LoRA matrix passed transposed (``w1.t()``) it comes in that transposed
    layout, so the (K, N) parameter's gradient needs no layout copy; the fake kernels (torch.compile) promise the
    same strides."""
    pytest.importorskip("triton")
    from vision_rwkv.ops.fused.linear_triton import _like_weight, _weight_grad

    x = torch.randn(2, 5, 6, dtype=torch.float64)
    g = torch.randn(10, 4, dtype=torch.float64)
    p = torch.randn(6, 4, dtype=torch.float64)  # (K, N), as time_decay_w1
    for w in (p.t(), p.t().contiguous(), torch.randn(1, 6, dtype=torch.float64).t().t()):
        gx, gw = _weight_grad(g[:, :w.shape[0]], x.reshape(10, 6), x, w)
        assert gw.shape == w.shape and gw.stride() == _like_weight(w).stride() == w.stride()
        torch.testing.assert_close(gw, g[:, :w.shape[0]].t() @ x.reshape(10, 6))
        torch.testing.assert_close(gx, (g[:, :w.shape[0]] @ w).view(x.shape))
    _, gw = _weight_grad(g, x.reshape(10, 6), x, p.t())
    assert gw.t().is_contiguous()  # the parameter p's gradient, as autograd's transpose hands it on


def test_add_norm_inplace_writes_x_and_refuses_autograd():
    """add_norm(inplace=True): s is x, updated in place, equal to the functional result; refused with autograd
    recording or a non-contiguous x (named in the error)."""
    torch.manual_seed(0)
    x, y = torch.randn(2, 5, 8), torch.randn(2, 5, 8)
    w, b, gamma = torch.randn(8), torch.randn(8), torch.randn(8)
    s_ref, n_ref = fused.add_norm(x, y, gamma, w, b)
    x_own = x.clone()
    s, n = fused.add_norm(x_own, y, gamma, w, b, inplace=True)
    assert s is x_own
    torch.testing.assert_close(s, s_ref)
    torch.testing.assert_close(n, n_ref)
    with pytest.raises(ValueError, match="inplace is for eager inference.*autograd recording=True"):
        fused.add_norm(x.clone().requires_grad_(), y, gamma, w, b, inplace=True)
    with pytest.raises(ValueError, match="contiguous=False"):
        fused.add_norm(x.transpose(0, 1), y.transpose(0, 1), gamma, w, b, inplace=True)


def test_residual_norm_carries_drop_path_factors():
    """ResidualNorm.sample_scale reaches add_norm (apply), rules out the GEMM epilogues (fusable) and is checked
    against the batch (check)."""
    torch.manual_seed(0)
    x, y = torch.randn(3, 4, 8), torch.randn(3, 4, 8)
    w, b, gamma = torch.randn(8), torch.randn(8), torch.randn(8)
    scale = torch.tensor([0.0, 2.0, 2.0])
    res = fused.ResidualNorm(x, gamma, w, b, 1e-5, False, None, False, scale)
    s, n = res.apply(y)
    s_ref, n_ref = fused.add_norm(x, y, gamma, w, b, sample_scale=scale)
    torch.testing.assert_close(s, s_ref)
    torch.testing.assert_close(n, n_ref)
    torch.testing.assert_close(s[0], x[0])  # the dropped sample keeps its residual
    assert res._replace(sample_scale=None).fusable(8) and not res.fusable(8)
    res.check("op", (3, 4, 8))
    with pytest.raises(ValueError, match=r"residual.sample_scale has shape \(2,\), expected \(3,\)"):
        res._replace(sample_scale=torch.ones(2)).check("op", (3, 4, 8))


def test_weight_vectors_and_split_groups_on_the_reference_path():
    """Interpolation weights passed as separate vectors (any shape with C elements) give the stacked (M, C) result;
    ``split`` groups are views of consecutive planes (a group of one as a (B, N, C) plane); gradients reach each
    vector."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 12, 8, generator=g)
    vecs = [torch.rand(1, 1, 8, generator=g).requires_grad_() for _ in range(3)]
    stacked = torch.cat([v.reshape(1, 8) for v in vecs])
    ref = fused.token_shift_mix(x, (3, 4), stacked.detach())
    out = fused.token_shift_mix(x, (3, 4), vecs)
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    first, rest = fused.token_shift_mix(x, (3, 4), vecs, split=(1, 2))
    assert first.shape == (2, 12, 8) and rest.shape == (2, 2, 12, 8)
    torch.testing.assert_close(torch.cat([first[None], rest]), ref, rtol=0, atol=0)
    (first.sum() + 2 * rest[1].sum()).backward()
    assert vecs[0].grad.shape == (1, 1, 8) and vecs[1].grad.abs().sum() == 0 and vecs[2].grad.abs().sum() > 0
