"""Segmentor: shapes for several timm backbones, losses with ignore pixels, gradients, weights loading, overfitting."""
import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from vision_rwkv.seg.metrics import SegMetric
from vision_rwkv.seg.segmentor import Segmentor, create_segmentor, evenly_spaced_indices, load_backbone_weights


def test_evenly_spaced_indices():
    assert evenly_spaced_indices(12) == [2, 5, 8, 11]
    assert evenly_spaced_indices(24) == [5, 11, 17, 23]
    assert evenly_spaced_indices(4) == [0, 1, 2, 3]
    assert evenly_spaced_indices(2) == [0, 0, 1, 1]


@pytest.mark.parametrize("backbone", ["vrwkv_tiny_patch16_224", "vrwkv6_tiny_patch16_224", "vit_tiny_patch16_224"])
def test_forward_shapes_loss_and_grads(backbone, tiny_model_cfg):
    model = create_segmentor(tiny_model_cfg(backbone, depth=2, num_classes=5))
    assert model.feature_reductions == [8, 8, 8, 8] and model.neck.scales == [2.0, 1.0, 0.5, 0.25]
    x = torch.randn(2, 3, 40, 24)  # non-square, not a multiple of 32
    target = torch.randint(0, 5, (2, 40, 24))
    target[0, :5] = 255
    losses = model(x, target)
    assert set(losses) == {"loss", "loss_decode", "loss_aux"}
    assert losses["loss"].item() == pytest.approx(losses["loss_decode"].item() + 0.4 * losses["loss_aux"].item(),
                                                  rel=1e-5)
    losses["loss"].backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None]
    assert not no_grad, f"parameters without gradient (DDP would need find_unused_parameters): {no_grad}"
    model.eval()
    with torch.no_grad():
        logits = model(x)
    assert logits.shape == (2, 5, 40, 24) and torch.isfinite(logits).all()


def test_grad_checkpointing_gives_the_same_gradients(tiny_model_cfg):
    """model.grad_checkpointing (mmseg's with_cp): the backbone recomputes its blocks in the backward, with the same
    loss and gradients."""
    grads = []
    for ckpt in (False, True):
        torch.manual_seed(0)
        model = create_segmentor(tiny_model_cfg("vrwkv_tiny_patch16_224", depth=2, num_classes=5, dropout=0.0,
                                                grad_checkpointing=ckpt))
        assert model.backbone.grad_checkpointing is ckpt
        x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
        target = torch.randint(0, 5, (2, 32, 32), generator=torch.Generator().manual_seed(2))
        model(x, target)["loss"].backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n], rtol=1e-5, atol=1e-6, msg=n)


def test_hierarchical_timm_backbone():
    """A ConvNeXt (strides 4..32 already) gets identity resampling in the neck."""
    import timm
    backbone = timm.create_model("convnext_atto", num_classes=0, dims=(16, 16, 32, 32), depths=(1, 1, 1, 1))
    model = Segmentor(backbone, num_classes=3, decode_channels=16, aux_channels=8, neck_channels=16)
    assert model.out_indices == [0, 1, 2, 3] and model.neck.scales == [1.0, 1.0, 1.0, 1.0]
    model.eval()
    assert model(torch.randn(1, 3, 64, 96)).shape == (1, 3, 64, 96)


def test_patch14_backbone_resizes_in_the_neck():
    """Patch 14 (DINOv2, EVA-02, CLIP-L/14) -> strides 4..32 are scales 3.5 .. 0.4375: resized bilinearly."""
    import timm
    backbone = timm.create_model("vit_tiny_patch16_224", patch_size=14, img_size=56, depth=4, embed_dim=32,
                                 num_heads=2, num_classes=0, dynamic_img_size=True)
    model = Segmentor(backbone, num_classes=3, decode_channels=16, aux_channels=8, neck_channels=16)
    assert model.neck.scales == [3.5, 1.75, 0.875, 0.4375]
    feats = model.extract_features(torch.randn(1, 3, 56, 84))
    assert [tuple(f.shape[-2:]) for f in feats] == [(14, 21), (7, 10), (3, 5), (1, 2)]
    model.eval()
    assert model(torch.randn(1, 3, 70, 42)).shape == (1, 3, 70, 42)


@pytest.mark.parametrize("avg_non_ignore", [False, True])
def test_loss_matches_cross_entropy_with_ignore(tiny_model_cfg, avg_non_ignore):
    """mmseg's CrossEntropyLoss: the class-weighted per-pixel losses summed (ignored pixels count as 0), divided by
    the number of all pixels by default, by the number of non-ignored pixels with avg_non_ignore (with class
    weights too: a pixel count, not torch's sum of the pixels' class weights)."""
    model = create_segmentor(tiny_model_cfg(num_classes=3, avg_non_ignore=avg_non_ignore))
    logits = torch.randn(2, 3, 8, 8)
    target = torch.randint(0, 3, (2, 32, 32))
    target[:, :10] = 255
    up = F.interpolate(logits, size=(32, 32), mode="bilinear", align_corners=False)
    w = torch.tensor([0.2, 1.0, 3.0])
    # mmseg by hand: per-pixel -w[y] * log_softmax[y], 0 on ignored pixels; summed; / pixel count
    valid = target != 255
    y = target.clamp(max=2)
    nll = -up.log_softmax(1).gather(1, y[:, None])[:, 0] * valid
    denom = valid.sum() if avg_non_ignore else target.numel()
    ref, ref_w = nll.sum() / denom, (nll * w[y]).sum() / denom
    if avg_non_ignore:
        assert ref.item() == pytest.approx(F.cross_entropy(up, target, ignore_index=255).item(), rel=1e-5)
        assert ref_w.item() != pytest.approx(F.cross_entropy(up, target, weight=w, ignore_index=255).item(), rel=1e-2)
    assert model.seg_loss(logits, target).item() == pytest.approx(ref.item(), rel=1e-5)
    all_ignored = torch.full((2, 32, 32), 255)
    assert model.seg_loss(logits, all_ignored).item() == 0.0  # not NaN
    weighted = create_segmentor(tiny_model_cfg(num_classes=3, class_weight=w.tolist(), avg_non_ignore=avg_non_ignore))
    assert weighted.seg_loss(logits, target).item() == pytest.approx(ref_w.item(), rel=1e-5)
    assert weighted.seg_loss(logits, all_ignored).item() == 0.0
    # no data-dependent branch or indexing: a compiled training step keeps the loss in its graph
    for m in (model, weighted):
        traced = torch.compile(m.seg_loss, backend="eager", fullgraph=True)
        for t in (target, all_ignored):
            assert traced(logits, t).item() == pytest.approx(m.seg_loss(logits, t).item(), rel=1e-6, abs=0)
    assert "class_weight" not in weighted.state_dict()  # a loss setting, not a weight
    with pytest.raises(ValueError, match="class_weight"):
        create_segmentor(tiny_model_cfg(num_classes=3, class_weight=[1.0, 2.0]))


def test_explicit_out_indices_and_errors(tiny_model_cfg):
    model = create_segmentor(tiny_model_cfg(depth=4, out_indices=[-1, 1, 2, 3]))
    assert model.out_indices == [3, 1, 2, 3]
    with pytest.raises(ValueError, match="out of range"):
        create_segmentor(tiny_model_cfg(depth=2, out_indices=[0, 1, 2, 3]))
    with pytest.raises(TypeError, match="forward_intermediates"):
        Segmentor(nn.Conv2d(3, 8, 1), num_classes=2)
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        model(torch.randn(3, 32, 32))
    with pytest.raises(ValueError, match="3 input channels"):  # the backbone's own check
        model(torch.randn(1, 4, 32, 32))
    with pytest.raises(ValueError, match="num_classes"):
        create_segmentor({k: v for k, v in tiny_model_cfg().items() if k != "num_classes"})


def test_no_aux_head_in_eval_and_sync_bn_conversion(tiny_model_cfg):
    model = create_segmentor(tiny_model_cfg())
    model.eval()
    logits, aux = model.forward_heads(torch.randn(1, 3, 32, 32))
    assert aux is None and logits.shape[-2:] == (8, 8)  # stride 4
    converted = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    assert not any(type(m) is nn.BatchNorm2d for m in converted.modules())
    assert any(isinstance(m, nn.SyncBatchNorm) for m in converted.decode_head.modules())


def test_load_backbone_weights(tmp_path, tiny_model_cfg):
    import timm
    src = timm.create_model("vrwkv_tiny_patch16_224", img_size=32, patch_size=8, depth=2, embed_dim=32,
                            num_classes=7)
    with torch.no_grad():
        src.pos_embed.normal_()
    path = tmp_path / "backbone.pth"
    torch.save({"state_dict": {"module." + k: v for k, v in src.state_dict().items()}}, path)
    model = create_segmentor(tiny_model_cfg(pretrained=str(path)))
    torch.testing.assert_close(model.backbone.pos_embed, src.pos_embed)
    torch.testing.assert_close(model.backbone.blocks[1].spatial_mix.key.weight, src.blocks[1].spatial_mix.key.weight)
    from safetensors.torch import save_file
    bad = {k: v for k, v in src.state_dict().items() if "blocks.1" not in k}
    save_file(bad, str(tmp_path / "bad.safetensors"))
    with pytest.raises((RuntimeError, KeyError), match="missing keys"):
        create_segmentor(tiny_model_cfg(pretrained=str(tmp_path / "bad.safetensors")))
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_backbone_weights(model.backbone, tmp_path / "nope.pth")


def test_missing_layer_scale_keeps_its_init(tmp_path, tiny_model_cfg):
    """The original segmentation recipe adds layer scale (init 1.0) to VRWKV-T, whose ImageNet checkpoint has none:
    the gammas keep their init; any other missing key is still an error."""
    import timm
    src = timm.create_model("vrwkv_tiny_patch16_224", img_size=32, patch_size=8, depth=2, embed_dim=32)
    torch.save(src.state_dict(), tmp_path / "no_ls.pth")
    cfg = tiny_model_cfg(pretrained=str(tmp_path / "no_ls.pth"))
    cfg["backbone_kwargs"]["init_values"] = 0.5
    model = create_segmentor(cfg)
    assert torch.all(model.backbone.blocks[1].ls2.gamma == 0.5)
    torch.testing.assert_close(model.backbone.blocks[1].spatial_mix.key.weight, src.blocks[1].spatial_mix.key.weight)
    torch.save({k: v for k, v in src.state_dict().items() if k != "blocks.0.norm1.weight"}, tmp_path / "bad.pth")
    with pytest.raises((RuntimeError, KeyError), match=r"1 missing keys \(blocks\.0\.norm1\.weight\)"):
        create_segmentor(dict(cfg, pretrained=str(tmp_path / "bad.pth")))


@pytest.mark.parametrize("layout", ["ours", "original_mmcls", "original_plain"])
def test_load_backbone_weights_resizes_and_converts(tmp_path, tiny_model_cfg, layout):
    """An ImageNet checkpoint at another grid (224 -> 512 in the ADE configs) has its position embedding resampled,
    and the original repos' layouts (mmcls `backbone.` keys with a classifier, or bare) are converted, as
    timm's pretrained path does - through the VRWKV filter, which lives outside the model's module."""
    import timm
    from vision_rwkv.models.convert import ours_to_original
    from vision_rwkv.models._layers import resample_pos_embed
    src = timm.create_model("vrwkv_tiny_patch16_224", img_size=16, patch_size=8, depth=2, embed_dim=32,
                            num_classes=5)
    with torch.no_grad():
        src.pos_embed.normal_()
    sd = src.state_dict()
    if layout != "ours":
        sd = ours_to_original(sd)
        if layout == "original_mmcls":
            sd = {"state_dict": {("" if k.startswith("head.") else "backbone.") + k: v for k, v in sd.items()}}
        else:
            sd = {k: v for k, v in sd.items() if not k.startswith("head.")}
    else:
        sd = {"model": sd}
    torch.save(sd, tmp_path / "in1k.pth")
    model = create_segmentor(tiny_model_cfg(img=40, pretrained=str(tmp_path / "in1k.pth")))
    assert model.backbone.pos_embed.shape[1] == 25
    torch.testing.assert_close(model.backbone.pos_embed, resample_pos_embed(src.pos_embed, (2, 2), (5, 5)))
    torch.testing.assert_close(model.backbone.blocks[1].spatial_mix.key.weight, src.blocks[1].spatial_mix.key.weight)
    torch.testing.assert_close(model.backbone.blocks[0].spatial_mix.spatial_decay,
                               src.blocks[0].spatial_mix.spatial_decay)


def test_tiny_segmentor_overfits_a_few_images(tiny_model_cfg):
    """4 Shapes images, 9 classes: training on them alone must reach mIoU ~100% (decoder at stride 2 so that
    32px shape boundaries are representable)."""
    from vision_rwkv.data.shapes import make_sample
    torch.manual_seed(0)
    samples = [make_sample(i, "train", image_size=32) for i in range(4)]
    img = torch.stack([torch.from_numpy(s.image).permute(2, 0, 1).float() / 127.5 - 1 for s in samples])
    mask = torch.stack([torch.from_numpy(s.mask.astype(np.int64)) for s in samples])
    model = create_segmentor(tiny_model_cfg(depth=2, num_classes=9, dropout=0.0, strides=[2, 4, 8, 16]))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    history = []
    for step in range(1, 201):
        model.train()
        opt.zero_grad()
        model(img, mask)["loss"].backward()
        opt.step()
        if step % 20 == 0:
            model.eval()
            metric = SegMetric(9)
            with torch.no_grad():
                metric.update(model(img).argmax(1), mask)
            res = metric.compute()
            history.append((step, round(res["mIoU"], 3)))
            if res["mIoU"] > 0.95:
                break
    assert res["mIoU"] > 0.95 and res["aAcc"] > 0.99, history


def test_backbone_file_errors_name_the_file(tmp_path, tiny_model_cfg):
    """The family / width checks of the backbone filter said "checkpoint is a VRWKV6 state dict ..." without the
    file (the classification loader names it)."""
    import timm
    v6 = timm.create_model("vrwkv6_tiny_patch16_224", img_size=32, patch_size=8, depth=2, embed_dim=32, head_size=16)
    path = tmp_path / "v6.pth"
    torch.save(v6.state_dict(), path)
    with pytest.raises(RuntimeError, match=f"pretrained backbone {path} is a VRWKV6 state dict but the model is"):
        create_segmentor(tiny_model_cfg(pretrained=str(path)))
