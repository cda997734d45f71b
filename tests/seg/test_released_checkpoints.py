"""Released segmentation checkpoints (mmseg layout, mmcv file) load into our adapter segmentor: names converted,
weights identical, test_seg / predict_seg take the file as it is; unknown keys are named."""
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from vision_rwkv.models.convert import CheckpointMismatchError, ours_to_original
from vision_rwkv.seg import load_seg_config, test_segmentor
from vision_rwkv.seg.convert import convert_original_segmentor, is_original_segmentor, read_segmentor_state
from vision_rwkv.seg.predict_images import load_segmentor, segment_files

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "segmentation"

# ours -> mmseg, written independently of vision_rwkv.seg.convert (mmcv ConvModule children: conv / bn)
_TO_MMSEG = [
    (r"^decode_head\.ppm\.stages\.(\d+)\.1\.", r"decode_head.psp_modules.\1.1."),
    (r"^decode_head\.ppm_bottleneck\.", "decode_head.bottleneck."),
    (r"^aux_head\.", "auxiliary_head."),
]


def _to_mmseg(state: dict) -> dict:
    out, backbone = {}, {}
    for name, value in state.items():
        if name.startswith("neck."):
            out["backbone." + name[len("neck."):]] = value
        elif name.startswith("backbone."):
            backbone[name[len("backbone."):]] = value
        else:
            for pattern, repl in _TO_MMSEG:
                name = re.sub(pattern, repl, name)
            name = re.sub(r"\.0\.(weight|bias)$", r".conv.\1", name)
            name = re.sub(r"\.1\.(weight|bias|running_mean|running_var|num_batches_tracked)$", r".bn.\1", name)
            out[name] = value
    out.update({"backbone." + k: v for k, v in ours_to_original(backbone).items()})
    return out


@pytest.fixture
def adapter_config(tmp_path):
    path = tmp_path / "adapter.yaml"
    path.write_text(f"""_base_: {CONFIGS / 'demo_shapes.yaml'}
model:
  backbone_kwargs: {{img_size: 32, patch_size: 16, embed_dim: 32, depth: 4, init_values: 1.0, wkv_mode: original,
                    wkv_chunks: 16}}
  neck: adapter
  neck_channels: null
  adapter: {{conv_inplane: 8, deform_num_heads: 4, interaction_indexes: [[0, 0], [1, 1], [2, 2], [3, 3]]}}
data: {{val_length: 4, num_workers: 0}}
train: {{run_dir: {tmp_path / 'run'}, show_progress: false}}
test: {{size_divisor: 32, out_dir: {tmp_path / 'test'}, num_visualize: 2}}
""")
    return path


@pytest.fixture
def released(adapter_config, tmp_path):
    """(our model, mmcv-style checkpoint file of the same weights in the original layout)."""
    model, _, _ = load_segmentor(adapter_config)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
        for name, buf in model.named_buffers():
            if name.endswith("running_var"):
                buf.uniform_(0.5, 2.0)
    state = _to_mmseg(model.state_dict())
    assert is_original_segmentor(state)
    assert "decode_head.psp_modules.0.1.conv.weight" in state and "auxiliary_head.convs.0.bn.running_var" in state
    assert "backbone.layers.0.gamma1" in state and "backbone.interactions.3.extra_extractors.1.ffn.fc2.bias" in state
    path = tmp_path / "iter_160000.pth"
    torch.save({"meta": {"iter": 160000, "CLASSES": ("a", "b")}, "state_dict": state,
                "optimizer": {"state": {}, "param_groups": []}}, path)
    return model.eval(), path


def test_converted_weights_are_identical(released):
    model, path = released
    state = read_segmentor_state(path)
    ours = model.state_dict()
    assert set(state) == set(ours)
    for k, v in ours.items():
        assert torch.equal(state[k].reshape(v.shape), v), k


def test_load_segmentor_and_test_seg_take_the_released_file(released, adapter_config):
    model, path = released
    loaded, cfg, names = load_segmentor(adapter_config, path)
    assert loaded.num_classes == 9 and len(names) == 9
    x = torch.randn(1, 3, 64, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    result = test_segmentor(load_seg_config(adapter_config, [f"test.checkpoint={path}"]))
    assert result["checkpoint"] == str(path) and 0 <= result["mIoU"] <= 100
    # predict_seg's path on an image whose sides are not multiples of 32: resized up for the adapter, labels at
    # the image's own size
    from PIL import Image
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(
        path.parent / "odd.png")
    (_, image, labels), = segment_files(loaded, cfg, [path.parent / "odd.png"], show_progress=False)
    assert image.shape == (40, 56, 3) and labels.shape == (40, 56)


def test_unknown_keys_are_named():
    with pytest.raises(CheckpointMismatchError, match=r"no mapping.*decode_head\.conv_cls\.weight"):
        convert_original_segmentor({"backbone.layers.0.ln1.weight": torch.ones(2),
                                    "decode_head.conv_cls.weight": torch.ones(2)})
    with pytest.raises(CheckpointMismatchError, match=r"no mapping.*layers\.0\.mystery"):
        convert_original_segmentor({"backbone.layers.0.mystery": torch.ones(2)})
    assert not is_original_segmentor({"backbone.blocks.0.norm1.weight": torch.ones(2)})


def test_module_prefixes_are_stripped():
    state = convert_original_segmentor({"module.decode_head.conv_seg.weight": torch.ones(3, 2, 1, 1),
                                        "module.backbone.spm.fc1.bias": torch.ones(2)})
    assert set(state) == {"decode_head.conv_seg.weight", "neck.spm.fc1.bias"}
