"""Multi-scale deformable attention: the grid_sample form against an explicit bilinear sampler (zero padding,
pixel centres at (i + 0.5) / size), gradients, the module's offsets in pixels of each level, its init."""
import math

import pytest
import torch

from vision_rwkv.seg.deform_attn import MSDeformAttn, ms_deform_attn


def _bilinear(img: torch.Tensor, x: float, y: float) -> torch.Tensor:
    """img (D, H, W) sampled at normalised (x, y): pixel coords (x W - 0.5, y H - 0.5), zero outside."""
    _, h, w = img.shape
    px, py = x * w - 0.5, y * h - 0.5
    x0, y0 = math.floor(px), math.floor(py)
    out = torch.zeros(img.shape[0], dtype=img.dtype)
    for yy, wy in ((y0, 1 - (py - y0)), (y0 + 1, py - y0)):
        for xx, wx in ((x0, 1 - (px - x0)), (x0 + 1, px - x0)):
            if 0 <= yy < h and 0 <= xx < w:
                out += wy * wx * img[:, yy, xx]
    return out


def _naive(value, shapes, locations, weights):
    batch, _, heads, dim = value.shape
    queries, points = locations.shape[1], locations.shape[4]
    starts = [0]
    for h, w in shapes:
        starts.append(starts[-1] + h * w)
    out = torch.zeros(batch, queries, heads, dim, dtype=value.dtype)
    for b in range(batch):
        for q in range(queries):
            for m in range(heads):
                for lv, (h, w) in enumerate(shapes):
                    img = value[b, starts[lv]:starts[lv + 1], m].T.reshape(dim, h, w)
                    for p in range(points):
                        x, y = locations[b, q, m, lv, p].tolist()
                        out[b, q, m] += weights[b, q, m, lv, p] * _bilinear(img, x, y)
    return out.reshape(batch, queries, heads * dim)


def _inputs(batch, shapes, queries, heads, dim, points, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    tokens = sum(h * w for h, w in shapes)
    value = torch.randn(batch, tokens, heads, dim, generator=g, dtype=dtype)
    # locations spill past the borders (zero padding) on every side
    locations = torch.rand(batch, queries, heads, len(shapes), points, 2, generator=g, dtype=dtype) * 1.4 - 0.2
    weights = torch.rand(batch, queries, heads, len(shapes), points, generator=g, dtype=dtype)
    return value, locations, weights


@pytest.mark.parametrize("batch, shapes, queries, heads, dim, points", [
    (2, [(3, 5), (2, 2)], 7, 2, 3, 3),   # two non-square levels
    (1, [(4, 3)], 5, 3, 2, 1),           # batch 1, one level, one point
    (2, [(6, 4), (3, 2), (1, 1)], 4, 1, 5, 2),  # three levels down to a single pixel
])
def test_matches_explicit_bilinear_sampling(batch, shapes, queries, heads, dim, points):
    value, locations, weights = _inputs(batch, shapes, queries, heads, dim, points)
    out = ms_deform_attn(value, shapes, locations, weights)
    assert out.shape == (batch, queries, heads * dim)
    torch.testing.assert_close(out, _naive(value, shapes, locations, weights), rtol=1e-12, atol=1e-12)


def test_pixel_centres_read_the_pixel_exactly():
    value, _, _ = _inputs(1, [(3, 4)], 1, 1, 2, 1, dtype=torch.float32)
    img = value[0, :, 0].T.reshape(2, 3, 4)
    for i in range(3):
        for j in range(4):
            loc = torch.tensor([(j + 0.5) / 4, (i + 0.5) / 3]).view(1, 1, 1, 1, 1, 2)
            out = ms_deform_attn(value, [(3, 4)], loc, torch.ones(1, 1, 1, 1, 1))
            torch.testing.assert_close(out[0, 0], img[:, i, j])


def test_gradients():
    value, locations, weights = _inputs(1, [(3, 4), (2, 3)], 3, 2, 2, 2, seed=3)
    args = [t.requires_grad_() for t in (value, locations, weights)]
    assert torch.autograd.gradcheck(lambda v, lo, w: ms_deform_attn(v, [(3, 4), (2, 3)], lo, w), args)


def test_shape_errors():
    value, locations, weights = _inputs(1, [(3, 4)], 2, 1, 2, 1)
    with pytest.raises(ValueError, match="cover 6 tokens, value has 12"):
        ms_deform_attn(value, [(2, 3)], locations, weights)
    with pytest.raises(ValueError, match="2 level shapes"):
        ms_deform_attn(value, [(3, 4), (1, 1)], locations, weights)
    with pytest.raises(ValueError, match="multiple of n_heads=5"):
        MSDeformAttn(dim=16, n_heads=5)
    with pytest.raises(ValueError, match="built for 2 levels got 1"):
        attn = MSDeformAttn(dim=8, n_levels=2, n_heads=2, n_points=1)
        attn(torch.randn(1, 3, 8), torch.rand(1, 3, 2), torch.randn(1, 12, 8), [(3, 4)])


def test_init_places_points_on_rays():
    attn = MSDeformAttn(dim=16, n_levels=2, n_heads=4, n_points=3)
    bias = attn.sampling_offsets.bias.view(4, 2, 3, 2)
    assert torch.equal(attn.sampling_offsets.weight, torch.zeros_like(attn.sampling_offsets.weight))
    # head 0 points right, head 1 up (y), head 2 left, head 3 down; point p at distance p + 1 (max-norm 1 rays)
    rays = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
    for p in range(3):
        torch.testing.assert_close(bias[:, 0, p], rays * (p + 1), atol=1e-6, rtol=0)
        torch.testing.assert_close(bias[:, 1, p], rays * (p + 1), atol=1e-6, rtol=0)
    assert not attn.attention_weights.weight.any() and not attn.attention_weights.bias.any()
    assert not attn.value_proj.bias.any() and not attn.output_proj.bias.any()


def test_module_offsets_are_pixels_of_each_level():
    """With identity projections, one point per head and a zero-weight offset layer whose bias moves head 0 by one
    pixel right: each head reads its value at reference + (1 pixel of that level, 0)."""
    torch.manual_seed(0)
    dim, shapes = 4, [(3, 4), (2, 2)]
    attn = MSDeformAttn(dim=dim, n_levels=2, n_heads=1, n_points=1).double()
    with torch.no_grad():
        attn.sampling_offsets.bias.copy_(torch.tensor([1.0, 0.0, 1.0, 0.0]))
        for proj in (attn.value_proj, attn.output_proj):
            proj.weight.copy_(torch.eye(dim))
            proj.bias.zero_()
    feat = torch.randn(1, 16, dim, dtype=torch.float64)
    ref = torch.tensor([[[0.5 / 4, 0.5 / 3]]], dtype=torch.float64)  # the top-left pixel centre of level 0
    out = attn(torch.randn(1, 1, dim, dtype=torch.float64), ref, feat, shapes)
    level0 = feat[0, :12].T.reshape(dim, 3, 4)
    level1 = feat[0, 12:].T.reshape(dim, 2, 2)
    # level 0: one pixel right of pixel (0, 0) is pixel (0, 1); level 1: (x, y) = (1/8 + 1/2, 1/6) is at pixel
    # coordinates (0.75, -1/6): 5/6 of row 0 (row -1 is padding), 1/4 of column 0 and 3/4 of column 1
    expected = 0.5 * level0[:, 0, 1] + 0.5 * 5 / 6 * (0.25 * level1[:, 0, 0] + 0.75 * level1[:, 0, 1])
    torch.testing.assert_close(out[0, 0], expected, rtol=1e-12, atol=1e-12)  # float64 throughout


def test_autocast_samples_at_fp32_locations():
    """Under autocast the sampling runs in fp32, as the original op's (cast_inputs=float32): bf16 locations on a
    256-pixel-wide map would be off by up to a pixel, ~20% of the output here; what remains is the bf16 rounding of
    the projections (< 2%)."""
    torch.manual_seed(0)
    attn = MSDeformAttn(dim=8, n_levels=1, n_heads=2, n_points=2)
    with torch.no_grad():  # offsets and weights that depend on the query
        attn.sampling_offsets.weight.normal_(0, 0.5)
        attn.attention_weights.weight.normal_()
    shapes = [(4, 256)]
    feat, query = torch.randn(1, 4 * 256, 8), torch.randn(1, 50, 8)
    ref = torch.rand(1, 50, 2) * 0.8 + 0.1
    with torch.no_grad():
        expected = attn(query, ref, feat, shapes)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = attn(query, ref, feat, shapes)
    assert out.dtype == torch.bfloat16  # the output projection still runs in the autocast dtype
    assert ((out.float() - expected).abs().max() / expected.abs().max()).item() < 0.02
