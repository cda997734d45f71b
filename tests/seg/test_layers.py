"""The necks' and heads' pooling layers: eager as torch's, and shape-generic under a dynamic-size torch.export."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from vision_rwkv.seg.layers import AdaptiveAvgPool2d, CeilMaxPool2d
from vision_rwkv.seg.neck import MultiLevelNeck


def _dynamic_program(module: nn.Module, example: torch.Tensor, low: int, high: int):
    dims = {2: torch.export.Dim("h", min=low, max=high), 3: torch.export.Dim("w", min=low, max=high)}
    return torch.export.export(module, (example,), dynamic_shapes=({**dims},)).module()


@pytest.mark.parametrize("k", [2, 4, 8])
def test_ceil_max_pool_program_takes_every_size(k):
    """Partial last windows (-inf padding) pool what they cover, as ceil mode does; negative inputs so the padding
    would win a max if it leaked in."""
    torch.manual_seed(0)
    pool = CeilMaxPool2d(k)
    reference = nn.MaxPool2d(k, k, ceil_mode=True)
    x = torch.randn(2, 3, 4 * k + 1, 3 * k) - 5
    assert torch.equal(pool(x), reference(x))  # eager: torch's own
    program = _dynamic_program(pool, x, k + 1, 64)
    for h, w in ((k + 1, 64), (64, k + 1), (4 * k + 1, 3 * k), (37, 50), (64, 64)):
        y = torch.randn(2, 3, h, w) - 5
        out = program(y)
        assert out.shape[-2:] == (-(-h // k), -(-w // k))
        assert torch.equal(out, reference(y)), (h, w)


@pytest.mark.parametrize("bins", [1, 2, 3, 6, (3, 5)])
def test_adaptive_avg_pool_program_takes_every_size(bins):
    """The averaging-matrix form bins as adaptive_avg_pool2d does: uneven bins, overlapping ones (fewer positions
    than bins), non-square maps."""
    torch.manual_seed(0)
    pool = AdaptiveAvgPool2d(bins)
    x = torch.randn(2, 4, 10, 7)
    assert torch.equal(pool(x), F.adaptive_avg_pool2d(x, bins))
    program = _dynamic_program(pool, x, 2, 64)
    for h, w in ((2, 2), (2, 64), (5, 3), (13, 29), (64, 64)):
        y = torch.randn(2, 4, h, w)
        torch.testing.assert_close(program(y), F.adaptive_avg_pool2d(y, bins), rtol=1e-5, atol=1e-6)


def test_adaptive_avg_pool_needs_both_output_sizes_when_dynamic():
    pool = AdaptiveAvgPool2d((None, 3))
    with pytest.raises(Exception, match="needs both output sizes"):
        _dynamic_program(pool, torch.randn(1, 2, 8, 8), 2, 32)


NECK_SCALES = [((4, 2, 1, 0.5), 3), ((1, 0.5, 0.25, 0.125), 9), ((1.5, 0.75, 0.375, 0.1875), 11),
               ((3.5, 1.75, 0.875, 0.4375), 5)]  # patch 16, 4, 6, 14 for strides 4-32


@pytest.mark.parametrize("scales, tokens", NECK_SCALES)
def test_neck_min_tokens_is_the_smallest_grid_with_2x2_levels(scales, tokens):
    """At min_tokens every output level is at least 2 x 2; one token fewer, some level is 1 wide."""
    neck = MultiLevelNeck([8] * 4, 8, scales=scales).eval()
    assert neck.min_tokens() == tokens

    def smallest_side(n: int) -> int:
        return min(min(level.shape[-2:]) for level in neck([torch.randn(1, 8, n, n + 3)] * 4))

    assert smallest_side(tokens) >= 2
    if tokens > 2:
        assert smallest_side(tokens - 1) == 1
