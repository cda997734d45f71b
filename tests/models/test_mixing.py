"""The mixers shared by the backbones and the RWKV-CLIP text tower (vision_rwkv.models.mixing): what the token shift
and the parameter style change, and what they must not."""
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from vision_rwkv.models.mixing import ChannelMix, TimeMixV6, _relu_square, fused_prenorm_step, lerp_mix
from vision_rwkv.models.vrwkv import SpatialMix
from vision_rwkv.ops import bi_shift_1d, q_shift


def _randomise(module: torch.nn.Module, scale: float = 0.2, seed: int = 0) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in sorted(module.named_parameters()):
            p.add_(torch.randn(p.shape, generator=gen) * scale)


def _copy_params(src: torch.nn.Module, dst: torch.nn.Module, rename=None) -> None:
    """Load src's parameters into dst, reshaping (C,) <-> (1, 1, C) vectors and renaming where asked."""
    rename = rename or {}
    own = dst.state_dict()
    state = {}
    for name, value in src.state_dict().items():
        target = rename.get(name, (name, None))
        new_name, fn = target if isinstance(target, tuple) else (target, None)
        value = fn(value) if fn is not None else value
        state[new_name] = value.reshape(own[new_name].shape)
    dst.load_state_dict(state)


@pytest.mark.parametrize("x_dtype,mix_dtype", [(torch.float32, torch.float32), (torch.bfloat16, torch.bfloat16),
                                               (torch.bfloat16, torch.float32)])
def test_lerp_mix_is_the_interpolation_in_the_promoted_dtype(x_dtype, mix_dtype):
    gen = torch.Generator().manual_seed(3)
    x, shifted = (torch.randn(2, 7, 5, generator=gen).to(x_dtype) for _ in range(2))
    mix = torch.rand(5, generator=gen).to(mix_dtype)
    out = lerp_mix(x, shifted, mix)
    want = x.double() * mix.double() + shifted.double() * (1 - mix.double())
    assert out.dtype == torch.promote_types(x_dtype, mix_dtype)
    tol = 1e-6 if out.dtype == torch.float32 else 2e-2
    torch.testing.assert_close(out.double(), want, atol=tol, rtol=tol)


def test_relu_square_value_and_gradient():
    x = torch.randn(4, 9, dtype=torch.float64, requires_grad=True)
    out = _relu_square(x)
    torch.testing.assert_close(out, torch.relu(x) ** 2)
    out.backward(torch.ones_like(out))
    torch.testing.assert_close(x.grad, 2 * torch.relu(x.detach()))


@pytest.mark.parametrize("shift,grid", [("q_shift", (3, 5)), ("bi_shift_1d", None)])
def test_channel_mix_param_styles_are_one_function(shift, grid):
    """'vrwkv' (mu weights the unshifted token) and 'rwkv_clip_text' (maa weights the shifted one) with maa = 1 - mu
    compute the same function, for either token shift."""
    torch.manual_seed(0)
    a = ChannelMix(24, 1, 3, 40, head_size=8, token_shift=shift, param_style="vrwkv")
    b = ChannelMix(24, 1, 3, 40, head_size=8, token_shift=shift, param_style="rwkv_clip_text")
    assert a.spatial_mix_k.shape == (24,) and b.time_maa_k.shape == (1, 1, 24)
    # the fancy inits are the same interpolation too
    torch.testing.assert_close(b.time_maa_k.flatten(), 1 - a.spatial_mix_k)
    _randomise(a)
    flip = lambda t: 1 - t  # noqa: E731
    _copy_params(a, b, {"spatial_mix_k": ("time_maa_k", flip), "spatial_mix_r": ("time_maa_r", flip)})
    x = torch.randn(2, 15, 24)
    torch.testing.assert_close(b(x, grid), a(x, grid), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(a.shift_weights(), b.shift_weights())


def test_channel_mix_uses_its_token_shift():
    torch.manual_seed(1)
    m = ChannelMix(16, 0, 2, 32, head_size=8, token_shift="bi_shift_1d", param_style="rwkv_clip_text")
    _randomise(m)
    x = torch.randn(1, 6, 16)
    xx = bi_shift_1d(x, 8) - x
    xk, xr = x + xx * m.time_maa_k, x + xx * m.time_maa_r
    ref = torch.sigmoid(m.receptance(xr)) * m.value(torch.relu(m.key(xk)) ** 2)
    torch.testing.assert_close(m(x), ref)
    v4 = ChannelMix(16, 0, 2, 32, head_size=None)
    _randomise(v4)
    shifted = q_shift(x, (2, 3))
    xk = x * v4.spatial_mix_k + shifted * (1 - v4.spatial_mix_k)
    xr = x * v4.spatial_mix_r + shifted * (1 - v4.spatial_mix_r)
    ref = torch.sigmoid(v4.receptance(xr)) * v4.value(torch.relu(v4.key(xk)) ** 2)
    torch.testing.assert_close(v4(x, (2, 3)), ref)


def test_time_mix_param_style_changes_layout_and_init_not_math():
    """Same parameters, same shift: the 'vrwkv6' and 'rwkv_clip_text' styles (and fp32_wkv, a no-op in fp32) give
    the same output; the styles differ in vector shapes, LoRA init and parameter order only."""
    torch.manual_seed(2)
    vis = TimeMixV6(32, 1, 3, head_size=16, token_shift="bi_shift_1d", param_style="vrwkv6")
    txt = TimeMixV6(32, 1, 3, head_size=16, token_shift="bi_shift_1d", param_style="rwkv_clip_text", fp32_wkv=True)
    assert vis.time_maa_x.shape == vis.time_decay.shape == (32,)
    assert txt.time_maa_x.shape == txt.time_decay.shape == (1, 1, 32)
    assert txt.time_maa_w1.abs().max() == 0 and txt.time_decay_w1.abs().max() == 0
    assert 0 < txt.time_maa_w2.abs().max() <= 0.01 and 0 < vis.time_maa_w1.abs().max() <= 1e-4
    for name in ("time_maa_x", "time_maa_v", "time_maa_g", "time_decay", "time_faaaa"):
        torch.testing.assert_close(getattr(txt, name).flatten(), getattr(vis, name).flatten(), rtol=0, atol=1e-6)
    names = [n for n, _ in vis.named_parameters()]
    assert names.index("gate.weight") < names.index("output.weight")
    names = [n for n, _ in txt.named_parameters()]
    assert names.index("output.weight") < names.index("gate.weight")
    _randomise(vis)
    _copy_params(vis, txt)
    x = torch.randn(2, 9, 32)
    torch.testing.assert_close(txt(x), vis(x), rtol=1e-5, atol=1e-6)


def test_time_mix_token_shift_is_the_only_difference():
    """The q_shift and bi_shift_1d time mixes differ only by the shift: on a 1 x T grid whose channels see no
    vertical neighbour the results differ, and the ddlerp reads exactly shift(x) - x."""
    torch.manual_seed(3)
    grid_mix = TimeMixV6(32, 0, 2, head_size=16, token_shift="q_shift")
    seq_mix = TimeMixV6(32, 0, 2, head_size=16, token_shift="bi_shift_1d")
    _randomise(grid_mix)
    _copy_params(grid_mix, seq_mix)
    x = torch.randn(1, 8, 32)
    for m, shifted in ((grid_mix, q_shift(x, (2, 4), 16)), (seq_mix, bi_shift_1d(x, 16))):
        xw, _, _, _, xg = m._ddlerp(x, (2, 4))
        xx = shifted - x
        lora = torch.tanh((x + xx * m.time_maa_x) @ m.time_maa_w1).view(8, 5, 32)
        torch.testing.assert_close(xw[0], x[0] + xx[0] * (m.time_maa_w + lora[:, 0] @ m.time_maa_w2[0]))
        torch.testing.assert_close(xg[0], x[0] + xx[0] * (m.time_maa_g + lora[:, 4] @ m.time_maa_w2[4]))
    assert (grid_mix(x, (2, 4)) - seq_mix(x)).abs().max() > 1e-3


def test_mixer_argument_errors():
    with pytest.raises(ValueError, match="token_shift must be one of"):
        TimeMixV6(32, 0, 1, head_size=16, token_shift="causal")
    with pytest.raises(ValueError, match="param_style must be one of"):
        TimeMixV6(32, 0, 1, head_size=16, param_style="vrwkv")
    with pytest.raises(ValueError, match="not a multiple of head_size"):
        TimeMixV6(30, 0, 1, head_size=16)
    with pytest.raises(ValueError, match="needs a head_size"):
        ChannelMix(16, 0, 1, 32, head_size=None, token_shift="bi_shift_1d")
    with pytest.raises(ValueError, match="param_style must be one of"):
        ChannelMix(16, 0, 1, 32, param_style="vrwkv6")
    with pytest.raises(ValueError, match="needs the token grid"):
        TimeMixV6(32, 0, 1, head_size=16)(torch.randn(1, 4, 32))
    with pytest.raises(ValueError, match="needs the token grid"):
        ChannelMix(16, 0, 1, 32)(torch.randn(1, 4, 16))
    with pytest.raises(ValueError, match="SpatialMix: the Q-Shift needs the token grid"):
        SpatialMix(16, 0, 1)(torch.randn(1, 4, 16))
    assert ChannelMix(16, 0, 1, 32, head_size=8, token_shift="bi_shift_1d")(torch.randn(1, 4, 16)).shape == (1, 4, 16)


@pytest.mark.parametrize("with_scale,with_next", [(False, False), (True, True)])
def test_fused_prenorm_step_matches_plain_prenorm_block(with_scale, with_next):
    """The fused-path block helper (reference kernels on CPU) is the plain pre-norm block."""
    torch.manual_seed(4)
    c = 12
    norm1, norm2, nxt = (torch.nn.LayerNorm(c) for _ in range(3))
    _randomise(torch.nn.ModuleList([norm1, norm2, nxt]), 0.3)
    lin2 = torch.nn.Linear(c, c)
    g1, g2 = (torch.randn(c), torch.randn(c)) if with_scale else (None, None)
    x = torch.randn(2, 5, c, dtype=torch.float64)
    for m in (norm1, norm2, nxt, lin2):
        m.double()
    if with_scale:
        g1, g2 = g1.double(), g2.double()
    y, h = fused_prenorm_step(x, norm1(x), torch.tanh, lin2, norm2, g1, g2, nxt if with_next else None)
    s = x + (torch.tanh(norm1(x)) * (g1 if with_scale else 1))
    ref = s + lin2(norm2(s)) * (g2 if with_scale else 1)
    torch.testing.assert_close(y, ref)
    if with_next:
        torch.testing.assert_close(h, nxt(ref))
    else:
        assert h is None
    with torch.no_grad():  # eager inference of a chain that owns x: the residual adds write into it
        x_own = x.clone()
        y_own, h_own = fused_prenorm_step(x_own, norm1(x), torch.tanh, lin2, norm2, g1, g2,
                                          nxt if with_next else None, inplace=True)
    assert y_own is x_own
    torch.testing.assert_close(y_own, ref)
    if with_next:
        torch.testing.assert_close(h_own, nxt(ref))


def test_fold_caches_stacked_vectors_in_inference_only(keep_on_cpu):
    """Eager inference keeps the stacked mix vectors while they are unchanged; an in-place update (optimizer step,
    load_state_dict) is seen at once; with autograd recording the vectors are passed as they are (no stack per
    training step: the fused kernels read each vector in place and return each its gradient)."""
    from vision_rwkv.models.mixing import _fold

    a, b = torch.nn.Parameter(torch.rand(1, 1, 6)), torch.nn.Parameter(torch.rand(1, 1, 6))  # text-tower layout
    cache = {}
    with torch.no_grad():
        first = _fold((a, b), cache, 'ab')
        assert _fold((a, b), cache, 'ab') is first
        assert first.shape == (2, 6)
        torch.testing.assert_close(first, torch.cat((a, b)).reshape(2, 6))
        a.add_(1.0)
        updated = _fold((a, b), cache, 'ab')
        assert updated is not first
        torch.testing.assert_close(updated[0], a.reshape(-1))
        c = torch.nn.Parameter(a.detach().clone())  # a replaced parameter object: recomputed
        assert _fold((c, b), cache, 'ab') is not updated
    vectors = _fold((a, b), cache, 'ab')  # training: the vectors themselves (the kernels read each in place)
    assert vectors == (a, b)
    with torch.enable_grad():
        assert _fold((a,), cache, 'a').shape == (1, 6)


def test_per_step_divides_by_tokens_with_one_foreach_each_way(keep_on_cpu):
    """SpatialMix.per_step: (decay / T, first / T) and their gradients as plain division's, with one foreach launch in
    the forward and one in the backward when training (autograd's foreach backward would divide twice)."""
    from op_recorder import OpRecorder

    from vision_rwkv.models.vrwkv import SpatialMix

    mix = SpatialMix(12, 1, 4)
    with torch.no_grad():
        mix.spatial_decay.normal_()
        mix.spatial_first.normal_()
    gw, gu = torch.randn(12), torch.randn(12)
    w, u = mix.per_step(7)
    with OpRecorder() as rec:
        torch.autograd.backward((w, u), (gw, gu))
    assert [n for n in rec.ops if "div" in n] == ["aten._foreach_div"]
    got = (mix.spatial_decay.grad.clone(), mix.spatial_first.grad.clone())
    mix.zero_grad()
    torch.autograd.backward((mix.spatial_decay / 7, mix.spatial_first / 7), (gw, gu))
    torch.testing.assert_close(w, (mix.spatial_decay / 7).detach(), rtol=0, atol=0)
    torch.testing.assert_close(u, (mix.spatial_first / 7).detach(), rtol=0, atol=0)
    torch.testing.assert_close(got, (mix.spatial_decay.grad, mix.spatial_first.grad), rtol=0, atol=0)
    with torch.no_grad():  # eager inference: kept while the parameters and T are unchanged
        w, u = mix.per_step(7)
        assert not w.requires_grad and mix.per_step(7)[0] is w
        torch.testing.assert_close(mix.per_step(9)[1], mix.spatial_first / 9, rtol=0, atol=0)
        mix.spatial_decay.mul_(2.0)
        torch.testing.assert_close(mix.per_step(9)[0], mix.spatial_decay / 9, rtol=0, atol=0)


def test_writes_through_data_never_leave_a_stale_kept_value(monkeypatch):
    """A write through ``p.data`` (mmengine's EMA swap, hand edits) bumps no version counter, so a kept value cannot
    see it: on CPU nothing is kept (the output followed the old decays); where values are kept (GPUs), the mode switch
    that precedes an evaluation - ``model.eval()`` - forgets them."""
    from vision_rwkv.models import _projections
    from vision_rwkv.models.vrwkv import SpatialMix

    mix = SpatialMix(12, 1, 4).eval()
    with torch.no_grad():
        mix.per_step(7)
        mix.spatial_decay.data.mul_(2.0)
        torch.testing.assert_close(mix.per_step(7)[0], mix.spatial_decay / 7, rtol=0, atol=0)
        monkeypatch.setattr(_projections, "_keeps_derived", lambda t: True)  # as on a GPU
        w = mix.per_step(7)[0]
        mix.spatial_decay.data.mul_(2.0)
        assert mix.per_step(7)[0] is w  # (kept: invisible to the version counter)
        mix.eval()
        torch.testing.assert_close(mix.per_step(7)[0], mix.spatial_decay / 7, rtol=0, atol=0)
        mix.per_step(7)
        mix.train()
        assert not mix._folded


def test_linear_stack_projects_together_and_caches_in_inference_only(keep_on_cpu):
    """linear_stack: the token mixes' M projections as one batched GEMM, equal to the Linears; eager inference keeps
    the stacked weight (cast to the inputs' dtype) while the weights are unchanged; in training each call stacks and
    every weight gets its gradient."""
    from vision_rwkv.models.mixing import linear_stack, stackable

    gen = torch.Generator().manual_seed(0)
    linears = [torch.nn.Linear(6, 5, bias=False) for _ in range(3)]
    x = torch.randn(3, 2, 4, 6, generator=gen)
    ref = torch.stack([lin(x[i]) for i, lin in enumerate(linears)])
    cache = {}
    with torch.no_grad():
        y = linear_stack(linears, x, cache, 'w')
        torch.testing.assert_close(y, ref.detach(), rtol=1e-5, atol=1e-6)
        held = cache['w'][2]
        linear_stack(linears, x, cache, 'w')
        assert cache['w'][2] is held
        linear_stack(linears, x.bfloat16(), cache, 'w')  # another input dtype: another stacked copy
        assert cache['w'][2].dtype == torch.bfloat16
        linears[1].weight.mul_(2.0)  # an in-place update (optimizer step, load_state_dict) is seen at once
        y2 = linear_stack(linears, x, cache, 'w')
        torch.testing.assert_close(y2[1], 2 * ref[1].detach(), rtol=1e-5, atol=1e-6)
    y3 = linear_stack(linears, x, cache, 'w')
    assert y3.requires_grad
    y3.sum().backward()
    assert all(lin.weight.grad is not None for lin in linears)
    torch.testing.assert_close(linears[2].weight.grad, x[2].reshape(-1, 6).sum(0).expand(5, 6))
    assert stackable(*linears)
    hooked = torch.nn.Linear(6, 5, bias=False)
    hooked.register_forward_hook(lambda *a: None)
    assert not stackable(linears[0], hooked)
    assert not stackable(linears[0], torch.nn.Linear(6, 5))  # a bias
    assert not stackable(linears[0], torch.nn.Linear(6, 4, bias=False))  # another shape
    assert not stackable(linears[0], torch.nn.Linear(6, 5, bias=False).half())


def test_step_weights_one_cast_by_name_and_when_not(keep_on_cpu):
    """step_weights: the plain projections' weights (and extra matrices) cast to the compute dtype in one launch, the
    ``stack`` names as one stacked tensor; empty where autocast's own casts stay (same dtype, mixed dtypes); eager
    inference keeps the casts while the weights are unchanged, training recasts each call and routes gradients."""
    from vision_rwkv.models.mixing import linear_stack, plain_weights, step_weights

    mix = ChannelMix(8, 0, 2, 12)
    hooked = ChannelMix(8, 0, 2, 12)
    hooked.value.register_forward_hook(lambda *a: None)
    assert list(plain_weights(mix, ('key', 'value', 'receptance'))) == ['key', 'value', 'receptance']
    assert list(plain_weights(hooked, ('key', 'value', 'receptance'))) == ['key', 'receptance']  # keeps its forward
    weights = plain_weights(mix, ('key', 'value', 'receptance'))
    assert step_weights(torch.float32, weights) == {}  # already the compute dtype: nothing to cast
    assert step_weights(torch.bfloat16, dict(weights, extra=torch.ones(3, dtype=torch.float64))) == {}  # mixed
    w = step_weights(torch.bfloat16, weights)
    assert set(w) == {'key', 'value', 'receptance'}
    for name, t in w.items():
        assert t.dtype == torch.bfloat16 and torch.equal(t, getattr(mix, name).weight.detach().bfloat16())
    (w['key'].float().sum() + 3 * w['value'].float().sum()).backward()
    assert torch.equal(mix.key.weight.grad, torch.ones(12, 8)) and torch.equal(mix.value.weight.grad,
                                                                                 torch.full((8, 12), 3.0))
    assert mix.receptance.weight.grad is None
    lins = [torch.nn.Linear(6, 5, bias=False) for _ in range(3)]
    named = {n: lin.weight for n, lin in zip('abc', lins)}
    s = step_weights(torch.bfloat16, dict(named, d=torch.nn.Parameter(torch.randn(2, 6))), stack=('a', 'b', 'c'))
    assert set(s) == {'stack', 'd'} and s['stack'].shape == (3, 5, 6)
    x = torch.randn(3, 4, 6).bfloat16()
    y = linear_stack(lins, x, stacked=s['stack'])  # gradients through the stacked cast to every weight
    torch.testing.assert_close(y.float(), torch.stack([x[i].float() @ lins[i].weight.detach().bfloat16().float().t()
                                                       for i in range(3)]), rtol=1e-2, atol=1e-2)
    y.float().sum().backward()
    for i, lin in enumerate(lins):
        torch.testing.assert_close(lin.weight.grad, x[i].float().sum(0).expand(5, 6), rtol=1e-2, atol=1e-2)
    cache = {}
    with torch.no_grad():
        held = step_weights(torch.bfloat16, weights, cache=cache)
        assert step_weights(torch.bfloat16, weights, cache=cache) is held  # kept across inference forwards
        mix.value.weight.mul_(2.0)  # an in-place update is seen at once
        again = step_weights(torch.bfloat16, weights, cache=cache)
        assert again is not held and torch.equal(again['value'], mix.value.weight.bfloat16())
    assert step_weights(torch.bfloat16, weights, cache=cache) is not again  # training: cast each call


def _small_mixer(family: str):
    """A v4 token mix, a v6 time mix or a channel mix with perturbed parameters, and an input on a 3 x 5 grid."""
    from vision_rwkv.models.vrwkv import SpatialMix

    torch.manual_seed(0)
    if family == "v4":
        mod = SpatialMix(16, 1, 4)
    elif family == "v6":
        mod = TimeMixV6(32, 1, 4, head_size=16, mix_rank=16, decay_rank=16)
    else:
        mod = ChannelMix(16, 1, 4, 40)
    with torch.no_grad():
        for p in mod.parameters():
            p.add_(torch.randn(p.shape) * 0.1)
    return mod, torch.randn(2, 15, 32 if family == "v6" else 16)


class _WeightCasts(TorchDispatchMode):
    """Counts autocast's per-weight casts: a _to_copy reading one of ``module``'s weight matrices."""

    def __init__(self, module):
        super().__init__()
        self.matrices = {p.data_ptr() for p in module.parameters() if p.dim() >= 2}
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._to_copy.default and args[0].data_ptr() in self.matrices:
            self.count += 1
        return func(*args, **(kwargs or {}))


def _count_cast_weights(monkeypatch) -> list:
    """The number of weights of each cast_weights call, recorded while the test runs."""
    from vision_rwkv.models import _projections

    calls = []
    real = _projections.cast_weights
    monkeypatch.setattr(_projections, "cast_weights", lambda *a, **k: calls.append(len(a[0])) or real(*a, **k))
    return calls


@pytest.mark.parametrize("family", ["v4", "v6", "channel"])
def test_fused_mixers_cast_their_weights_once_per_call(family, monkeypatch):
    """Under bf16 autocast the fused token / channel mixes cast all their matrices with ONE cast_weights call and run
    every projection on those casts (no per-weight autocast cast), with the same output and parameter gradients as the
    same forward with autocast casting each weight where it is used. The fused elementwise ops run on their
    reference backend here (CPU); the Triton kernels are covered by test_fused_path."""
    from vision_rwkv.models import mixing, vrwkv
    from vision_rwkv.ops import fused

    mod, x = _small_mixer(family)
    monkeypatch.setattr(fused, "fused_enabled", lambda t: True)
    monkeypatch.setenv("VRWKV_FUSED_STEP", "0")  # the per-op path (the one-node steps: tests/ops/test_mixer_steps.py)
    calls = _count_cast_weights(monkeypatch)
    casts = _WeightCasts(mod)

    def run():
        mod.zero_grad()
        casts.count = 0
        with casts, torch.autocast("cpu", dtype=torch.bfloat16):
            y = mod(x, (3, 5))
        y.float().square().sum().backward()
        return y.detach().float(), {n: p.grad.clone() for n, p in mod.named_parameters() if p.grad is not None}

    y1, g1 = run()
    assert casts.count == 0
    expected = {"v4": [4], "v6": [9], "channel": [3]}[family]  # k, v, r, out / + g, 4 LoRA matrices / k, v, r
    assert calls == expected
    for owner in (mixing, vrwkv):
        monkeypatch.setattr(owner, "step_weights", lambda *a, **k: {})
    y2, g2 = run()
    assert calls == expected and casts.count > 0  # the second pass: autocast casts weights where used
    assert set(g1) == set(g2) == {n for n, p in mod.named_parameters()}
    torch.testing.assert_close(y1, y2, rtol=0, atol=0)
    for n in g2:
        torch.testing.assert_close(g1[n], g2[n], rtol=1e-6, atol=1e-6, msg=n)


@pytest.mark.parametrize("family", ["v4", "v6", "channel"])
@pytest.mark.parametrize("mlp", [False, True])
def test_mix_gemm_inference_keeps_its_weight_casts(family, mlp, monkeypatch, keep_on_cpu):
    """The mixed-operand inference path (VRWKV_FUSED_MIX=1) under bf16 autocast: the first forward casts the mixer's
    weight matrices in one call, later forwards reuse them (no cast at all) until a weight changes; the output is
    bit-identical to the same path casting per call. Reference backend of the fused ops (CPU)."""
    from vision_rwkv.models import _projections, mixing, vrwkv
    from vision_rwkv.ops import fused

    mod, x = _small_mixer(family)
    mod.eval()
    monkeypatch.setattr(fused, "fused_enabled", lambda t: True)
    monkeypatch.setenv("VRWKV_FUSED_MIX", "1")
    monkeypatch.setenv("VRWKV_FUSED_MLP", "1" if mlp else "0")
    calls = _count_cast_weights(monkeypatch)
    casts = _WeightCasts(mod)

    def run():
        with torch.no_grad(), casts, torch.autocast("cpu", dtype=torch.bfloat16):
            return mod(x, (3, 5)).float()

    y1 = run()
    assert len(calls) == 1 and not casts.count
    assert set(mod._folded) >= {'mix_gemm_weights'} and 'step_weights' not in mod._folded  # the mixed-operand path
    y2 = run()
    assert len(calls) == 1 and not casts.count  # kept: nothing cast in the second forward
    torch.testing.assert_close(y1, y2, rtol=0, atol=0)
    with torch.no_grad():
        next(p for p in mod.parameters() if p.dim() == 2).mul_(1.5)  # an in-place update: cast again
    y3 = run()
    assert len(calls) == 2 and not torch.equal(y3, y2)
    for owner in (_projections, mixing, vrwkv):
        if hasattr(owner, "mix_gemm_weights"):
            monkeypatch.setattr(owner, "mix_gemm_weights", lambda *a, **k: {})
    y4 = run()
    assert casts.count  # the path without kept casts: the ops cast the weights per call
    torch.testing.assert_close(y4, y3, rtol=0, atol=0)


def test_derived_values_are_not_kept_while_a_cuda_graph_is_captured(monkeypatch, keep_on_cpu):
    """During a CUDA-graph capture the derived values (stacks, casts) are made by the graph each replay, never taken
    from or put into the cache: a replay after an in-place weight update must not read a stale cast."""
    from vision_rwkv.models import _projections

    w = torch.nn.Parameter(torch.randn(4, 3))
    cache, made = {}, []
    make = lambda: made.append(1) or w.detach().bfloat16()  # noqa: E731
    with torch.no_grad():
        _projections.derived_in_inference((w,), cache, 'c', make)
        _projections.derived_in_inference((w,), cache, 'c', make)
        assert len(made) == 1 and 'c' in cache
        monkeypatch.setattr(_projections, "_capturing_graph", lambda: True)
        _projections.derived_in_inference((w,), cache, 'c', make)
        _projections.derived_in_inference((w,), cache, 'c', make)
        assert len(made) == 3 and cache['c'][2] is not None
        monkeypatch.setattr(_projections, "_capturing_graph", lambda: False)
        _projections.derived_in_inference((w,), cache, 'c', make)
        assert len(made) == 3  # the cache made before the capture is still valid (w unchanged)
    assert _projections._capturing_graph() is False  # (CPU: no capture)


def test_time_mix_keeps_w2_in_fp32_under_fp16():
    """The v6 LoRA up-projection W2 joins the one-launch casts in bf16 only: under fp16 the Q-Shift + LoRA backward
    sums its gradient in fp32 (a fp16 cast would round that sum into fp16, where it can overflow)."""
    mod = TimeMixV6(32, 1, 4, head_size=16, mix_rank=16, decay_rank=16)
    bf16 = mod._step_weights(torch.bfloat16, stacked=True)
    fp16 = mod._step_weights(torch.float16, stacked=True)
    assert set(bf16) == {'stack', 'output', 'time_maa_w1', 'time_maa_w2', 'time_decay_w1', 'time_decay_w2'}
    assert set(fp16) == set(bf16) - {'time_maa_w2'} and fp16['stack'].dtype == torch.float16
    text = TimeMixV6(32, 1, 4, head_size=16, mix_rank=16, decay_rank=16, token_shift='bi_shift_1d')
    assert set(text._step_weights(torch.bfloat16, stacked=False)) == {
        'key', 'value', 'receptance', 'gate', 'output', 'time_decay_w1', 'time_decay_w2'}



def test_step_ready_for_eager_training_and_inference_on_the_default_fused_path(monkeypatch):
    """The one-step mixers (vision_rwkv.ops.fused.mixer_steps) run in eager training - not under the opt-in
    mixed-operand training GEMMs (the GEMM-epilogue switch does not stop them) - and in eager inference - not with
    the GEMM-epilogue kernels, whose path that is -, never in float64, with plain projections of one dtype and
    device, and are switched off by
    VRWKV_FUSED_STEP=0, and need the fused ops' Triton backend; the mixers check their own structure on top (key
    norm, 1-D shift, fp32 WKV, LoRA rank)."""
    from vision_rwkv.models._projections import step_linear_weights

    def step_ready(x, dtype, linears):
        return step_linear_weights(x, dtype, linears) is not None
    from vision_rwkv.ops import fused

    for var in ("VRWKV_FUSED_STEP", "VRWKV_FUSED_GEMM", "VRWKV_FUSED_MIX_TRAIN", "VRWKV_BACKEND"):
        monkeypatch.delenv(var, raising=False)
    lins = [torch.nn.Linear(8, 8, bias=False) for _ in range(3)]
    x = torch.randn(2, 4, 8)
    assert not step_ready(x, torch.bfloat16, lins)  # CPU: the fused ops' reference backend
    monkeypatch.setattr(fused, "triton_active", lambda t: True)  # as on a GPU
    assert step_ready(x, torch.bfloat16, lins)
    with torch.no_grad():
        assert step_ready(x, torch.bfloat16, lins)
    assert not step_ready(x.double(), torch.float64, lins)
    # (switch, value, grad mode, ready): the GEMM epilogues take inference only, the mixed-operand training GEMMs
    # training only, VRWKV_FUSED_STEP=0 both
    for var, value, grad, ready in (("VRWKV_FUSED_GEMM", "1", False, False), ("VRWKV_FUSED_GEMM", "1", True, True),
                                    ("VRWKV_FUSED_MIX_TRAIN", "1", False, True),
                                    ("VRWKV_FUSED_MIX_TRAIN", "1", True, False), ("VRWKV_FUSED_STEP", "0", True, False),
                                    ("VRWKV_FUSED_STEP", "0", False, False)):
        monkeypatch.setenv(var, value)
        with torch.set_grad_enabled(grad):
            assert step_ready(x, torch.bfloat16, lins) is ready, (var, grad)
        monkeypatch.delenv(var)
    hooked = torch.nn.Linear(8, 8, bias=False)
    hooked.register_forward_hook(lambda *a: None)
    assert not step_ready(x, torch.bfloat16, lins + [hooked])
    assert not step_ready(x, torch.bfloat16, lins + [torch.nn.Linear(8, 8)])  # a bias
    assert not step_ready(x, torch.bfloat16, lins + [torch.nn.Linear(8, 8, bias=False).half()])  # dtype
    assert step_ready(x, torch.bfloat16, lins)


def test_mixers_without_a_one_node_step_keep_the_per_op_path(monkeypatch):
    """Mixer structures the one-node steps do not cover stay on the per-op path while training: key norms, the 1-D
    shift, the text tower's fp32 WKV, LoRA ranks the Q-Shift + LoRA kernel does not take, LoRA matrices in another
    dtype than the projections."""
    from vision_rwkv.models import mixing
    from vision_rwkv.models.vrwkv import SpatialMix
    from vision_rwkv.ops import fused

    x = torch.randn(2, 6, 32)
    args = dict(head_size=16, mix_rank=16, decay_rank=16)
    assert not TimeMixV6(32, 1, 4, **args)._steps_as_one_node(x, torch.float32)  # CPU: the WKV's reference backend
    monkeypatch.setattr(mixing, "resolve_backend", lambda *a: 'triton')  # as on a GPU
    monkeypatch.setattr(fused, "triton_active", lambda t: True)
    assert TimeMixV6(32, 1, 4, **args)._steps_as_one_node(x, torch.float32)
    for kw in (dict(key_norm=True), dict(token_shift='bi_shift_1d'), dict(fp32_wkv=True), dict(mix_rank=24),
               dict(mix_rank=8)):
        mod = TimeMixV6(32, 1, 4, **dict(args, **kw))
        assert not mod._steps_as_one_node(x, torch.float32), kw
    mod = TimeMixV6(32, 1, 4, **args)
    mod.time_maa_w1.data = mod.time_maa_w1.data.double()
    assert not mod._steps_as_one_node(x, torch.float32)

    # with the fused path forced on the reference backend, a key norm / 1-D shift must not reach the step module
    monkeypatch.setattr(fused, "fused_enabled", lambda t: True)
    monkeypatch.setattr(fused, "mixer_steps", lambda: pytest.fail("one-node step taken"))
    ChannelMix(32, 1, 4, 64, key_norm=True)(x, (2, 3)).sum().backward()
    ChannelMix(32, 1, 4, 64, head_size=16, token_shift='bi_shift_1d')(x).sum().backward()
    SpatialMix(32, 1, 4, key_norm=True)(x, (2, 3)).sum().backward()
