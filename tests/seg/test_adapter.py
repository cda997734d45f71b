"""ViT-Adapter neck: geometry helpers, the per-level depthwise conv, the original's parameter names and sizes, the
interleaving with the backbone's blocks, and the segmentor built around it (shapes, gradients, errors, training)."""
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from vision_rwkv.seg.adapter import ConvFFN, ViTAdapter, even_groups, reference_points
from vision_rwkv.seg.config import load_seg_config
from vision_rwkv.seg.segmentor import create_segmentor
from vision_rwkv.seg.train import build_segmentor

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "segmentation"


def _adapter_cfg(width=48, depth=4, heads=6, num_classes=4, **adapter):
    groups = [[i, i] for i in range(depth)] if depth == 4 else None
    return dict(backbone="vrwkv_tiny_patch16_224", backbone_kwargs=dict(img_size=64, depth=depth, embed_dim=width),
                num_classes=num_classes, decode_channels=32, aux_channels=16, neck="adapter",
                adapter=dict(deform_num_heads=heads, conv_inplane=8, interaction_indexes=groups, **adapter))


def test_reference_points_are_pixel_centres():
    ref = reference_points([(2, 3), (1, 1)], torch.device("cpu"))
    assert ref.shape == (1, 7, 2)
    torch.testing.assert_close(ref[0, :3], torch.tensor([[1 / 6, 0.25], [0.5, 0.25], [5 / 6, 0.25]]))
    torch.testing.assert_close(ref[0, 3:6], torch.tensor([[1 / 6, 0.75], [0.5, 0.75], [5 / 6, 0.75]]))
    torch.testing.assert_close(ref[0, 6], torch.tensor([0.5, 0.5]))


def test_even_groups():
    assert even_groups(12) == [[0, 2], [3, 5], [6, 8], [9, 11]]
    assert even_groups(24) == [[0, 5], [6, 11], [12, 17], [18, 23]]
    assert even_groups(5) == [[0, 1], [2, 2], [3, 3], [4, 4]]
    with pytest.raises(ValueError, match="3 blocks into 4"):
        even_groups(3)


def test_conv_ffn_convolves_each_level_as_a_map():
    torch.manual_seed(0)
    ffn = ConvFFN(6, 5)
    shapes = [(4, 6), (2, 3), (1, 2)]
    x = torch.randn(2, 24 + 6 + 2, 6)
    hidden = ffn.fc1(x)
    parts, start = [], 0
    for h, w in shapes:
        grid = hidden[:, start:start + h * w].reshape(2, h, w, 5).permute(0, 3, 1, 2)
        conv = F.conv2d(grid, ffn.dwconv.dwconv.weight, ffn.dwconv.dwconv.bias, padding=1, groups=5)
        parts.append(conv.permute(0, 2, 3, 1).reshape(2, h * w, 5))
        start += h * w
    expected = ffn.fc2(F.gelu(torch.cat(parts, 1)))
    torch.testing.assert_close(ffn(x, shapes), expected)


def _original_names(n_groups: int) -> set[str]:
    """The adapter's parameter names in the released checkpoints (below ``backbone.``), written out from the
    original module tree: stem convs 0/3/6 with norms 1/4/7, ConvModule-free Sequentials, mmcv-free heads."""
    bn = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    names = {"level_embed", "up.weight", "up.bias"}
    names |= {f"norm{i}.{p}" for i in range(1, 5) for p in bn}
    names |= {f"spm.stem.{i}.weight" for i in (0, 3, 6)} | {f"spm.stem.{i}.{p}" for i in (1, 4, 7) for p in bn}
    names |= {f"spm.conv{i}.0.weight" for i in (2, 3, 4)} | {f"spm.conv{i}.1.{p}" for i in (2, 3, 4) for p in bn}
    names |= {f"spm.fc{i}.{p}" for i in range(1, 5) for p in ("weight", "bias")}
    attn = [f"attn.{m}.{p}" for m in ("sampling_offsets", "attention_weights", "value_proj", "output_proj")
            for p in ("weight", "bias")]
    norms = [f"{n}.{p}" for n in ("query_norm", "feat_norm") for p in ("weight", "bias")]
    ffn = [f"ffn.{m}.{p}" for m in ("fc1", "dwconv.dwconv", "fc2", ) for p in ("weight", "bias")]
    ffn += ["ffn_norm.weight", "ffn_norm.bias"]
    for g in range(n_groups):
        names |= {f"interactions.{g}.injector.{n}" for n in attn + norms + ["gamma"]}
        names |= {f"interactions.{g}.extractor.{n}" for n in attn + norms + ffn}
    names |= {f"interactions.{n_groups - 1}.extra_extractors.{e}.{n}" for e in (0, 1) for n in attn + norms + ffn}
    return names


@pytest.mark.parametrize("size, params", [("tiny", 8.4), ("small", 29.3), ("base", 106.6), ("large", 351.9)])
def test_released_configs_have_the_original_names_and_sizes(size, params):
    """Backbone + adapter parameters of the shipped adapter configs equal the published segmentation model sizes
    (VRWKV-T / S / B / L: 8.4M / 29.3M / 106.6M / 351.9M), and the adapter's state-dict names are the original
    ones."""
    cfg = load_seg_config(CONFIGS / f"upernet_vrwkv_adapter_{size}_ade20k_512.yaml")
    model = build_segmentor(cfg, 150, load_pretrained=False)
    n = sum(p.numel() for m in (model.backbone, model.neck) for p in m.parameters())
    assert round(n / 1e6, 1) == params
    assert set(model.neck.state_dict()) == _original_names(4)
    depth = len(model.backbone.blocks)
    groups = model.neck.interaction_indexes
    assert model.out_indices == [depth // 4 * (i + 1) - 1 for i in range(4)] == [g[1] for g in groups]
    assert (model.backbone.wkv_mode, model.backbone.wkv_chunks) == ("original", 16)
    assert cfg.test.size_divisor == 32 and groups == even_groups(depth)


def test_blocks_run_in_order_between_the_interactions():
    """With the injectors' gamma at 0 (the init) the backbone tokens pass through unchanged, so the blocks see
    exactly what the plain backbone's blocks see; with gamma != 0 the injected features change them."""
    torch.manual_seed(0)
    model = create_segmentor(_adapter_cfg()).eval()
    seen = {}
    hooks = [b.register_forward_hook(lambda m, a, out, i=i: seen.__setitem__(i, out)) for i, b in
             enumerate(model.backbone.blocks)]
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        model.extract_features(x)
        adapter_outputs = dict(seen)
        plain = model.backbone.forward_intermediates(x, output_fmt="NLC", intermediates_only=True)
        for i, y in enumerate(plain):
            torch.testing.assert_close(adapter_outputs[i], y)
        for m in model.neck.interactions:
            m.injector.gamma.fill_(0.5)
        model.extract_features(x)
    for h in hooks:
        h.remove()
    assert not torch.allclose(seen[0], adapter_outputs[0])


def test_segmentor_shapes_gradients_and_checkpointing():
    torch.manual_seed(0)
    # no dropout / drop path: gradients with and without activation checkpointing are compared
    model = create_segmentor(dict(_adapter_cfg(), dropout=0.0))
    x = torch.randn(2, 3, 64, 96)  # non-square
    feats = model.extract_features(x)
    assert [tuple(f.shape) for f in feats] == [(2, 48, 16, 24), (2, 48, 8, 12), (2, 48, 4, 6), (2, 48, 2, 3)]
    target = torch.randint(0, 4, (2, 64, 96))
    target[1, :8] = 255
    loss = model(x, target)["loss"]
    loss.backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None]
    assert not no_grad, f"parameters without gradient: {no_grad}"
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model.backbone.set_grad_checkpointing(True)
    model(x, target)["loss"].backward()
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, grads[n], msg=n)
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 32, 32)).shape == (1, 4, 32, 32)  # batch 1, the smallest input


def test_vrwkv6_backbone():
    cfg = _adapter_cfg()
    cfg.update(backbone="vrwkv6_tiny_patch16_224")
    cfg["backbone_kwargs"]["head_size"] = 16
    model = create_segmentor(cfg).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 4, 64, 64)


@pytest.mark.parametrize("change, error", [
    (dict(backbone="vit_tiny_patch16_224", backbone_kwargs=dict(depth=4, dynamic_img_size=True)), "VRWKV / VRWKV6"),
    (dict(backbone_kwargs=dict(patch_size=8, depth=4, embed_dim=48)), "16-pixel patches"),
    (dict(strides=[8, 16, 32, 64]), "strides"),
    (dict(out_indices=[0, 1, 2, 3]), "interaction_indexes"),
    (dict(neck_channels=64), "neck_channels=64"),
    (dict(norm_intermediates=True), "norm_intermediates"),
    (dict(adapter=dict(n_heads=6)), r"unknown ViT-Adapter setting\(s\) \['n_heads'\]"),
    (dict(adapter=dict(interaction_indexes=[[0, 1], [3, 3]])), "consecutive groups"),
    (dict(adapter=dict(interaction_indexes=[[0, 1], [2]])), "pairs"),
    (dict(adapter=dict(deform_num_heads=5)), "multiple of n_heads=5"),
    (dict(neck="fpn"), "neck must be one of multilevel, adapter"),
])
def test_bad_settings_are_named(change, error):
    cfg = _adapter_cfg()
    cfg.update(change)
    with pytest.raises((ValueError, TypeError), match=error):
        create_segmentor(cfg)


def test_input_sides_must_be_multiples_of_32():
    model = create_segmentor(_adapter_cfg()).eval()
    with torch.no_grad(), pytest.raises(ValueError, match="multiples of 32, got 48x64.*size_divisor"):
        model(torch.randn(1, 3, 48, 64))


def test_tiny_adapter_segmentor_overfits():
    """A few images memorised: the adapter's path (not just the backbone's) carries the pixel labels."""
    torch.manual_seed(0)
    model = create_segmentor(_adapter_cfg(num_classes=3))
    x = torch.randn(2, 3, 32, 32)
    target = torch.zeros(2, 32, 32, dtype=torch.long)
    target[0, :16] = 1
    target[1, :, 16:] = 2
    target[1, :8, :8] = 1
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(60):
        opt.zero_grad()
        model(x, target)["loss"].backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        acc = (model(x).argmax(1) == target).float().mean().item()
    assert acc > 0.95


def test_adapter_module_is_not_tied_to_the_segmentor():
    """ViTAdapter takes the backbone per call: one adapter serves any backbone of its width and depth."""
    import timm
    import vision_rwkv  # noqa: F401

    backbone = timm.create_model("vrwkv_tiny_patch16_224", num_classes=0, depth=4, embed_dim=48).eval()
    adapter = ViTAdapter(48, 4, conv_inplane=8, interaction_indexes=even_groups(4)).eval()
    with torch.no_grad():
        feats = adapter(backbone, torch.randn(1, 3, 64, 32))
    assert [tuple(f.shape[-2:]) for f in feats] == [(16, 8), (8, 4), (4, 2), (2, 1)]
    assert not any(n.startswith("backbone") for n, _ in adapter.named_parameters())


def test_layer_decay_gives_the_adapter_the_heads_lr():
    """As the original's layer-decay constructor: every parameter outside the backbone's blocks / embedding (the
    adapter included) is in the top group (lr scale 1); block i gets decay ** (depth + 1 - (i + 1))."""
    from vision_rwkv.seg.segmentor import seg_param_groups
    model = create_segmentor(_adapter_cfg())
    groups = seg_param_groups(model, 0.01, 0.9)
    scale = {id(p): g["lr_scale"] for g in groups for p in g["params"]}
    assert all(scale[id(p)] == 1.0 for p in model.neck.parameters())
    assert scale[id(model.backbone.blocks[3].spatial_mix.key.weight)] == pytest.approx(0.9)
    assert scale[id(model.backbone.blocks[0].spatial_mix.key.weight)] == pytest.approx(0.9 ** 4)
    decays = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    assert decays[id(model.neck.level_embed)] == 0.01 and decays[id(model.neck.interactions[0].injector.gamma)] == 0


def test_training_step_traces_as_one_graph():
    """train.compile: the adapter segmentor's loss forward (and its eval forward) trace with fullgraph=True."""
    torch.manual_seed(0)
    model = create_segmentor(dict(_adapter_cfg(init_values=0.5), dropout=0.0))
    x, target = torch.randn(2, 3, 64, 32), torch.randint(0, 4, (2, 64, 32))
    compiled = torch.compile(model, backend="eager", fullgraph=True)
    loss = compiled(x, target)["loss"]
    assert loss.item() == pytest.approx(model(x, target)["loss"].item(), rel=1e-5)
    loss.backward()
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x))
