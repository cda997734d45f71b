"""Q-Shift and the 1-D bidirectional shift against literal per-pixel / per-token loops."""
import pytest
import torch

from vision_rwkv.ops import bi_shift_1d, q_shift


def loop_q_shift(x, grid, head_size=None):
    """Literal definition: every output pixel and channel looks up its neighbour (zero outside the grid)."""
    b, n, c = x.shape
    gh, gw = grid
    out = torch.zeros_like(x)
    size = c if head_size is None else head_size
    bounds = [int(size * q / 4) for q in range(5)]
    offsets = [(0, -1), (0, 1), (-1, 0), (1, 0)]  # left, right, up, down
    for ch in range(c):
        local = ch % size
        quarter = max(q for q in range(4) if bounds[q] <= local)
        dh, dw = offsets[quarter]
        for h in range(gh):
            for w in range(gw):
                sh, sw = h + dh, w + dw
                if 0 <= sh < gh and 0 <= sw < gw:
                    out[:, h * gw + w, ch] = x[:, sh * gw + sw, ch]
    return out


def loop_bi_shift(x, head_size):
    b, t, c = x.shape
    out = torch.zeros_like(x)
    for ch in range(c):
        src = -1 if ch % head_size < head_size // 2 else 1
        for i in range(t):
            if 0 <= i + src < t:
                out[:, i, ch] = x[:, i + src, ch]
    return out


@pytest.mark.parametrize("grid", [(1, 1), (1, 5), (4, 1), (3, 4), (5, 5)])
@pytest.mark.parametrize("c", [4, 7, 9, 13])
def test_q_shift_whole_channel_quarters(grid, c):
    x = torch.randn(2, grid[0] * grid[1], c)
    torch.testing.assert_close(q_shift(x, grid), loop_q_shift(x, grid), rtol=0, atol=0)


@pytest.mark.parametrize("grid", [(1, 1), (2, 3), (4, 4), (3, 1)])
@pytest.mark.parametrize("heads,head_size", [(1, 8), (3, 8), (2, 5), (2, 4)])
def test_q_shift_per_head_quarters(grid, heads, head_size):
    x = torch.randn(2, grid[0] * grid[1], heads * head_size)
    y = q_shift(x, grid, head_size=head_size)
    torch.testing.assert_close(y, loop_q_shift(x, grid, head_size), rtol=0, atol=0)


def test_q_shift_whole_vs_per_head_differ_and_one_head_equal():
    x = torch.randn(1, 12, 16)
    torch.testing.assert_close(q_shift(x, (3, 4), head_size=16), q_shift(x, (3, 4)), rtol=0, atol=0)
    assert not torch.equal(q_shift(x, (3, 4), head_size=8), q_shift(x, (3, 4)))


def test_q_shift_quarter_order_left_right_up_down():
    # one bright pixel in the middle of a 3x3 grid: each quarter moves it to a known neighbour
    x = torch.zeros(1, 9, 4)
    x[0, 4] = 1.0
    y = q_shift(x, (3, 3)).reshape(3, 3, 4)
    assert y[1, 2, 0] == 1  # quarter 0 takes x[h, w-1]: the pixel shows up to its right
    assert y[1, 0, 1] == 1  # quarter 1 takes x[h, w+1]
    assert y[2, 1, 2] == 1  # quarter 2 takes x[h-1, w]
    assert y[0, 1, 3] == 1  # quarter 3 takes x[h+1, w]
    assert y.sum() == 4


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
def test_q_shift_dtypes_and_grad(dtype):
    x = torch.randn(2, 6, 10, dtype=dtype, requires_grad=True)
    y = q_shift(x, (2, 3), head_size=5)
    assert y.dtype == dtype
    g = torch.randn_like(y)
    y.backward(g)
    # the shift is a linear map: its adjoint applied to g must match autograd's gradient
    xd = x.detach().double()
    gd = g.double()
    lhs = (q_shift(xd, (2, 3), head_size=5) * gd).sum()
    rhs = (xd * x.grad.double()).sum()
    torch.testing.assert_close(lhs, rhs, rtol=1e-2, atol=1e-2)


def test_q_shift_gradcheck():
    x = torch.randn(1, 6, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: q_shift(t, (3, 2)), (x,))
    assert torch.autograd.gradcheck(lambda t: q_shift(t, (2, 3), head_size=3), (x,))


@pytest.mark.parametrize("t", [1, 2, 7])
@pytest.mark.parametrize("heads,head_size", [(1, 4), (3, 6), (2, 5)])
def test_bi_shift_1d_matches_loop(t, heads, head_size):
    x = torch.randn(2, t, heads * head_size)
    torch.testing.assert_close(bi_shift_1d(x, head_size), loop_bi_shift(x, head_size), rtol=0, atol=0)


def test_shift_bad_inputs():
    with pytest.raises(ValueError, match="does not match"):
        q_shift(torch.randn(1, 10, 4), (3, 3))
    with pytest.raises(ValueError, match=r"\(B, N, C\)"):
        q_shift(torch.randn(10, 4), (2, 5))
    with pytest.raises(ValueError, match="head_size"):
        q_shift(torch.randn(1, 4, 10), (2, 2), head_size=4)
    with pytest.raises(ValueError, match="grid_size"):
        q_shift(torch.randn(1, 4, 8), (4,))
    for grid in (4, (2, 2, 1), None, "ab"):  # (an int used to be a TypeError from len())
        with pytest.raises(ValueError, match=r"grid_size must be a pair of ints \(H, W\)"):
            q_shift(torch.randn(1, 4, 8), grid)
    x = torch.randn(1, 6, 8)
    torch.testing.assert_close(q_shift(x, [2, 3]), q_shift(x, (2, 3)), rtol=0, atol=0)
    with pytest.raises(ValueError, match="head_size"):
        bi_shift_1d(torch.randn(1, 4, 10), 4)
    with pytest.raises(TypeError, match="torch.Tensor"):
        bi_shift_1d([[1.0]], 2)
