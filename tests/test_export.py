"""vision_rwkv.export: torch.export programs and ONNX files of the models, checked against eager."""
import importlib.util
import os
import shutil

import pytest
import timm
import torch

import vision_rwkv  # noqa: F401  (registers the models)
from vision_rwkv.export import (CheckedProgram, ExportMismatchError, ImageEncoder, TextEncoder, build_export_target,
                                dynamic_size_range, dynamic_size_step, export_aoti, export_onnx, export_program,
                                load_aoti, max_abs_diff, size_checks, verify_aoti, verify_onnx, verify_program)

HAS_ONNX = all(importlib.util.find_spec(p) for p in ("onnx", "onnxscript", "onnxruntime"))
# patch 8 on 80x96: a 10x12 grid, 120 tokens (VRWKV6's reference past one chunk: the chunk states of an export)
SMALL = dict(depth=1, embed_dim=64, patch_size=8, img_size=(80, 96))  # (one block: export time grows with depth)


def _model(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=7, **SMALL).eval()
    with torch.no_grad():  # decays and bonuses away from their init, so every factor matters
        for n, p in model.named_parameters():
            if "decay" in n or "first" in n or "faaaa" in n:
                p.add_(0.3 * torch.randn_like(p))
    return model


@pytest.mark.parametrize("name", ["vrwkv_tiny_patch16_224", "vrwkv6_tiny_patch16_224"])
def test_program_dynamic_batch_matches_eager(name):
    model = _model(name)
    program = export_program(model, torch.randn(2, 3, 80, 96))
    inputs = [torch.randn(b, 3, 80, 96) for b in (1, 3, 5)]
    assert verify_program(program, model, inputs, atol=1e-5) < 1e-5
    # the program also runs where autograd records (parameters require grad): no in-place out= ops traced
    out = program.module()(inputs[0])
    assert out.requires_grad and torch.allclose(out, model(inputs[0]), atol=1e-5)


@pytest.mark.parametrize("name", ["vrwkv_tiny_patch16_224", "vrwkv6_tiny_patch16_224"])
def test_program_dynamic_image_size_matches_eager(name):
    """dynamic_size: one program for every height and width in [2p + 1, max_size] (patch multiples or not)."""
    model = _model(name)
    program = export_program(model, torch.randn(2, 3, 80, 96), dynamic_size=True, max_size=256)
    inputs = [torch.randn(b, 3, h, w) for b, h, w in ((1, 80, 96), (3, 64, 64), (2, 75, 90), (1, 17, 200),
                                                      (2, 256, 33))]
    assert verify_program(program, model, inputs + size_checks(model, inputs[0], 256), atol=1e-5) < 1e-5
    assert dynamic_size_range(model, 256) == ((17, 17), (256, 256))
    with pytest.raises(ExportMismatchError, match=r"input \(1, 3, 16, 64\) fails: .*height 16, where it must be "
                                                  r"\[17, 256\]"):  # a token grid below 3 x 3 (the input check)
        verify_program(program, model, [torch.randn(1, 3, 16, 64)])
    with pytest.raises(ValueError, match="dynamic image size needs an example height in"):
        export_program(model, torch.randn(2, 3, 16, 96), dynamic_size=True)
    with pytest.raises(ValueError, match="max_size 12 is below"):
        export_program(model, torch.randn(2, 3, 80, 96), dynamic_size=True, max_size=12)


@pytest.mark.slow  # (its export alone takes ~20 s)
def test_original_mode_program_takes_sizes_up_to_its_chunk_limit():
    """The "original" v4 WKV's program takes chunks of up to ORIGINAL_MAX_BLOCK tokens (T <= 2048 with 32 chunks,
    1024 with 16): a max_size past it is an error naming the largest it takes (patch 8: 45 x 45 = 2025 tokens)."""
    model = _model("vrwkv_tiny_patch16_224")
    model.set_wkv_mode("original")
    program = export_program(model, torch.randn(2, 3, 80, 96), dynamic_size=True, max_size=360)
    assert verify_program(program, model, [torch.randn(1, 3, 360, 360), torch.randn(1, 3, 17, 360)]) < 1e-5
    with pytest.raises(ValueError, match=r"max_size 512 is past .* 2048 tokens with 32 chunks; give a max_size of "
                                         r"at most 360"):
        export_program(model, torch.randn(2, 3, 80, 96), dynamic_size=True, max_size=512)
    model.set_wkv_mode("original", 16)
    with pytest.raises(ValueError, match="1024 tokens with 16 chunks; give a max_size of at most 256"):
        dynamic_size_range(model, 360)


def _demo_segmentor() -> torch.nn.Module:
    """The demo's segmentor (patch 4, strides 4-32: its coarsest level is the token grid max-pooled by 8) with one
    backbone block, its BatchNorm statistics away from their init."""
    from vision_rwkv.resources import configs_dir
    from vision_rwkv.seg import load_seg_config
    from vision_rwkv.seg.train import build_segmentor
    torch.manual_seed(0)
    config = configs_dir() / "segmentation" / "demo_shapes.yaml"
    seg = build_segmentor(load_seg_config(config, ["model.aux_channels=16", "model.backbone_kwargs.depth=1"]), 9,
                          load_pretrained=False).eval()
    for m in seg.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.2)
            m.running_var.uniform_(0.5, 2)
    return seg


def test_segmentor_program_takes_every_size_from_a_2x2_coarsest_level():
    """Neck pooling (ceil mode), pyramid pooling (bins 1, 2, 3, 6 over maps smaller than 6) and the heads' resizes
    all shape-generic: one program from 33 px (9 tokens, a 2 x 2 stride-32 level) to max_size."""
    seg = _demo_segmentor()
    assert dynamic_size_range(seg, 128) == ((33, 33), (128, 128)) and dynamic_size_step(seg) == 1
    program = export_program(seg, torch.randn(2, 3, 64, 48), dynamic_size=True, max_size=128)
    inputs = [torch.randn(b, 3, h, w) for b, h, w in ((1, 64, 48), (2, 33, 33), (3, 75, 41), (1, 128, 97))]
    assert verify_program(program, seg, inputs + size_checks(seg, inputs[0], 128), atol=1e-5) < 1e-5
    with pytest.raises(ExportMismatchError, match=r"input \(1, 3, 32, 64\) fails: .*height 32, where it must be "
                                                  r"\[33, 128\]"):  # a 1-wide coarsest level
        verify_program(program, seg, [torch.randn(1, 3, 32, 64)])
    with pytest.raises(ValueError, match=r"example height in \[33, 128\]"):
        export_program(seg, torch.randn(2, 3, 32, 48), dynamic_size=True, max_size=128)
    with pytest.raises(ValueError, match="max_size 32 is below .* 33 \\(a 2 x 2 coarsest level\\)"):
        dynamic_size_range(seg, 32)


def test_batch_one_segmentor_program_takes_every_size():
    """A fixed batch (here 1, the usual deployment case) with a dynamic size: the pyramid pooling's products keep
    every reshape on static sizes (a broadcast matmul folded the symbolic width into a guard)."""
    seg = _demo_segmentor()
    program = export_program(seg, torch.randn(2, 3, 48, 40), dynamic_size=True, max_size=96, max_batch=1)
    inputs = [torch.randn(1, 3, h, w) for h, w in ((48, 40), (33, 96), (77, 50))]
    assert verify_program(program, seg, inputs, atol=1e-5) < 1e-5


@pytest.mark.parametrize("name", ["vrwkv_tiny_patch16_224", "vrwkv6_tiny_patch16_224"])
def test_bf16_program_takes_a_dynamic_size(name):
    """A bf16 model exports with a dynamic size (the position embedding's cast back to bf16 comes after its
    transpose: before it, a stride guard specialised the width) and matches the bf16 eager model."""
    model = _model(name).to(torch.bfloat16)
    program = export_program(model, torch.randn(2, 3, 80, 96, dtype=torch.bfloat16), dynamic_size=True, max_size=128)
    inputs = [torch.randn(b, 3, h, w, dtype=torch.bfloat16) for b, h, w in ((1, 75, 90), (2, 128, 33))]
    assert verify_program(program, model, inputs, atol=1e-2, rtol=1e-2) < 1e-2


def test_a_size_specialising_layer_is_a_clear_error():
    """A layer of the caller's that branches on the image size: a ValueError naming the model, not dynamo's."""
    class WidthBranch(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, x):
            y = self.model(x)
            return 2 * y if x.shape[-1] == 96 else y

    wrapped = WidthBranch(_model("vrwkv_tiny_patch16_224"))
    with pytest.raises(ValueError, match=r"WidthBranch cannot take a dynamic image size: .* example's \(80, 96\); "
                                         r"export this model for one size \(torch.export: You marked width as dynamic"):
        export_program(wrapped, torch.randn(2, 3, 80, 96), dynamic_size=True, max_size=128)


def test_program_pads_an_image_size_off_the_patch_grid():
    model = _model("vrwkv6_tiny_patch16_224")
    program = export_program(model, torch.randn(2, 3, 75, 90), dynamic_batch=False)
    x = torch.randn(2, 3, 75, 90)
    assert verify_program(program, model, [x], atol=1e-5) < 1e-5
    with pytest.raises(Exception):  # a static program refuses another batch
        program.module()(torch.randn(3, 3, 75, 90))


def test_program_saves_and_loads(tmp_path):
    model = _model("vrwkv_tiny_patch16_224")
    program = export_program(model, torch.randn(2, 3, 80, 96))
    torch.export.save(program, str(tmp_path / "m.pt2"))
    loaded = torch.export.load(str(tmp_path / "m.pt2"))
    x = torch.randn(4, 3, 80, 96)
    assert torch.allclose(loaded.module()(x), model(x), atol=1e-5)


def test_export_restores_training_mode():
    model = _model("vrwkv_tiny_patch16_224").train()
    export_program(model, torch.randn(2, 3, 80, 96))
    assert model.training


def test_dynamic_batch_needs_an_example_batch_of_two():
    model = _model("vrwkv_tiny_patch16_224")
    with pytest.raises(ValueError, match="at least 2"):
        export_program(model, torch.randn(1, 3, 80, 96))
    with pytest.raises(ValueError, match="max_batch"):
        export_program(model, torch.randn(4, 3, 80, 96), max_batch=3)
    with pytest.raises(ValueError, match="max_batch must be >= 1"):
        export_program(model, torch.randn(2, 3, 80, 96), max_batch=0)


def test_max_batch_two_and_one():
    """max_batch 2: batches 1 and 2, not 3; max_batch 1: a batch-1 program (torch.export specialises a batch of 1),
    traced from the example's first sample."""
    model = _model("vrwkv_tiny_patch16_224")
    x = torch.randn(3, 3, 80, 96)
    two = export_program(model, x[:2], max_batch=2)
    assert verify_program(two, model, [x[:1], x[:2]], atol=1e-5) < 1e-5
    with pytest.raises(Exception, match="<= 2"):
        two.module()(x)
    one = export_program(model, x[:2], max_batch=1)
    assert verify_program(one, model, [x[:1]], atol=1e-5) < 1e-5
    with pytest.raises(Exception, match="== 1"):
        one.module()(x[:2])


def test_max_abs_diff_catches_mismatches():
    ref = torch.randn(3, 4)
    assert max_abs_diff(ref, ref + 1e-6) < 2e-6
    with pytest.raises(ExportMismatchError, match="1 of 12 outputs"):
        bad = ref.clone()
        bad[1, 2] += 0.1
        max_abs_diff(ref, bad)
    with pytest.raises(ExportMismatchError, match="non-finite"):
        max_abs_diff(ref, torch.full_like(ref, float("nan")))
    with pytest.raises(ExportMismatchError, match="shape"):
        max_abs_diff(ref, ref[:2])


def test_verify_program_rejects_a_wrong_program():
    model = _model("vrwkv_tiny_patch16_224")
    other = _model("vrwkv_tiny_patch16_224")
    with torch.no_grad():
        other.head.bias.add_(1.0)
    program = export_program(other, torch.randn(2, 3, 80, 96))
    with pytest.raises(ExportMismatchError):
        verify_program(program, model, [torch.randn(2, 3, 80, 96)])


def test_clip_towers_export():
    import rwkv_clip
    model = rwkv_clip.create_model("RWKV-CLIP-Tiny-demo", vision_cfg=dict(depth=1), text_cfg=dict(layers=1)).eval()
    image, text = ImageEncoder(model), TextEncoder(model)
    images = torch.randn(2, 3, *model.visual.image_size)
    tokens = rwkv_clip.get_tokenizer("RWKV-CLIP-Tiny-demo")(["a red circle", "two blue squares", "a star"])
    assert verify_program(export_program(image, images), image, [images[:1], images]) < 1e-5
    assert verify_program(export_program(text, tokens[:2]), text, [tokens, tokens[:1]]) < 1e-5
    program = export_program(image, images, dynamic_size=True, max_size=64)  # the image tower at any size
    assert verify_program(program, image, [torch.randn(2, 3, 40, 24), *size_checks(image, images, 64)]) < 1e-5


def test_build_export_target_segmentation_config(tmp_path):
    from vision_rwkv.resources import configs_dir
    from vision_rwkv.seg import load_seg_config
    from vision_rwkv.seg.train import build_segmentor

    config = configs_dir() / "segmentation" / "demo_shapes.yaml"
    seg = build_segmentor(load_seg_config(config), 9)
    torch.save(seg.state_dict(), tmp_path / "seg.pt")
    model, example = build_export_target(str(config), tmp_path / "seg.pt")
    assert model.decode_head.conv_seg.out_channels == 9 and tuple(example.shape) == (2, 3, 32, 32)
    assert torch.equal(model.decode_head.conv_seg.weight, seg.decode_head.conv_seg.weight)
    assert verify_program(export_program(model, example), model, [example[:1]]) < 1e-5
    fresh, _ = build_export_target(str(config))  # no checkpoint: the config's classes (random heads)
    assert fresh.decode_head.conv_seg.out_channels == 9
    with pytest.raises(ValueError, match="class count"):
        build_export_target(str(config), overrides=["data.type=folder"])


def test_build_export_target_timm_checkpoint_classes(tmp_path):
    src = timm.create_model("vrwkv_tiny_patch16_224", num_classes=3)
    torch.save(src.state_dict(), tmp_path / "m.pt")
    model, example = build_export_target("vrwkv_tiny_patch16_224", tmp_path / "m.pt", img_size=[64])
    assert model.num_classes == 3 and tuple(example.shape) == (2, 3, 64, 64)
    assert torch.equal(model.head.weight, src.head.weight)
    headless = {k: v for k, v in src.state_dict().items() if not k.startswith("head.")}
    torch.save(headless, tmp_path / "headless.pt")
    with pytest.raises(ValueError, match="class count"):
        build_export_target("vrwkv_tiny_patch16_224", tmp_path / "headless.pt", num_classes=3)
    with pytest.raises(FileNotFoundError):
        build_export_target("vrwkv_tiny_patch16_224", tmp_path / "missing.pt")
    with pytest.raises(ValueError, match="overrides"):
        build_export_target("vrwkv_tiny_patch16_224", overrides=["a=1"])


def test_build_export_target_classification_config(tmp_path):
    from vision_rwkv.engine import load_config
    from vision_rwkv.engine.classification import create_classifier
    from vision_rwkv.resources import configs_dir

    config = configs_dir() / "classification" / "demo_shapes.yaml"
    src = create_classifier(load_config(config), 8)
    torch.save({"model": src.state_dict()}, tmp_path / "run.pt")
    model, example = build_export_target(str(config), tmp_path / "run.pt", overrides=["data.input_size=24"])
    assert tuple(example.shape) == (2, 3, 24, 24) and model.num_classes == 8
    assert torch.equal(model.head.weight, src.head.weight)
    assert verify_program(export_program(model, example), model, [example[:1]]) < 1e-5


@pytest.mark.slow
@pytest.mark.skipif(not HAS_ONNX, reason="needs onnx, onnxscript and onnxruntime (the dev extra installs them)")
@pytest.mark.parametrize("name", ["vrwkv_tiny_patch16_224", "vrwkv6_tiny_patch16_224"])
def test_onnx_matches_eager(name, tmp_path):
    model = _model(name)
    path = export_onnx(model, torch.randn(2, 3, 80, 96), tmp_path / "m.onnx")
    assert path.is_file() and sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]  # (no staging folder left)
    assert verify_onnx(path, model, [torch.randn(b, 3, 80, 96) for b in (1, 4)], atol=1e-5) < 1e-5


@pytest.mark.slow
@pytest.mark.skipif(not HAS_ONNX, reason="needs onnx, onnxscript and onnxruntime (the dev extra installs them)")
def test_onnx_external_data_keeps_its_name(tmp_path):
    """external_data=True (what torch does above 2 GB): the weights in ``m.onnx.data``, which the model names (written
    under a temporary name and renamed, the model pointed at the temporary one); the pair moves as one."""
    import onnx
    model = _model("vrwkv_tiny_patch16_224")
    path = export_onnx(model, torch.randn(2, 3, 80, 96), tmp_path / "out" / "m.onnx", external_data=True)
    assert sorted(p.name for p in path.parent.iterdir()) == ["m.onnx", "m.onnx.data"]
    graph = onnx.load(str(path), load_external_data=False).graph
    locations = {e.value for t in graph.initializer for e in t.external_data if e.key == "location"}
    assert locations == {"m.onnx.data"}
    moved = tmp_path / "moved"
    path.parent.rename(moved)
    assert verify_onnx(moved / "m.onnx", model, [torch.randn(3, 3, 80, 96)], atol=1e-5) < 1e-5
    export_onnx(model, torch.randn(2, 3, 80, 96), moved / "m.onnx")  # (again, one file: the old weights file goes)
    assert sorted(p.name for p in moved.iterdir()) == ["m.onnx"]


def test_staging_dir_leaves_nothing_after_a_failure(tmp_path):
    """The staging folder, and the folders made for the output, are removed when the export fails; published files
    stay, the output's folder with them."""
    from vision_rwkv.export import publish, staging_dir
    with pytest.raises(RuntimeError, match="export failed"):
        with staging_dir(tmp_path / "a" / "b" / "m.onnx") as stage:
            (stage / "m.onnx").write_bytes(b"half")
            raise RuntimeError("export failed")
    assert list(tmp_path.iterdir()) == []
    with staging_dir(tmp_path / "a" / "b" / "m.onnx") as stage:
        (stage / "m.onnx").write_bytes(b"model")
        (stage / "m.onnx.data").write_bytes(b"weights")
        assert [p.name for p in publish(stage, tmp_path / "a" / "b" / "m.onnx")] == ["m.onnx.data", "m.onnx"]
    assert sorted(p.name for p in (tmp_path / "a" / "b").iterdir()) == ["m.onnx", "m.onnx.data"]


@pytest.mark.slow
@pytest.mark.skipif(not HAS_ONNX, reason="needs onnx, onnxscript and onnxruntime (the dev extra installs them)")
@pytest.mark.parametrize("name", ["vrwkv_tiny_patch16_224", "vrwkv6_tiny_patch16_224"])
def test_onnx_dynamic_image_size_matches_eager(name, tmp_path):
    """The ONNX file's height and width are free dimensions; the symbolic chunk counts survive ONNX's truncating
    integer division (160 and 64 tokens: whole chunks; 120 and 75: padded)."""
    model = _model(name)
    path = export_onnx(model, torch.randn(2, 3, 80, 96), tmp_path / "m.onnx", dynamic_size=True, max_size=256)
    inputs = [torch.randn(b, 3, h, w) for b, h, w in ((1, 80, 96), (3, 64, 64), (2, 75, 90), (1, 17, 200),
                                                      (2, 256, 33))]
    assert verify_onnx(path, model, inputs + size_checks(model, inputs[0], 256), atol=1e-5) < 1e-5


@pytest.mark.slow
@pytest.mark.skipif(not HAS_ONNX, reason="needs onnx, onnxscript and onnxruntime (the dev extra installs them)")
def test_onnx_segmentor_dynamic_image_size_matches_eager(tmp_path):
    """A segmentor's ONNX file: height and width free, the neck's padded pooling and the averaging-matrix pyramid
    pooling as ONNX ops."""
    seg = _demo_segmentor()
    path = export_onnx(seg, torch.randn(2, 3, 64, 48), tmp_path / "s.onnx", dynamic_size=True, max_size=128)
    inputs = [torch.randn(b, 3, h, w) for b, h, w in ((1, 64, 48), (2, 33, 33), (3, 75, 41))]
    assert verify_onnx(path, seg, inputs + size_checks(seg, inputs[0], 128), atol=1e-5) < 1e-5


@pytest.mark.slow
@pytest.mark.skipif(not HAS_ONNX, reason="needs onnx, onnxscript and onnxruntime (the dev extra installs them)")
def test_onnx_max_batch_one_is_a_batch_one_file(tmp_path):
    import onnx
    model = _model("vrwkv_tiny_patch16_224")
    path = export_onnx(model, torch.randn(2, 3, 80, 96), tmp_path / "m.onnx", max_batch=1)
    assert onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim[0].dim_value == 1
    assert verify_onnx(path, model, [torch.randn(1, 3, 80, 96)], atol=1e-5) < 1e-5


def _adapter_segmentor() -> torch.nn.Module:
    from vision_rwkv.seg.segmentor import create_segmentor
    torch.manual_seed(0)
    return create_segmentor(dict(
        backbone="vrwkv_tiny_patch16_224", backbone_kwargs=dict(img_size=64, depth=4, embed_dim=48), num_classes=4,
        decode_channels=32, aux_channels=16, neck="adapter",
        adapter=dict(conv_inplane=8, init_values=0.5, interaction_indexes=[[0, 0], [1, 1], [2, 2], [3, 3]]))).eval()


@pytest.mark.parametrize("fmt", ["pt2", pytest.param("onnx", marks=[pytest.mark.slow, pytest.mark.skipif(
    not HAS_ONNX, reason="needs onnx, onnxscript and onnxruntime (the dev extra installs them)")])])
def test_adapter_segmentor_exports(fmt, tmp_path):
    """The ViT-Adapter neck (deformable attention as grid_sample) exports with the backbone it interleaves with."""
    model = _adapter_segmentor()
    example, inputs = torch.randn(2, 3, 64, 96), [torch.randn(b, 3, 64, 96) for b in (1, 3)]
    if fmt == "pt2":
        assert verify_program(export_program(model, example), model, inputs, atol=1e-5) < 1e-5
    else:
        assert verify_onnx(export_onnx(model, example, tmp_path / "s.onnx"), model, inputs, atol=1e-5) < 1e-5


@pytest.mark.slow  # (~25 s)
def test_adapter_segmentor_program_takes_multiples_of_32():
    """The ViT-Adapter neck takes sides that are multiples of 32 (as its eager model does), from 64 (a 2 x 2 stride-32
    level): its dynamic-size program is symbolic in steps of 32."""
    model = _adapter_segmentor()
    assert dynamic_size_step(model) == 32 and dynamic_size_range(model, 200) == ((64, 64), (192, 192))
    program = export_program(model, torch.randn(2, 3, 64, 96), dynamic_size=True, max_size=200)
    inputs = [torch.randn(b, 3, h, w) for b, h, w in ((1, 64, 96), (2, 128, 64), (1, 96, 160))]
    assert verify_program(program, model, inputs + size_checks(model, inputs[0], 200), atol=1e-5) < 1e-5
    with pytest.raises(ValueError, match="multiples of 32; the example width is 80"):
        export_program(model, torch.randn(2, 3, 64, 80), dynamic_size=True, max_size=200)
    with pytest.raises(Exception, match="Guard failed|divisible"):  # the program's own check of a 80-px side
        program.module()(torch.randn(1, 3, 64, 80))
    checked = CheckedProgram(program)  # (what load_program gives: the step read from the program)
    with pytest.raises(ValueError, match=r"width 80, where it must be a multiple of 32 in \[64, 192\]"):
        checked(torch.randn(1, 3, 64, 80))


@pytest.mark.slow  # (~30 s: the C++ compile)
@pytest.mark.skipif(not (shutil.which("c++") or shutil.which("g++")), reason="AOTInductor needs a C++ compiler")
def test_aot_inductor_package_of_a_dynamic_size_program(tmp_path, monkeypatch):
    """export_aoti compiles a dynamic-size program: the package matches eager at sizes off the patch grid (batch 1
    included) and, with its input checks on, refuses a size above the range and a wrong channel count; load_aoti
    checks the range recorded in the package, the lower bounds too (which the package's own checks never do)."""
    torch.manual_seed(0)
    monkeypatch.delenv("AOTI_RUNTIME_CHECK_INPUTS", raising=False)
    model = timm.create_model("vrwkv_tiny_patch16_224", num_classes=7, depth=1, embed_dim=32, patch_size=8,
                              img_size=(80, 96)).eval()
    path = export_aoti(model, torch.randn(2, 3, 80, 96), tmp_path / "m.pt2", dynamic_size=True, max_size=128)
    assert path.is_file() and sorted(p.name for p in tmp_path.iterdir()) == ["m.pt2"]
    inputs = [torch.randn(b, 3, h, w) for b, h, w in ((1, 80, 96), (2, 75, 90), (1, 17, 128))]
    assert verify_aoti(path, model, inputs, atol=1e-5) < 1e-5
    with pytest.raises(ExportMismatchError, match=r"input \(1, 3, 64, 129\) fails: .*width 129, where it must be "
                                                  r"\[17, 128\]"):
        verify_aoti(path, model, [torch.randn(1, 3, 64, 129)])
    assert "AOTI_RUNTIME_CHECK_INPUTS" not in os.environ  # (verify_aoti sets it while it runs, then restores it)
    loaded = load_aoti(path)
    assert loaded.spec.summary() == ("float32 (batch, channels, height, width): batch [1, 4096], channels 3, height "
                                     "[17, 128], width [17, 128]")
    torch.testing.assert_close(loaded(inputs[1]), model(inputs[1]), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match=r"AOTInductor package input of shape \(1, 3, 9, 64\): height 9, where it "
                                         r"must be \[17, 128\]"):  # (below the range: no check of the package's own)
        loaded(torch.randn(1, 3, 9, 64))
    monkeypatch.setenv("AOTI_RUNTIME_CHECK_INPUTS", "1")  # (the package's own checks, above the range)
    runner = torch._inductor.aoti_load_package(str(path))
    with pytest.raises(RuntimeError, match="too large at 3, expected to be <= 128"):
        runner(torch.randn(1, 3, 64, 129))
    with pytest.raises(RuntimeError, match="unmatched dim value at 1, expected: 3"):
        runner(torch.randn(1, 4, 64, 64))


def test_aot_inductor_package_errors(tmp_path, monkeypatch):
    """A package path that is not .pt2, and no C++ compiler on PATH: clear errors before anything is compiled."""
    model = _model("vrwkv_tiny_patch16_224")
    with pytest.raises(ValueError, match="a .pt2 file"):
        export_aoti(model, torch.randn(2, 3, 80, 96), tmp_path / "m.so")
    monkeypatch.setenv("PATH", str(tmp_path))  # (no compiler on it)
    monkeypatch.delenv("CXX", raising=False)
    with pytest.raises(RuntimeError, match="AOTInductor needs a C\\+\\+ compiler"):
        export_aoti(model, torch.randn(2, 3, 80, 96), tmp_path / "n.pt2")
    assert not list(tmp_path.iterdir())
