"""vision_rwkv.ops._triton_utils.coef_grads / split_param_grads: the small parameters' gradients handed to autograd
from one reduced (M, C) tensor - each in its parameter's shape and dtype, views where no cast is needed."""
import torch

from vision_rwkv.ops._triton_utils import coef_grads, split_param_grads


def test_coef_grads_vectors_of_one_shape():
    ga = torch.randn(5, 8)
    parts = tuple(torch.randn(1, 1, 8) for _ in range(5))
    out = coef_grads(ga, parts, True)
    assert len(out) == 5 and all(g.shape == (1, 1, 8) and g.dtype == torch.float32 for g in out)
    assert all(torch.equal(g.reshape(-1), ga[i]) for i, g in enumerate(out))
    assert all(g.data_ptr() == ga[i].data_ptr() for i, g in enumerate(out))  # views: no copy in the dtype it has


def test_coef_grads_mixed_shapes_and_dtypes():
    ga = torch.randn(3, 6)
    parts = (torch.randn(6), torch.randn(1, 6, dtype=torch.bfloat16), torch.randn(1, 1, 6, dtype=torch.float16))
    out = coef_grads(ga, parts, True)
    assert [tuple(g.shape) for g in out] == [(6,), (1, 6), (1, 1, 6)]
    assert [g.dtype for g in out] == [p.dtype for p in parts]
    for i, g in enumerate(out):
        assert torch.equal(g.reshape(-1), ga[i].to(g.dtype))
    # one shape but other dtypes: cast rows
    out = coef_grads(ga, tuple(torch.randn(1, 6, dtype=torch.bfloat16) for _ in range(3)), True)
    assert all(g.dtype == torch.bfloat16 and g.shape == (1, 6) for g in out)
    assert torch.equal(out[2].reshape(-1), ga[2].to(torch.bfloat16))


def test_coef_grads_one_tensor_and_extra_rows():
    ga = torch.randn(2, 4)
    assert coef_grads(ga, (torch.randn(2, 4),), False)[0] is ga
    assert coef_grads(ga, (torch.randn(2, 4, dtype=torch.bfloat16),), False)[0].dtype == torch.bfloat16
    # (fewer vectors than rows: each vector its row, as before)
    out = coef_grads(torch.randn(3, 4), (torch.randn(4), torch.randn(4)), True)
    assert len(out) == 2 and all(g.shape == (4,) for g in out)


def test_split_param_grads():
    sums = torch.randn(3, 5)
    g, w, b = split_param_grads(sums, None, torch.randn(5, dtype=torch.bfloat16), torch.randn(5))
    assert g is None and w.dtype == torch.bfloat16 and torch.equal(w, sums[1].to(torch.bfloat16))
    assert b.dtype == torch.float32 and torch.equal(b, sums[2]) and b.data_ptr() == sums[2].data_ptr()
