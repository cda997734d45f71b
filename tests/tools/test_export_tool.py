"""tools/export.py: a timm model name or a segmentation config -> a checked .pt2 / .onnx file (or AOTInductor package)
and a JSON summary."""
import importlib.util
import json
from pathlib import Path

import pytest
import torch

from tool_helpers import DEMO, ROOT, TINY, load_tool

SEG_DEMO = ROOT / "configs" / "segmentation" / "demo_shapes.yaml"
ONE_BLOCK = "model.backbone_kwargs.depth=1"  # (the demo segmentor with one block: export time grows with depth)
HAS_ONNX = all(importlib.util.find_spec(p) for p in ("onnx", "onnxscript", "onnxruntime"))


@pytest.fixture(scope="module")
def seg_checkpoint(tmp_path_factory):
    from vision_rwkv.seg import load_seg_config
    from vision_rwkv.seg.train import build_segmentor
    path = tmp_path_factory.mktemp("seg") / "seg.pt"
    torch.manual_seed(0)
    torch.save({"model": build_segmentor(load_seg_config(SEG_DEMO, [ONE_BLOCK]), 9).state_dict()}, path)
    return path


def test_export_timm_model_pt2(tmp_path, capsys):
    out = tmp_path / "v4.pt2"
    assert load_tool("export").main(["vrwkv_tiny_patch16_224", "--img-size", "32", "48", "--output", str(out)]) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert "warning: no --checkpoint for model vrwkv_tiny_patch16_224" in captured.err  # random weights, said so
    assert summary["input_shape"] == [3, 32, 48] and summary["checked_batches"] == [1, 2, 3]
    assert summary["max_abs_diff"] < 1e-4 and out.is_file()
    assert torch.export.load(str(out)).module()(torch.randn(4, 3, 32, 48)).shape == (4, 1000)


def test_export_segmentation_config(seg_checkpoint, tmp_path, capsys):
    out = tmp_path / "seg.pt2"
    assert load_tool("export").main([str(SEG_DEMO), ONE_BLOCK, "model.aux_channels=16", "--checkpoint",
                                     str(seg_checkpoint), "--static-batch", "--output", str(out)]) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert "warning" not in captured.err
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


def test_export_format_and_max_batch_options(capsys):
    """The format comes from --format, else the --output suffix, else pt2; conflicts and bad values are usage
    errors."""
    tool = load_tool("export")
    assert tool.parse_args(["m", "--output", "x.onnx"]).format == "onnx"
    assert tool.parse_args(["m", "--output", "d/x.pt2"]).format == "pt2"
    assert tool.parse_args(["m", "--format", "onnx"]).format == "onnx" and tool.parse_args(["m"]).format == "pt2"
    assert tool.parse_args(["m"]).max_batch == 4096
    assert tool.parse_args(["m", "--format", "aoti", "--output", "x.pt2"]).format == "aoti"  # (a package is .pt2)
    for argv, message in ((["--format", "pt2", "--output", "x.onnx"], "suffix of onnx, not of --format pt2"),
                          (["--format", "aoti", "--output", "x.onnx"], "suffix of onnx, not of --format aoti"),
                          (["--output", "x.bin"], "unknown suffix '.bin'"), (["--output", "x"], "no suffix"),
                          (["--max-batch", "0"], "--max-batch must be >= 1"),
                          (["--static-batch", "--max-batch", "3"], "--static-batch fixes the batch"),
                          (["--max-size", "512"], "give --dynamic-size too"),
                          (["--dynamic-size", "--tower", "text"], "the text tower's input"),
                          (["--external-data"], "--external-data is for ONNX files, not --format pt2")):
        with pytest.raises(SystemExit):
            tool.parse_args(["m", *argv])
        assert message in capsys.readouterr().err


def test_export_dynamic_size_pt2(tmp_path, capsys):
    """--dynamic-size: one program for every size from 3 patches to --max-size, checked at its corners."""
    out = tmp_path / "v4.pt2"
    assert load_tool("export").main([str(DEMO), *TINY, "--img-size", "16", "24", "--dynamic-size", "--max-size", "64",
                                     "--output", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["size_range"] == {"min": [9, 9], "max": [64, 64], "step": 1}  # (patch 4)
    assert summary["checked_sizes"] == [[16, 24]] * 3 + [[9, 64], [64, 9], [64, 64]]
    program = torch.export.load(str(out)).module()
    assert program(torch.randn(2, 3, 37, 22)).shape == (2, 1000)  # a size it was not checked at (no checkpoint: 1000)
    with pytest.raises(Exception):  # past --max-size: the program's own range check
        program(torch.randn(1, 3, 65, 40))
    from vision_rwkv.export import load_program
    with pytest.raises(ValueError, match=r"height 65, where it must be \[9, 64\]"):  # (the tool's range, in words)
        load_program(out)(torch.randn(1, 3, 65, 40))


def test_export_aoti_package(tmp_path, capsys, monkeypatch):
    """--format aoti: the tool's side (default name <model>_aoti.pt2, the example and checks it passes, JSON), with
    export_aoti / verify_aoti recorded - their compile is tested in tests/test_export.py; without a C++ compiler, a
    usage error before anything is built."""
    import vision_rwkv.export as export
    calls = {}

    def fake_export(model, example, path, dynamic_batch, max_batch, dynamic_size, max_size):
        calls["export"] = (tuple(example.shape), dynamic_batch, max_batch, dynamic_size, max_size)
        Path(path).write_bytes(b"package")
        return Path(path)

    def fake_verify(path, model, inputs, atol):
        assert Path(path).read_bytes() == b"package"  # (the file just written, before its rename)
        calls["verify"] = [tuple(x.shape) for x in inputs]
        return 0.0

    monkeypatch.setattr(export, "export_aoti", fake_export)
    monkeypatch.setattr(export, "verify_aoti", fake_verify)
    monkeypatch.setattr(export, "cpp_compiler", lambda: "/usr/bin/g++")
    monkeypatch.chdir(tmp_path)
    assert load_tool("export").main([str(DEMO), *TINY, "--img-size", "16", "24", "--dynamic-size", "--max-size", "48",
                                     "--format", "aoti"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["format"] == "aoti" and summary["output"] == "demo_shapes_aoti.pt2"
    assert calls["export"] == ((2, 3, 16, 24), True, 4096, True, 48)
    assert calls["verify"] == [(1, 3, 16, 24), (2, 3, 16, 24), (3, 3, 16, 24), (1, 3, 9, 48), (1, 3, 48, 9),
                               (1, 3, 48, 48)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo_shapes_aoti.pt2"]
    monkeypatch.setattr(export, "cpp_compiler", lambda: None)
    assert load_tool("export").main([str(DEMO), *TINY, "--format", "aoti", "--output", "again.pt2"]) == 2
    assert "needs a C++ compiler" in capsys.readouterr().err and not (tmp_path / "again.pt2").exists()


def test_export_dynamic_size_of_a_segmentor(seg_checkpoint, tmp_path, capsys):
    """A segmentor's range starts at a 2 x 2 coarsest level (patch 4 pooled by 8: 33 px), checked at its corners;
    the config's 32 x 32 crop, below it, is moved into the range as the example (--img-size unset)."""
    out = tmp_path / "seg.pt2"
    assert load_tool("export").main([str(SEG_DEMO), ONE_BLOCK, "model.aux_channels=16", "--checkpoint",
                                     str(seg_checkpoint), "--dynamic-size", "--max-size", "64",
                                     "--output", str(out)]) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert "note: tracing at 33x33, inside the dynamic size range (the default example is 32x32" in captured.err
    assert "any size from 33x33 to 64x64 (traced at (33, 33))" in captured.err
    assert summary["size_range"] == {"min": [33, 33], "max": [64, 64], "step": 1}
    assert summary["checked_sizes"] == [[33, 33]] * 3 + [[33, 64], [64, 33], [64, 64]]
    assert torch.export.load(str(out)).module()(torch.randn(1, 3, 50, 37)).shape == (1, 9, 50, 37)
    with pytest.raises(ValueError, match=r"example height in \[33, 64\]"):  # (the tool: exit 2 before exporting)
        from vision_rwkv.export import build_export_target, export_program
        model, _ = build_export_target(str(SEG_DEMO), seg_checkpoint, overrides=[ONE_BLOCK])
        export_program(model, torch.randn(2, 3, 32, 32), dynamic_size=True, max_size=64)


@pytest.mark.parametrize("max_batch", [1, 2])
def test_export_max_batch_pt2(max_batch, tmp_path, capsys):
    """--max-batch 1 or 2: the program takes the batches up to it (1: a batch-1 program), checked on those only."""
    out = tmp_path / "m.pt2"
    assert load_tool("export").main([str(DEMO), *TINY, "--max-batch", str(max_batch), "--output", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["checked_batches"] == list(range(1, max_batch + 1)) and summary["format"] == "pt2"
    assert summary["dynamic_batch"] is (max_batch > 1)
    run = torch.export.load(str(out)).module()
    assert run(torch.randn(max_batch, 3, 16, 16)).shape[0] == max_batch
    with pytest.raises(Exception, match="Guard failed"):
        run(torch.randn(max_batch + 1, 3, 16, 16))


@pytest.mark.slow
@pytest.mark.skipif(not HAS_ONNX, reason="needs onnx, onnxscript and onnxruntime (the dev extra installs them)")
@pytest.mark.parametrize("max_batch", [1, 2])
def test_export_onnx_from_suffix_max_batch(max_batch, tmp_path, capsys):
    """--output x.onnx writes ONNX (no --format); --max-batch 1 gives a batch-1 file, 2 a symbolic batch."""
    import onnx
    out = tmp_path / "m.onnx"
    assert load_tool("export").main([str(DEMO), *TINY, "--max-batch", str(max_batch), "--output", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["format"] == "onnx" and summary["checked_batches"] == list(range(1, max_batch + 1))
    batch = onnx.load(str(out)).graph.input[0].type.tensor_type.shape.dim[0]
    assert (batch.dim_value == 1) if max_batch == 1 else (batch.dim_param and not batch.dim_value)
    assert summary["opset"] == onnx.load(str(out)).opset_import[0].version
    if max_batch == 2:  # an opset the exporter cannot write (it wrote 18 and said success) is an error, no file
        again = tmp_path / "m17.onnx"
        assert load_tool("export").main([str(DEMO), *TINY, "--opset", "17", "--output", str(again)]) == 1
        assert "--opset 17: the exporter wrote opset" in capsys.readouterr().err
        assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]
    else:  # --external-data: the weights in m_ext.onnx.data next to it, named in the summary
        ext = tmp_path / "ext" / "m_ext.onnx"
        assert load_tool("export").main([str(DEMO), *TINY, "--external-data", "--output", str(ext)]) == 0
        assert json.loads(capsys.readouterr().out)["external_data"] == ["m_ext.onnx.data"]
        assert sorted(p.name for p in ext.parent.iterdir()) == ["m_ext.onnx", "m_ext.onnx.data"]


@pytest.mark.slow
@pytest.mark.skipif(not HAS_ONNX, reason="needs onnx, onnxscript and onnxruntime (the dev extra installs them)")
def test_export_segmentation_onnx(seg_checkpoint, tmp_path, capsys):
    out = tmp_path / "seg.onnx"
    assert load_tool("export").main([str(SEG_DEMO), ONE_BLOCK, "--checkpoint", str(seg_checkpoint), "--format", "onnx",
                                     "--output", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["format"] == "onnx" and summary["max_abs_diff"] < 1e-4 and out.is_file()


def test_tower_img_size_and_classes_only_where_they_apply(tmp_path, capsys):
    """--tower text of a model that is not RWKV-CLIP was ignored (the classifier written as <name>_text.pt2);
    an image size for the text tower and a class count for RWKV-CLIP were ignored too."""
    tool = load_tool("export")
    for argv, message in ((["vrwkv_tiny_patch16_224", "--tower", "text"], "tower='text' is a tower of an RWKV-CLIP"),
                          (["RWKV-CLIP-Tiny-demo", "--tower", "text", "--img-size", "32"], "the text tower takes"),
                          (["RWKV-CLIP-Tiny-demo", "--num-classes", "3"], "an RWKV-CLIP model has no classifier")):
        assert tool.main([*argv, "--output", str(tmp_path / "x.pt2")]) == 2
        assert message in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_a_train_clip_config_exports_its_model(tmp_path, capsys):
    """A train_clip config names its RWKV-CLIP model and kwargs (it was read as a classification config: 'no value
    for model.drop_path_rate')."""
    out = tmp_path / "text.pt2"
    config = ROOT / "configs" / "clip" / "demo_shapes.yaml"
    assert load_tool("export").main([str(config), "model.kwargs={text_cfg: {layers: 1}}", "--tower", "text",
                                     "--output", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out)
    program = torch.export.load(str(out))
    assert summary["input_dtype"] == "int64" and summary["input_shape"] == [24]
    assert sum(1 for n in program.state_dict if ".blocks." in n and n.endswith("ln1.weight")) == 1
    # a config with its own text length: the example tokens take it (the base config's 24 failed: "more than 16")
    assert load_tool("export").main([str(config), "model.kwargs={text_cfg: {layers: 1, context_length: 16}}",
                                     "--tower", "text", "--output", str(out)]) == 0
    assert json.loads(capsys.readouterr().out)["input_shape"] == [16]


def test_a_failed_check_keeps_the_file_already_there(tmp_path, capsys, monkeypatch):
    """A rejected export wrote nothing but deleted the file already at --output (and ONNX replaced it before its
    check); --atol < 0 rejected every output."""
    import vision_rwkv.export as export
    out = tmp_path / "m.pt2"
    out.write_bytes(b"an earlier, good program")

    def mismatch(*args, **kwargs):
        raise export.ExportMismatchError("exported program: 3 of 3 outputs differ")

    monkeypatch.setattr(export, "verify_program", mismatch)
    assert load_tool("export").main(["vrwkv_tiny_patch16_224", "--img-size", "32", "--output", str(out)]) == 1
    assert "3 of 3 outputs differ" in capsys.readouterr().err
    assert out.read_bytes() == b"an earlier, good program" and sorted(tmp_path.iterdir()) == [out]
    for argv, message in ((["--atol", "-1"], "--atol must be >= 0"), (["--opset", "0"], "--opset must be")):
        with pytest.raises(SystemExit):
            load_tool("export").parse_args(["m", *argv])
        assert message in capsys.readouterr().err


def test_missing_onnx_packages_are_named_before_any_work(tmp_path, capsys, monkeypatch):
    tool = load_tool("export")
    monkeypatch.setattr(tool, "missing_onnx_packages", lambda: ["onnxruntime"])
    assert tool.main(["no_such_model", "--output", str(tmp_path / "x.onnx")]) == 2  # (the model is never built)
    assert "an ONNX export needs onnxruntime: pip install" in capsys.readouterr().err


@pytest.mark.skipif(not HAS_ONNX, reason="needs onnx, onnxscript and onnxruntime (the dev extra installs them)")
def test_a_failed_check_names_the_output_and_leaves_no_folder(tmp_path, capsys, monkeypatch):
    """The check runs on the files in a staging folder, gone when the error is read: the message names --output; a
    new folder made for --output is removed again."""
    import vision_rwkv.export as export
    out = tmp_path / "new" / "deeper" / "m.onnx"

    def fake_export(model, example, path, *args, **kwargs):
        Path(path).write_bytes(b"onnx")
        Path(f"{path}.data").write_bytes(b"weights")

    def mismatch(path, *args, **kwargs):
        raise export.ExportMismatchError(f"ONNX model {path}, input (1, 3, 32, 32): 3 of 1000 outputs differ")

    monkeypatch.setattr(export, "export_onnx", fake_export)
    monkeypatch.setattr(export, "verify_onnx", mismatch)
    tool = load_tool("export")
    monkeypatch.setattr(tool, "_onnx_opset", lambda path: 18)
    assert tool.main(["vrwkv_tiny_patch16_224", "--img-size", "32", "--output", str(out)]) == 1
    err = capsys.readouterr().err
    assert f"error: ONNX model {out}, input (1, 3, 32, 32): 3 of 1000 outputs differ" in err and "staging" not in err
    assert list(tmp_path.iterdir()) == []
