"""Parity with the ORIGINAL implementations (../shared/fixtures, see its README): the fixture's original state dict
goes through the converter and our model must reproduce the original outputs on every input.

v4: "original" mode (P=32) vs ``outputs_kernel_closed_form``, "exact" mode vs ``outputs_exact_eq5`` (never
``outputs``: the upstream 2025 kernel misbehaves). v6: ``outputs`` and the per-block intermediates.
"""
import pytest
import torch

from vision_rwkv.models import VRWKV, VRWKV6, build_from_original

TOL = 1e-5  # max-abs error relative to the max-abs target; a from-scratch implementation reaches ~1e-6


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    assert out.shape == ref.shape, (out.shape, ref.shape)
    return ((out.double() - ref.double()).abs().max() / ref.double().abs().max()).item()


@pytest.fixture(scope='module')
def v4_fixture(load_fixture):
    return load_fixture('vrwkv4_prenorm.pt')


@pytest.fixture(scope='module')
def v6_fixture(load_fixture):
    return load_fixture('vrwkv6.pt')


def test_v4_builds_from_original_config(v4_fixture):
    model = build_from_original(v4_fixture['config'], v4_fixture['state_dict'])
    assert isinstance(model, VRWKV)
    assert model.embed_dim == 64 and len(model.blocks) == 3 and model.num_classes == 0
    assert not model.training
    assert (model.wkv_mode, model.wkv_chunks) == ('original', 32)
    assert not model.blocks[0].post_norm and isinstance(model.blocks[0].ls1, torch.nn.Identity)


def test_v4_embedding_matches(v4_fixture):
    """Patch embed + position embedding (the one v4 intermediate that is a valid target)."""
    model = build_from_original(v4_fixture['config'], v4_fixture['state_dict'])
    with torch.no_grad():
        tokens, grid = model._embed(v4_fixture['inputs']['x_64x64'])
    assert grid == (4, 4)
    assert rel_err(tokens, v4_fixture['intermediates_x_64x64']['embed_plus_pos']) < TOL


@pytest.mark.parametrize('mode,target', [('original', 'outputs_kernel_closed_form'), ('exact', 'outputs_exact_eq5')])
def test_v4_outputs_match(v4_fixture, mode, target):
    model = build_from_original(v4_fixture['config'], v4_fixture['state_dict'], wkv_mode=mode, wkv_chunks=32)
    assert set(v4_fixture['inputs']) == {'x_64x64', 'x_96x80', 'x_128x112'}
    for name, x in v4_fixture['inputs'].items():
        with torch.no_grad():
            out = model.forward_features_map(x)
        err = rel_err(out, v4_fixture[target][name])
        assert err < TOL, f'{mode} mode, input {name}: relative error {err:.2e}'


def test_v4_modes_differ_and_mode_switch(v4_fixture):
    """The two modes are different functions (so the parity tests above discriminate), and set_wkv_mode switches."""
    model = build_from_original(v4_fixture['config'], v4_fixture['state_dict'], wkv_mode='exact')
    x = v4_fixture['inputs']['x_128x112']
    with torch.no_grad():
        exact = model.forward_features_map(x)
        model.set_wkv_mode('original', 32)
        original = model.forward_features_map(x)
        model.set_wkv_mode('original', 16)
        original16 = model.forward_features_map(x)
    ref = v4_fixture['outputs_kernel_closed_form']['x_128x112']
    assert rel_err(exact, ref) > 10 * TOL
    assert rel_err(original16, ref) > 10 * TOL
    assert rel_err(original, ref) < TOL
    assert all(b.spatial_mix.wkv_chunks == 16 for b in model.blocks)
    with pytest.raises(ValueError, match='wkv_mode'):
        model.set_wkv_mode('cuda_new')
    with pytest.raises(ValueError, match='wkv_chunks'):
        model.set_wkv_mode('original', 0)


def test_v6_outputs_match(v6_fixture):
    model = build_from_original(v6_fixture['config'], v6_fixture['state_dict'])
    assert isinstance(model, VRWKV6) and model.head_size == 64
    for name, x in v6_fixture['inputs'].items():
        with torch.no_grad():
            out = model.forward_features_map(x)
        err = rel_err(out, v6_fixture['outputs'][name])
        assert err < TOL, f'input {name}: relative error {err:.2e}'


def test_v6_intermediates_match(v6_fixture):
    model = build_from_original(v6_fixture['config'], v6_fixture['state_dict'])
    inter = v6_fixture['intermediates_x_64x64']
    x = v6_fixture['inputs']['x_64x64']
    with torch.no_grad():
        tokens, _ = model._embed(x)
        final, blocks = model.forward_intermediates(x, output_fmt='NLC')
    assert rel_err(tokens, inter['embed_plus_pos']) < TOL
    for i, block_out in enumerate(blocks):  # raw block outputs (before the final norm)
        assert rel_err(block_out, inter[f'block{i}']) < TOL, f'block {i}'
    assert rel_err(final, model.norm(blocks[-1])) < 1e-6
