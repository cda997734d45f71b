"""torch.fx feature extraction through timm: ``features_only=True, feature_cls='fx'``,
``timm.models.create_feature_extractor`` and ``get_graph_node_names`` on both backbone families (plain path, CPU;
the fused path inside a traced graph is ``test_fused_path.py::test_fx_graph_takes_the_fused_path_interpreter``)."""
from __future__ import annotations

import pytest
import torch
from timm.models import FeatureGraphNet, create_feature_extractor, get_graph_node_names

from model_helpers import tiny_model

NAMES = ['vrwkv_tiny_patch16_224', 'vrwkv_small_patch16_224', 'vrwkv6_tiny_patch16_224']


@pytest.mark.parametrize('name', NAMES)
def test_fx_feature_extractor_matches_eager(name, perturb):
    model = perturb(tiny_model(name, depth=3)).eval()
    graph = create_feature_extractor(model, ['blocks.1', 'norm', 'head'])
    # one trace serves every input size: non-square, not a multiple of the patch, batch 1, the nominal size
    for shape in [(2, 3, 50, 70), (1, 3, 16, 16), (1, 3, 224, 224)]:
        x = torch.randn(shape)
        with torch.no_grad():
            out = graph(x)
            block1 = model.forward_intermediates(x, indices=[1], output_fmt='NLC', intermediates_only=True)[0]
            torch.testing.assert_close(out['blocks.1'], block1)
            torch.testing.assert_close(out['norm'], model.forward_features(x))
            torch.testing.assert_close(out['head'], model(x))
    # gradients flow through the graph to the model's parameters
    model.zero_grad()
    graph(torch.randn(2, 3, 40, 56))['head'].square().mean().backward()
    assert model.blocks[0].spatial_mix.key.weight.grad is not None
    assert model.pos_embed.grad is not None and model.pos_embed.grad.abs().sum() > 0


@pytest.mark.parametrize('name', NAMES)
def test_features_only_fx(name, perturb):
    feats = tiny_model(name, depth=4, features_only=True, feature_cls='fx', out_indices=(1, 3))
    assert isinstance(feats, FeatureGraphNet)
    assert feats.feature_info.channels() == [32, 32] and feats.feature_info.reduction() == [16, 16]
    x = torch.randn(2, 3, 64, 80)
    with torch.no_grad():
        out = feats(x)
    assert [o.shape for o in out] == [(2, 20, 32)] * 2  # the blocks' (B, N, C) tokens
    # the same values as the model's own intermediates
    model = perturb(tiny_model(name, depth=4)).eval()
    with torch.no_grad():
        out = FeatureGraphNet(model, out_indices=(1, 3))(x)
        ref = model.forward_intermediates(x, indices=[1, 3], output_fmt='NLC', intermediates_only=True)
    for a, b in zip(out, ref):
        torch.testing.assert_close(a, b)


def test_graph_node_names_and_leaves():
    model = tiny_model('vrwkv6_tiny_patch16_224', depth=2)
    train_nodes, eval_nodes = get_graph_node_names(model)
    assert train_nodes == eval_nodes
    for node in ['check_image_batch', 'patch_embed', 'resample_pos_embed', 'blocks.0', 'blocks.1', 'norm', 'head']:
        assert node in eval_nodes, eval_nodes
    # blocks and the patch embedding are leaves: nothing inside them is a node
    assert not any(n.startswith('blocks.0.') or n.startswith('patch_embed.') for n in eval_nodes), eval_nodes


def test_fx_trace_under_no_grad():
    """Traced in inference mode, the model's in-place residual check must not look at the Proxy's data."""
    model = tiny_model('vrwkv_small_patch16_224', depth=2).eval()
    x = torch.randn(1, 3, 40, 56)
    with torch.no_grad():
        graph = create_feature_extractor(model, ['head'])
        torch.testing.assert_close(graph(x)['head'], model(x))


def test_fx_graph_keeps_the_input_checks():
    graph = create_feature_extractor(tiny_model('vrwkv_tiny_patch16_224', depth=1), ['head'])
    with pytest.raises(ValueError, match='expects 3 input channels, got 4'):
        graph(torch.randn(1, 4, 32, 32))
    with pytest.raises(TypeError, match='floating point'):
        graph(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))
