"""``cast_weights``: a module's weights cast in one launch each way, values and gradients as per-weight ``.to``;
``cast_weight_groups``: several modules' weights (several stacks) in one launch each way."""
from __future__ import annotations

import pytest
import torch
from op_recorder import OpRecorder

from vision_rwkv.ops.cast_weights import cast_weight_groups, cast_weights

NO_LAUNCH = {"aten.empty_like", "aten.empty", "aten.unbind", "aten.detach", "aten.view", "aten.select"}


def _weights(shapes, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=gen).requires_grad_() for s in shapes]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_values_and_gradients_match_per_weight_casts(dtype):
    ws = _weights([(7, 5), (5, 7), (3,), (2, 4, 6)])
    with OpRecorder(NO_LAUNCH) as rec:
        casts = cast_weights(ws, dtype)
    assert rec.ops == ["aten._foreach_copy_"], rec.ops  # one launch for all four
    for c, w in zip(casts, ws):
        assert c.dtype == dtype and c.shape == w.shape
        assert torch.equal(c, w.detach().to(dtype))
    gen = torch.Generator().manual_seed(3)
    gs = [torch.randn(c.shape, generator=gen).to(dtype) for c in casts]
    with OpRecorder(NO_LAUNCH) as rec:
        grads = torch.autograd.grad(casts, ws, gs)
    assert rec.ops == ["aten._foreach_copy_"], rec.ops
    for g, want, w in zip(grads, gs, ws):
        assert g.dtype == w.dtype and torch.equal(g, want.float())


def test_stack_returns_one_stacked_tensor_and_slices_its_gradient():
    ws = _weights([(4, 6), (4, 6), (4, 6), (6, 2), (9,)], seed=1)
    stacked, c3, c4 = cast_weights(ws, torch.bfloat16, stack=3)
    assert stacked.shape == (3, 4, 6) and stacked.is_contiguous()
    assert torch.equal(stacked, torch.stack([w.detach() for w in ws[:3]]).bfloat16())
    assert torch.equal(c3, ws[3].detach().bfloat16()) and torch.equal(c4, ws[4].detach().bfloat16())
    g_stack = torch.randn(stacked.shape).bfloat16()
    g3 = torch.randn(c3.shape).bfloat16()
    with OpRecorder(NO_LAUNCH) as rec:
        (stacked.float() * g_stack.float()).sum().backward(retain_graph=True)
    for i in range(3):
        assert torch.equal(ws[i].grad, g_stack[i].float()) and ws[i].grad.is_contiguous()
    assert ws[3].grad is None and ws[4].grad is None  # unused outputs: no gradient
    torch.autograd.backward([c3], [g3])
    assert torch.equal(ws[3].grad, g3.float())
    assert rec.ops.count("aten._foreach_copy_") == 1


def test_only_needed_gradients_and_frozen_weights():
    ws = _weights([(3, 3), (3, 3), (5,)], seed=2)
    ws[1].requires_grad_(False)
    stacked, c2 = cast_weights(ws, torch.bfloat16, stack=2)
    assert stacked.requires_grad and c2.requires_grad
    g0, g2 = torch.autograd.grad((stacked.float().sum() + 2 * c2.float().sum()), [ws[0], ws[2]])
    assert torch.equal(g0, torch.ones(3, 3)) and torch.equal(g2, torch.full((5,), 2.0))
    frozen = [w.detach() for w in ws]
    out = cast_weights(frozen, torch.bfloat16)
    assert not any(o.requires_grad for o in out)


def test_non_contiguous_weights():
    """A transposed weight: cast in its own layout (no copy first), gradient in the same layout."""
    base = torch.randn(6, 4)
    w = base.t().detach().requires_grad_()  # (4, 6), strides (1, 4)
    v = torch.randn(4, 6).requires_grad_()
    cw, cv = cast_weights([w, v], torch.bfloat16)
    assert torch.equal(cw, w.detach().bfloat16()) and cw.stride() == w.stride()
    g = torch.randn(4, 6)
    (cw.float() * g).sum().backward()
    torch.testing.assert_close(w.grad, g.bfloat16().float())
    stacked, = cast_weights([w, v], torch.bfloat16, stack=2)  # a stack copies each weight into its slice
    assert torch.equal(stacked, torch.stack([w.detach(), v.detach()]).bfloat16())


def test_errors_name_the_problem():
    ws = _weights([(2, 3), (3, 2)])
    with pytest.raises(ValueError, match="no weights"):
        cast_weights([], torch.bfloat16)
    with pytest.raises(ValueError, match="floating-point dtype"):
        cast_weights(ws, torch.int32)
    with pytest.raises(TypeError, match="weight 1 must be a floating-point tensor"):
        cast_weights([ws[0], torch.ones(3, dtype=torch.long)], torch.bfloat16)
    with pytest.raises(TypeError, match="weight 0 must be a floating-point tensor, got list"):
        cast_weights([[1.0]], torch.bfloat16)
    with pytest.raises(ValueError, match="stacked weights must share one shape, weight 1"):
        cast_weights(ws, torch.bfloat16, stack=2)
    with pytest.raises(ValueError, match="stack=3 for 2 weights"):
        cast_weights(ws, torch.bfloat16, stack=3)


def test_groups_several_stacks_in_one_launch_each_way():
    """Two mixers' matrices - a stack of three, a single, a stack of two, two singles - in one launch each way; each
    stack's gradient lands in its weights' slices, a frozen weight gets none, an unused output none."""
    shapes = [(4, 6)] * 3 + [(6, 2)] + [(3, 5)] * 2 + [(7,), (2, 3, 4)]
    ws = _weights(shapes, seed=5)
    ws[4].requires_grad_(False)
    with OpRecorder(NO_LAUNCH) as rec:
        outs = cast_weight_groups(ws, torch.bfloat16, (3, 1, 2, 1, 1))
    assert rec.ops == ["aten._foreach_copy_"], rec.ops
    assert [tuple(o.shape) for o in outs] == [(3, 4, 6), (6, 2), (2, 3, 5), (7,), (2, 3, 4)]
    assert torch.equal(outs[0], torch.stack([w.detach() for w in ws[:3]]).bfloat16())
    assert torch.equal(outs[2], torch.stack([w.detach() for w in ws[4:6]]).bfloat16())
    assert torch.equal(outs[4], ws[7].detach().bfloat16())
    gen = torch.Generator().manual_seed(6)
    seeds = {i: torch.randn(outs[i].shape, generator=gen).bfloat16() for i in (0, 1, 2)}  # (3 and 4 unused)
    with OpRecorder(NO_LAUNCH) as rec:
        torch.autograd.backward([outs[i] for i in seeds], list(seeds.values()))
    assert rec.ops.count("aten._foreach_copy_") == 1, rec.ops
    for i in range(3):
        assert torch.equal(ws[i].grad, seeds[0][i].float())
    assert torch.equal(ws[3].grad, seeds[1].float())
    assert ws[4].grad is None and torch.equal(ws[5].grad, seeds[2][1].float())
    assert ws[6].grad is None and ws[7].grad is None


def test_group_errors_name_the_problem():
    ws = _weights([(2, 3), (2, 3), (3, 2)])
    with pytest.raises(ValueError, match=r"groups \(2, 2\) must be sizes >= 1 summing to the 3 weights"):
        cast_weight_groups(ws, torch.bfloat16, (2, 2))
    with pytest.raises(ValueError, match="must be sizes >= 1"):
        cast_weight_groups(ws, torch.bfloat16, (3, 0))
    with pytest.raises(ValueError, match=r"stacked weights 1..2 must share one shape, weight 2 is \(3, 2\)"):
        cast_weight_groups(ws, torch.bfloat16, (1, 2))
    with pytest.raises(ValueError, match="cast_weight_groups: no weights"):
        cast_weight_groups([], torch.bfloat16, ())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_one_kernel_each_way():
    """On CUDA the casts of a mixer's weights (VRWKV6-B's token mix: a stack of four 768 x 768, the output projection
    and the four LoRA matrices) are ONE multi-tensor kernel each way, and exact."""
    shapes = [(768, 768)] * 5 + [(768, 160), (5, 32, 768), (768, 64), (64, 768)]
    ws = [w.detach().cuda().requires_grad_() for w in _weights(shapes, seed=4)]
    seeds = [torch.ones((4, 768, 768), device="cuda", dtype=torch.bfloat16)]
    seeds += [torch.ones(s, device="cuda", dtype=torch.bfloat16) for s in shapes[4:]]
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        outs = cast_weights(ws, torch.bfloat16, stack=4)
        grads = torch.autograd.grad(outs, ws, seeds)
        torch.cuda.synchronize()
    kernels = [e.name for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    assert len(kernels) == 2 and all("multi_tensor_apply" in k for k in kernels), kernels
    assert torch.equal(outs[0], torch.stack(ws[:4]).bfloat16()) and torch.equal(outs[-1], ws[-1].bfloat16())
    assert all(g.dtype == torch.float32 and torch.equal(g, torch.ones_like(g)) for g in grads)
