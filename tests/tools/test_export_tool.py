"""tools/export.py: a timm model name or a segmentation config -> a checked .pt2 / .onnx file and a JSON summary."""
import importlib.util
import json

import pytest
import torch

from tool_helpers import ROOT, load_tool

SEG_DEMO = ROOT / "configs" / "segmentation" / "demo_shapes.yaml"
HAS_ONNX = all(importlib.util.find_spec(p) for p in ("onnx", "onnxscript", "onnxruntime"))


@pytest.fixture(scope="module")
def seg_checkpoint(tmp_path_factory):
    from vision_rwkv.seg import load_seg_config
    from vision_rwkv.seg.train import build_segmentor
    path = tmp_path_factory.mktemp("seg") / "seg.pt"
    torch.manual_seed(0)
    torch.save({"model": build_segmentor(load_seg_config(SEG_DEMO), 9).state_dict()}, path)
    return path


def test_export_timm_model_pt2(tmp_path, capsys):
    out = tmp_path / "v4.pt2"
    assert load_tool("export").main(["vrwkv_tiny_patch16_224", "--img-size", "32", "48", "--output", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["input_shape"] == [3, 32, 48] and summary["checked_batches"] == [1, 2, 3]
    assert summary["max_abs_diff"] < 1e-4 and out.is_file()
    assert torch.export.load(str(out)).module()(torch.randn(4, 3, 32, 48)).shape == (4, 1000)


def test_export_segmentation_config(seg_checkpoint, tmp_path, capsys):
    out = tmp_path / "seg.pt2"
    assert load_tool("export").main([str(SEG_DEMO), "model.aux_channels=16", "--checkpoint", str(seg_checkpoint),
                                     "--static-batch", "--output", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["dynamic_batch"] is False and summary["checked_batches"] == [2]
    assert torch.export.load(str(out)).module()(torch.randn(2, 3, 32, 32)).shape == (2, 9, 32, 32)


def test_export_errors(tmp_path, capsys):
    tool = load_tool("export")
    assert tool.main([str(SEG_DEMO), "data.type=folder", "--output", str(tmp_path / "x.pt2")]) == 2
    assert "class count" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError):
        tool.main(["vrwkv_tiny_patch16_224", "--checkpoint", str(tmp_path / "nope.pt")])
    with pytest.raises(SystemExit):
        tool.main([str(SEG_DEMO), "notakeyvalue"])
    assert not list(tmp_path.iterdir())


@pytest.mark.slow
@pytest.mark.skipif(not HAS_ONNX, reason="needs onnx, onnxscript and onnxruntime (the dev extra installs them)")
def test_export_segmentation_onnx(seg_checkpoint, tmp_path, capsys):
    out = tmp_path / "seg.onnx"
    assert load_tool("export").main([str(SEG_DEMO), "--checkpoint", str(seg_checkpoint), "--format", "onnx",
                                     "--output", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["format"] == "onnx" and summary["max_abs_diff"] < 1e-4 and out.is_file()
