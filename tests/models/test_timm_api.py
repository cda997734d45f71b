"""timm citizenship, tested the way timm's tests/test_models.py tests its own models (tiny widths, CPU)."""
import pytest
import timm
import timm.optim
import torch
import torch.nn as nn

from model_helpers import ALL_NAMES, CLIP_TOWER_NAMES, V4_NAMES, V6_NAMES, family_of, tiny_model

pytestmark = pytest.mark.filterwarnings('ignore::UserWarning')


def test_registered():
    names = timm.list_models('vrwkv*')
    assert set(names) == set(ALL_NAMES + CLIP_TOWER_NAMES)
    for name in ALL_NAMES:
        assert timm.is_model(name)
        assert name in timm.list_pretrained('vrwkv*') or any(p.startswith(name + '.') for p in timm.list_pretrained())
    assert not set(timm.list_pretrained('vrwkv6_clip*'))  # weights come with whole RWKV-CLIP checkpoints


@pytest.mark.parametrize('name', CLIP_TOWER_NAMES)
def test_clip_towers(name, perturb):
    """The RWKV-CLIP image towers: pooled features, no classifier, CLIP normalisation, tiny forward/backward."""
    model = perturb(tiny_model(name, num_classes=0))
    cfg = model.pretrained_cfg
    assert cfg['num_classes'] == 0 and cfg['mean'] == timm.data.OPENAI_CLIP_MEAN
    assert model.patch_size == ((32, 32) if 'patch32' in name else (16, 16))
    x = torch.randn(2, 3, 64, 48)
    out = model(x)
    assert out.shape == (2, model.num_features)
    out.square().sum().backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize('name', ALL_NAMES)
def test_default_cfgs(name):
    model = tiny_model(name)
    cfg = model.pretrained_cfg
    assert cfg['architecture'] == name
    assert cfg['hf_hub_id'] == 'OpenGVLab/Vision-RWKV'
    expected_file = {
        'vrwkv_tiny_patch16_224': 'vrwkv_t_in1k_224.pth', 'vrwkv_small_patch16_224': 'vrwkv_s_in1k_224.pth',
        'vrwkv_base_patch16_224': 'vrwkv_b_in1k_224.pth', 'vrwkv_large_patch16_384': 'vrwkv_l_22kto1k_384.pth',
        'vrwkv6_tiny_patch16_224': 'vrwkv6_t_in1k_224.pth', 'vrwkv6_small_patch16_224': 'vrwkv6_s_in1k_224.pth',
        'vrwkv6_base_patch16_224': 'vrwkv6_b_in1k_224.pth'}[name]
    assert cfg['hf_hub_filename'] == expected_file
    assert cfg['num_classes'] == 1000
    assert cfg['input_size'] == ((3, 384, 384) if '384' in name else (3, 224, 224))
    # first_conv / classifier name real modules (timm uses them to adapt in_chans / num_classes)
    modules = dict(model.named_modules())
    assert isinstance(modules[cfg['first_conv']], nn.Conv2d)
    assert modules[cfg['classifier']] is model.get_classifier()
    if family_of(name) == 'vrwkv':
        from vision_rwkv.models.vrwkv import _pretrained_wkv_kwargs
        assert 'wkv_mode' not in cfg and 'wkv_chunks' not in cfg  # (plain timm cfgs: validate.py rebuilds them)
        hub = _pretrained_wkv_kwargs(name, None, {}, {}, file=None)  # the hub files' function
        assert hub == dict(wkv_mode='original', wkv_chunks=16 if 'large' in name else 32)
        assert model.wkv_mode == 'exact'  # new models default to the paper's formula

    # timm's test_model_default_cfgs: forward_features / reset_classifier / forward_head shapes
    x = torch.randn(1, 3, 40, 56)
    with torch.no_grad():
        feats = model.forward_features(x)
        assert feats.shape == (1, 3 * 4, model.num_features)
        assert model.forward_head(feats, pre_logits=True).shape[-1] == model.head_hidden_size
        model.reset_classifier(0)
        assert isinstance(model.get_classifier(), nn.Identity)
        assert model(x).shape == (1, model.head_hidden_size)
        model.reset_classifier(0, '')
        assert model(x).shape == (1, 12, model.head_hidden_size)  # no pooling: per-token
        model.reset_classifier(5, 'avg')
        assert model(x).shape == (1, 5)
        # timm's other token pools: 'max', and 'avgmax' (the mean of both)
        model.eval()  # (drop path)
        tokens = model.forward_features(x).clone()  # (the in-place inference path reuses its buffers)
        for pool, want in (('max', tokens.amax(1)), ('avgmax', 0.5 * (tokens.mean(1) + tokens.amax(1)))):
            model.reset_classifier(0, pool)
            got = model(x)
            torch.testing.assert_close(got, model.forward_head(tokens, pre_logits=True), atol=1e-4, rtol=1e-4)
            if model.head_hidden_size == model.num_features:  # (no pre-logits layer)
                torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match='global_pool'):
        model.reset_classifier(5, 'token')  # (no class token)


@pytest.mark.parametrize('name', ['vrwkv_small_patch16_224', 'vrwkv_large_patch16_384', 'vrwkv6_base_patch16_224'])
def test_forward_backward(name, perturb):
    """timm's test_model_forward / test_model_backward: output shape, finite, every parameter gets a gradient."""
    model = perturb(tiny_model(name, drop_path_rate=0.0))
    model.train()
    x = torch.randn(2, 3, 48, 32, requires_grad=True)
    out = model(x)
    assert out.shape == (2, 7)
    assert torch.isfinite(out).all()
    out.square().mean().backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()
               or p.grad.abs().sum() == 0]
    assert not no_grad
    assert x.grad is not None and x.grad.abs().sum() > 0


@pytest.mark.parametrize('name', ['vrwkv_tiny_patch16_224', 'vrwkv6_tiny_patch16_224'])
def test_forward_backward_under_fake_tensor_mode(name):
    """Shape-only tracing of a model (FakeTensorMode, as memory estimators and sharding planners run it) works,
    as it does for timm's ViT: no forward branch reads tensor values."""
    from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode
    model = tiny_model(name)
    with FakeTensorMode(allow_non_fake_inputs=True):
        out = model(torch.randn(2, 3, 48, 32))
        assert isinstance(out, FakeTensor) and out.shape == (2, 7)
        out.sum().backward()
    assert all(isinstance(p.grad, FakeTensor) for p in model.parameters())


@pytest.mark.parametrize('name', ['vrwkv_tiny_patch16_224', 'vrwkv_large_patch16_384', 'vrwkv6_small_patch16_224'])
def test_forward_intermediates(name, perturb):
    model = perturb(tiny_model(name)).eval()
    x = torch.randn(2, 3, 50, 33)
    grid = (4, 3)
    with torch.no_grad():
        final, inter = model.forward_intermediates(x)
        assert len(inter) == len(model.blocks)
        for feat, info in zip(inter, model.feature_info):
            assert feat.shape == (2, info['num_chs'], *grid)
            assert -(-x.shape[-2] // info['reduction']) == feat.shape[-2]  # padded: ceil
        # final features equal forward_features (timm's consistency check)
        assert torch.allclose(final, model.forward_features(x), atol=1e-6)
        # and are the normalised last block output
        tokens = inter[-1].flatten(2).transpose(1, 2)
        assert torch.allclose(final, model.norm(tokens), atol=1e-6)
        # NLC, norm, index selection, intermediates_only, stop_early
        nlc = model.forward_intermediates(x, indices=[0, -1], output_fmt='NLC', norm=True, intermediates_only=True)
        assert [t.shape for t in nlc] == [(2, 12, model.embed_dim)] * 2
        assert torch.allclose(nlc[1], final, atol=1e-6)
        assert torch.allclose(nlc[0], model.norm(inter[0].flatten(2).transpose(1, 2)), atol=1e-6)
        last2 = model.forward_intermediates(x, indices=2, intermediates_only=True)
        assert len(last2) == 2 and torch.equal(last2[0], inter[-2])
        early = model.forward_intermediates(x, indices=[0], stop_early=True, intermediates_only=True)
        assert torch.equal(early[0], inter[0])
        # timm ViT's dict form (and its return_prefix_tokens, a no-op without prefix tokens)
        as_dict = model.forward_intermediates(x, output_dict=True, return_prefix_tokens=True)
        assert set(as_dict) == {'image_intermediates', 'image_features'}
        assert torch.equal(as_dict['image_features'], final)
        assert torch.equal(as_dict['image_intermediates'][0], inter[0])
        only = model.forward_intermediates(x, indices=1, output_dict=True, intermediates_only=True)
        assert set(only) == {'image_intermediates'} and torch.equal(only['image_intermediates'][0], inter[-1])
    with pytest.raises(ValueError, match='output_fmt'):
        model.forward_intermediates(x, output_fmt='NHWC')


@pytest.mark.parametrize('name', ['vrwkv_base_patch16_224', 'vrwkv6_tiny_patch16_224'])
def test_features_only(name, perturb):
    model = tiny_model(name, depth=4, features_only=True)
    assert model.feature_info.channels() == [32] * 3
    assert model.feature_info.reduction() == [16] * 3
    x = torch.randn(2, 3, 64, 80)
    with torch.no_grad():
        feats = model(x)
    assert [f.shape for f in feats] == [(2, 32, 4, 5)] * 3
    # explicit indices; blocks after the last one are pruned
    model = tiny_model(name, depth=4, features_only=True, out_indices=(0, 2))
    assert len(model.model.blocks) == 3
    with torch.no_grad():
        feats = model(x)
    assert len(feats) == 2

    full = perturb(tiny_model(name, depth=4)).eval()
    with torch.no_grad():
        ref = full.forward_intermediates(x, indices=[1], intermediates_only=True)[0]
        pruned_idx = full.prune_intermediate_layers([1])
        assert pruned_idx == [1] and len(full.blocks) == 2
        assert isinstance(full.head, nn.Identity)
        assert torch.equal(full.forward_intermediates(x, indices=[1], intermediates_only=True)[0], ref)


def test_group_matcher_layer_decay():
    model = tiny_model('vrwkv_small_patch16_224')
    groups = timm.models.group_parameters(model, model.group_matcher())
    stem = groups[0]
    assert set(stem) == {'pos_embed', 'patch_embed.proj.weight', 'patch_embed.proj.bias'}
    opt = timm.optim.create_optimizer_v2(model, 'adamw', lr=1e-3, weight_decay=0.05, layer_decay=0.9)
    scale_of = {}
    name_of = {id(p): n for n, p in model.named_parameters()}
    for group in opt.param_groups:
        for p in group['params']:
            scale_of[name_of[id(p)]] = (group['lr_scale'], group['weight_decay'])
    # like timm's ViT: stem = layer 0, block i = layer i + 1 (the final norm joins the last block), head last
    layer_max = len(model.blocks) + 1
    assert scale_of['pos_embed'][0] == pytest.approx(0.9 ** layer_max)
    assert scale_of['patch_embed.proj.weight'][0] == pytest.approx(0.9 ** layer_max)
    assert scale_of['blocks.0.spatial_mix.key.weight'][0] == pytest.approx(0.9 ** (layer_max - 1))
    assert scale_of['blocks.2.channel_mix.value.weight'][0] == pytest.approx(0.9 ** (layer_max - 3))
    assert scale_of['norm.weight'][0] == pytest.approx(0.9)
    assert scale_of['head.weight'][0] == pytest.approx(1.0)
    # weight decay: off for pos_embed and the token-mix parameters, on for projection matrices
    assert scale_of['pos_embed'][1] == 0.0
    assert scale_of['blocks.1.spatial_mix.spatial_decay'][1] == 0.0
    assert scale_of['blocks.1.spatial_mix.key.weight'][1] == 0.05


def test_no_weight_decay_v6():
    model = tiny_model('vrwkv6_tiny_patch16_224')
    nwd = model.no_weight_decay()
    for suffix in ('time_faaaa', 'time_maa_w1', 'time_maa_w2', 'time_decay_w1', 'time_decay', 'time_maa_g'):
        assert f'blocks.0.spatial_mix.{suffix}' in nwd
    assert 'pos_embed' in nwd
    assert 'blocks.0.spatial_mix.key.weight' not in nwd
    assert all(n in dict(model.named_parameters()) for n in nwd)


@pytest.mark.parametrize('name', ['vrwkv_small_patch16_224', 'vrwkv6_tiny_patch16_224'])
def test_grad_checkpointing_same_grads(name, perturb):
    """Checkpointed blocks give identical outputs and gradients, drop path included (RNG state is replayed)."""
    x = torch.randn(2, 3, 32, 48)
    results = []
    for ckpt in (False, True):
        torch.manual_seed(0)
        model = perturb(tiny_model(name, drop_path_rate=0.5)).train()
        model.set_grad_checkpointing(ckpt)
        torch.manual_seed(123)
        out = model(x)
        out.square().mean().backward()
        results.append((out.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    (out0, g0), (out1, g1) = results
    assert torch.equal(out0, out1)
    for n in g0:
        assert torch.allclose(g0[n], g1[n], rtol=1e-5, atol=1e-7), n


def test_grad_checkpointing_is_used(monkeypatch):
    import vision_rwkv.models._base as base
    calls = []
    real = base.checkpoint

    def counting(*args, **kwargs):
        calls.append(kwargs.get('use_reentrant'))
        return real(*args, **kwargs)

    monkeypatch.setattr(base, 'checkpoint', counting)
    model = tiny_model('vrwkv_tiny_patch16_224')
    model.set_grad_checkpointing()
    model(torch.randn(1, 3, 32, 32)).sum().backward()
    assert calls == [False] * 3
    with torch.no_grad():  # nothing to recompute in inference
        model(torch.randn(1, 3, 32, 32))
    assert len(calls) == 3


@pytest.mark.parametrize('name', V4_NAMES[:1] + V6_NAMES[:1])
def test_kwargs_override(name):
    """Any constructor kwarg goes through timm.create_model (False/0 stand for None, which timm drops)."""
    model = tiny_model(name, post_norm=True, init_values=0.5, key_norm=True, mlp_ratio=2.0, drop_path_rate=0.2,
                       img_size=96, patch_size=8, in_chans=1)
    assert model.blocks[0].post_norm
    assert torch.equal(model.blocks[1].ls1.gamma, torch.full((32,), 0.5))
    assert model.blocks[2].spatial_mix.key_norm is not None
    assert model.blocks[0].channel_mix.key.out_features == 64
    assert model.blocks[2].drop_path1.drop_prob == pytest.approx(0.2)
    assert model.pos_embed.shape == (1, 144, 32)
    assert model(torch.randn(1, 1, 24, 24)).shape == (1, 7)
    large = tiny_model('vrwkv_large_patch16_384', init_values=False, head_hidden_size=0, pos_embed_grid=0)
    assert isinstance(large.blocks[0].ls1, nn.Identity) and isinstance(large.pre_logits, nn.Identity)
    assert large.pos_grid == (24, 24)


@pytest.mark.filterwarnings('default::UserWarning')
@pytest.mark.parametrize('name', V4_NAMES[:1] + V6_NAMES[:1])
def test_dynamic_img_size_kwargs(name):
    """timm ViT's dynamic_img_size / dynamic_img_pad are accepted (these models always take any size, and say so
    as ViT's flag does); False - ViT's default, carried over in configs - warns that the model stays dynamic (it
    was an error)."""
    model = tiny_model(name, dynamic_img_size=True, dynamic_img_pad=True)
    assert model(torch.randn(1, 3, 21, 37)).shape == (1, 7)
    assert model.dynamic_img_size is True and model.patch_embed.dynamic_img_pad is True
    for key in ('dynamic_img_size', 'dynamic_img_pad'):
        with pytest.warns(UserWarning, match='always takes any image size'):
            other = tiny_model(name, **{key: False})
        assert other(torch.randn(1, 3, 21, 37)).shape == (1, 7)


@pytest.mark.parametrize('name', V4_NAMES[:1] + V6_NAMES[:1])
def test_device_dtype_and_reset_classifier_follow_the_model(name):
    """timm's create_model(device=, dtype=) builds the parameters there and in that dtype (it was a TypeError), and
    reset_classifier makes the new head on the model's device in its dtype, as ViT's (it made an fp32 head that
    failed the next bf16 forward)."""
    model = tiny_model(name, dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert all(p.is_meta for p in tiny_model(name, device='meta').parameters())
    model.eval().reset_classifier(5)
    assert model.head.weight.dtype == torch.bfloat16
    with torch.no_grad():
        assert model(torch.randn(1, 3, 32, 32, dtype=torch.bfloat16)).shape == (1, 5)
    assert 'dtype' not in model._model_args and 'device' not in model._model_args


@pytest.mark.parametrize('name', V4_NAMES[:1] + V6_NAMES[:1])
def test_patch_embed_reports_timms_grid_attributes(name):
    """timm ViT's PatchEmbed attributes that downstream code reads to fold tokens into maps: the nominal img_size,
    grid_size, num_patches, dynamic_feat_size, feat_ratio; they follow set_input_size."""
    model = tiny_model(name, img_size=(48, 80))
    pe = model.patch_embed
    p = pe.patch_size[0]
    assert pe.img_size == (48, 80) and pe.grid_size == (48 // p, 80 // p) and pe.num_patches == (48 // p) * (80 // p)
    assert pe.dynamic_feat_size((50, 70)) == model.feature_grid((50, 70)) and pe.feat_ratio() == p
    assert pe.strict_img_size is False
    model.set_input_size((96, 32))
    assert pe.img_size == (96, 32) and pe.grid_size == (96 // p, 32 // p)


@pytest.mark.parametrize('name', V4_NAMES[:1] + V6_NAMES[:1])
def test_pretrained_strict_false_loads_what_fits(name, tmp_path):
    """timm's pretrained_strict=False (model surgery: a deeper model from a shallower checkpoint) loads the tensors
    that fit and warns about the rest (the filter raised on any mismatch); strict stays an error."""
    from vision_rwkv.models.convert import CheckpointMismatchError
    src = tiny_model(name, depth=2)
    path = tmp_path / 'shallow.pth'
    torch.save(src.state_dict(), path)
    with pytest.warns(UserWarning, match='loading non-strictly'):
        deep = tiny_model(name, depth=3, pretrained=True, pretrained_strict=False,
                          pretrained_cfg_overlay=dict(file=str(path)))
    assert torch.equal(deep.blocks[1].norm1.weight, src.blocks[1].norm1.weight) and len(deep.blocks) == 3
    with pytest.raises(CheckpointMismatchError, match='missing keys'):
        tiny_model(name, depth=3, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))


@pytest.mark.parametrize('name', ['vrwkv_tiny_patch16_224', 'vrwkv6_tiny_patch16_224'])
def test_set_input_size(name, perturb):
    """timm's set_input_size: the stored position embedding moves to the new grid once; outputs at that size are
    unchanged (the per-forward resize did the same), a new patch size resamples the kernel, bad sizes raise."""
    model = perturb(tiny_model(name)).eval()
    x = torch.randn(2, 3, 40, 72)
    with torch.no_grad():
        before = model(x)
        pos_before = model.pos_embed.clone()
        model.set_input_size((40, 72))
        assert model.pos_grid == (3, 5) and model.pos_embed.shape == (1, 15, model.embed_dim)
        assert torch.allclose(model(x), before, atol=1e-6)
        assert model.pretrained_cfg['input_size'] != (3, 40, 72)  # the checkpoint's metadata stays
        assert not torch.equal(model.pos_embed[:, :4], pos_before[:, :4])  # really resampled, not sliced
        assert model.pos_embed.requires_grad

        kernel = model.patch_embed.proj.weight.clone()
        model.set_input_size(patch_size=32)
        assert model.patch_embed.proj.weight.shape[-2:] == (32, 32)
        assert model.patch_embed.proj.weight.shape[:2] == kernel.shape[:2]
        assert model.pos_grid == (2, 3) and model.feature_info[-1]['reduction'] == 32
        assert model.forward_features(x).shape == (2, 6, model.embed_dim)
        # FlexiViT property of the resampled kernel: a constant patch keeps its embedding
        flat = torch.ones(1, 3, 32, 32)
        emb16 = torch.nn.functional.conv2d(flat[..., :16, :16], kernel, stride=16).flatten()
        emb32 = (model.patch_embed.proj(flat) - model.patch_embed.proj.bias[:, None, None]).flatten()
        assert torch.allclose(emb32, emb16, rtol=1e-3, atol=1e-4)
    with pytest.raises(ValueError, match='img_size'):
        model.set_input_size((0, 32))
    with pytest.raises(ValueError, match='patch_size'):
        model.set_input_size(patch_size=-1)


@pytest.mark.parametrize("size, args", [(256, dict(patch_size=16)), ((320, 192), dict(patch_size=None)),
                                         (None, dict(patch_size=8))])
def test_input_size_record_fallback_matches_timm(size, args):
    """The record kept for timm < 1.0.31 (no timm.models._input) is the one timm's own helper writes."""
    from vision_rwkv.models import _base

    timm_input = pytest.importorskip("timm.models._input")
    ours, theirs = nn.Module(), nn.Module()
    for m in (ours, theirs):
        m._traits, m._model_args = {"first_conv": "stem"}, {"img_size": (224, 224), "embed_dim": 192}
    _base._record_input_size(ours, size, **args)
    timm_input.update_model_input_size(theirs, size, **args)
    assert ours._traits == theirs._traits and ours._model_args == theirs._model_args


@pytest.mark.parametrize("name", ["vrwkv_tiny_patch16_224", "vrwkv_small_patch16_224"])
def test_in_place_inference_path_matches_and_keeps_block_hooks(monkeypatch, name):
    """Eager inference on the fused path (forced on CPU: the fused ops' references run) updates the residual stream
    in place, calling the blocks without ``__call__`` (pre-norm chain, post-norm loop); the image is left unchanged,
    the result equals the per-block forward of autograd mode, and a forward hook on a block switches the post-norm
    loop back to calling the blocks (the hook runs)."""
    from vision_rwkv.ops import fused

    torch.manual_seed(0)
    model = timm.create_model(name, embed_dim=16, depth=2, img_size=32).eval()
    monkeypatch.setattr(fused, "fused_enabled", lambda x: True)
    x = torch.randn(2, 3, 32, 32)
    x0 = x.clone()
    ref = model.forward_features(x).detach()  # autograd mode: no in-place adds
    with torch.no_grad():
        out = model.forward_features(x)
        torch.testing.assert_close(out, ref)
        calls = []
        handle = model.blocks[1].register_forward_hook(lambda m, i, o: calls.append(1))
        hooked = model.forward_features(x)
        handle.remove()
    torch.testing.assert_close(hooked, ref)
    torch.testing.assert_close(x, x0, rtol=0, atol=0)
    if model.blocks[0].post_norm:
        assert calls == [1]


def test_feature_reduction_of_a_non_square_patch_is_its_larger_side():
    """timm's ViT reports max(patch_size) as the reduction of a non-square patch (8x16: 16); so do ours."""
    model = timm.create_model('vrwkv_tiny_patch16_224', embed_dim=32, depth=2, patch_size=(8, 16),
                              features_only=True, out_indices=(-1,))
    assert model.feature_info.reduction() == [16]
    backbone = tiny_model('vrwkv6_tiny_patch16_224', patch_size=(16, 8))
    assert {info['reduction'] for info in backbone.feature_info} == {16}
    backbone.set_input_size(64, patch_size=(4, 8))
    assert {info['reduction'] for info in backbone.feature_info} == {8}
