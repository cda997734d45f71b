"""Any input size (zero padding, pos-embed resizing, tiny and large grids) and clear errors for bad inputs."""
import copy
import io

import pytest
import torch
import torch.nn.functional as F
from timm.layers import resample_abs_pos_embed

from model_helpers import tiny_model

NAMES = ['vrwkv_tiny_patch16_224', 'vrwkv6_tiny_patch16_224']


@pytest.mark.parametrize('name', NAMES)
def test_bad_inputs_name_the_problem(name):
    model = tiny_model(name)
    with pytest.raises(ValueError, match='4-D.*3-D'):
        model(torch.randn(3, 32, 32))
    with pytest.raises(ValueError, match='3 input channels, got 1'):
        model(torch.randn(2, 1, 32, 32))
    with pytest.raises(ValueError, match='zero-sized image'):
        model(torch.randn(2, 3, 0, 32))
    with pytest.raises(ValueError, match='zero-sized image'):
        model.forward_intermediates(torch.randn(1, 3, 32, 0))
    with pytest.raises(TypeError, match='floating point'):
        model(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))
    with pytest.raises(TypeError, match='torch.Tensor'):
        model([[1.0]])


@pytest.mark.parametrize('name', NAMES)
def test_empty_batch_gives_empty_outputs_everywhere(name):
    """A batch of 0 images: forward, feature maps, NCHW intermediates and features_only all return empty tensors."""
    model = tiny_model(name).eval()
    x = torch.randn(0, 3, 32, 48)
    assert model(x).shape == (0, 7)
    maps = model.forward_intermediates(x, indices=2, intermediates_only=True)
    assert [tuple(m.shape) for m in maps] == [(0, model.embed_dim, 2, 3)] * 2
    assert model.forward_features_map(x).shape == (0, model.embed_dim, 2, 3)
    features = tiny_model(name, features_only=True, out_indices=(0, 1))
    assert all(f.shape == (0, model.embed_dim, 2, 3) for f in features(x))


@pytest.mark.parametrize('name', NAMES)
def test_torchscript_is_refused_by_name(name):
    """torch.jit.script / trace (and torch.onnx's TorchScript exporter) fail with a message that names TorchScript
    and the supported routes, for the model and for a features_only wrapper around it."""
    model = tiny_model(name).eval()
    x = torch.randn(1, 3, 32, 32)
    with pytest.raises(RuntimeError, match=r'do not support TorchScript \(torch.jit.script\).*torch.export'):
        torch.jit.script(model)
    with pytest.raises(RuntimeError, match=r'do not support TorchScript \(torch.jit.script\)'):
        torch.jit.script(tiny_model(name, features_only=True))
    with pytest.raises(RuntimeError, match=r'do not support TorchScript \(torch.jit.trace'):
        torch.jit.trace(model, x, check_trace=False)
    with pytest.raises(RuntimeError, match=r'torch.onnx.export\(dynamo=False\).*dynamo=True'):
        torch.onnx.export(model, (x,), io.BytesIO(), dynamo=False)
    assert torch.isfinite(model(x)).all()  # the eager model is unaffected


@pytest.mark.parametrize('name', NAMES)
@pytest.mark.parametrize('size', [(50, 37), (17, 90), (7, 5), (16, 16), (33, 16)])
def test_zero_padding_matches_f_pad(name, size, perturb):
    """A size that is not a multiple of the patch equals the explicitly zero-padded (bottom/right) image."""
    model = perturb(tiny_model(name)).eval()
    x = torch.randn(2, 3, *size)
    pad_h, pad_w = (-size[0]) % 16, (-size[1]) % 16
    padded = F.pad(x, (0, pad_w, 0, pad_h))
    with torch.no_grad():
        out = model.forward_features(x)
        ref = model.forward_features(padded)
        logits = model(x)
    grid = ((size[0] + pad_h) // 16, (size[1] + pad_w) // 16)
    assert out.shape == (2, grid[0] * grid[1], 32)
    assert torch.equal(out, ref)
    assert logits.shape == (2, 7) and torch.isfinite(logits).all()
    assert model.forward_features_map(x).shape == (2, 32, *grid)


@pytest.mark.parametrize('name', NAMES)
def test_one_token_grid(name, perturb):
    """An image smaller than one patch, or exactly one patch: a 1x1 grid (pos embed resized to 1x1)."""
    model = perturb(tiny_model(name)).eval()
    with torch.no_grad():
        for size in ((16, 16), (3, 11)):
            final, inter = model.forward_intermediates(torch.randn(2, 3, *size))
            assert final.shape == (2, 1, 32) and torch.isfinite(final).all()
            assert all(t.shape == (2, 32, 1, 1) for t in inter)
    out = model(torch.randn(1, 3, 16, 16, requires_grad=True))
    out.sum().backward()
    assert model.pos_embed.grad is not None and model.pos_embed.grad.abs().sum() > 0


@pytest.mark.parametrize('name', NAMES)
def test_pos_embed_resized_bicubic_without_antialias(name, perturb):
    model = perturb(tiny_model(name, img_size=64)).eval()  # stored 4x4 grid
    assert model.pos_grid == (4, 4)
    x = torch.randn(1, 3, 96, 80)  # 6x5 grid
    pe = model.pos_embed.reshape(1, 4, 4, 32).permute(0, 3, 1, 2)
    ref_pe = F.interpolate(pe, size=(6, 5), mode='bicubic', align_corners=False).flatten(2).transpose(1, 2)
    with torch.no_grad():
        tokens, grid = model._embed(x)
        patches = model.patch_embed(x).flatten(2).transpose(1, 2)
    assert grid == (6, 5)
    assert torch.allclose(tokens, patches + ref_pe, atol=1e-6)
    antialiased = resample_abs_pos_embed(model.pos_embed, (6, 5), (4, 4), num_prefix_tokens=0)
    assert not torch.allclose(tokens, patches + antialiased, atol=1e-4)  # timm's default would be wrong here
    # native grid: no resize; the resize is recomputed on every call
    with torch.no_grad():
        native, _ = model._embed(torch.randn(1, 3, 64, 64))
        again, _ = model._embed(x)
    assert torch.equal(again, tokens)
    assert native.shape == (1, 16, 32)


@pytest.mark.parametrize('name,kw', [('vrwkv_tiny_patch16_224', dict(embed_dim=8)),
                                     ('vrwkv6_tiny_patch16_224', dict(embed_dim=16, head_size=8))])
def test_64x64_token_grid(name, kw, perturb):
    """4096 tokens on CPU, forward and backward (v4 in both Bi-WKV modes)."""
    model = perturb(tiny_model(name, depth=1, patch_size=4, **kw))
    x = torch.randn(1, 3, 256, 256)
    out = model.forward_features(x)
    assert out.shape == (1, 4096, kw['embed_dim']) and torch.isfinite(out).all()
    out.square().mean().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    if hasattr(model, 'set_wkv_mode'):
        model.set_wkv_mode('original', 32)
        with torch.no_grad():
            orig = model.forward_features(x)
        assert torch.isfinite(orig).all() and not torch.allclose(orig, out.detach())


@pytest.mark.parametrize('name', NAMES)
def test_batch_independence_and_determinism(name, perturb):
    model = perturb(tiny_model(name)).eval()
    x = torch.randn(3, 3, 48, 64)
    with torch.no_grad():
        full = model(x)
        single = model(x[1:2])
    assert torch.allclose(full[1:2], single, atol=1e-5)


@pytest.mark.parametrize('name', NAMES)
def test_bf16_autocast_and_bf16_weights(name, perturb):
    model = perturb(tiny_model(name))
    x = torch.randn(2, 3, 48, 64)
    ref = model.forward_features(x).detach()
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = model.forward_features(x)
        loss = model(x).float().square().mean()
    assert ((out.float() - ref).abs().max() / ref.abs().max()).item() < 2e-2
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    half = perturb(tiny_model(name)).to(torch.bfloat16)
    assert half(x.bfloat16()).dtype == torch.bfloat16


def test_input_on_other_dtype_or_device_is_named():
    """A batch in another floating dtype than the weights (outside autocast) or on another device gets an error
    naming both and the fix, not the convolution's; under autocast the dtypes may differ."""
    model = tiny_model('vrwkv_tiny_patch16_224').eval()
    x = torch.randn(1, 3, 32, 32)
    with pytest.raises(TypeError, match=r'torch.float32 weights but the input batch is torch.float64'):
        model(x.double())
    with pytest.raises(TypeError, match=r'torch.bfloat16 weights but the input batch is torch.float32'):
        model.bfloat16()(x)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        assert model(x).dtype == torch.bfloat16
    model.float()
    with pytest.raises(ValueError, match=r'is on meta but the input batch is on cpu'):
        copy.deepcopy(model).to('meta')(x)
