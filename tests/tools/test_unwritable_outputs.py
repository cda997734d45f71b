"""An output folder or file that cannot be written is one error line (exit status 2) before the work starts: the
trainers' run_dir, test_seg's test.out_dir, eval_zeroshot's and export's --output (they failed with an OSError
traceback after building the data and model, or after the whole evaluation / export). Here a file stands where the
output's folder should be; a read-only folder (the other case) is tests/engine/test_files.py's."""
import pytest
from tool_helpers import DEMO, ROOT, load_tool

from vision_rwkv.engine.files import OutputPathError

SEG_DEMO = ROOT / "configs" / "segmentation" / "demo_shapes.yaml"
CLIP_DEMO = ROOT / "configs" / "clip" / "demo_shapes.yaml"


@pytest.fixture
def blocked(tmp_path):
    """A path whose folder is a file: nothing can be written under it."""
    (tmp_path / "a_file").write_text("x")
    return tmp_path / "a_file" / "out"


def _fail_before_building(monkeypatch):
    """Building any dataset fails the test: the check must come first."""
    def refuse(*args, **kwargs):
        raise AssertionError("the data was built before the output path was checked")
    monkeypatch.setattr("vision_rwkv.engine.classification.build_datasets", refuse)
    monkeypatch.setattr("vision_rwkv.seg.train.build_datasets", refuse)
    monkeypatch.setattr("rwkv_clip.train.build_train_dataset", refuse)


def test_trainers_refuse_a_run_dir_they_cannot_write(blocked, monkeypatch, capsys):
    _fail_before_building(monkeypatch)
    with pytest.raises(OutputPathError, match="run_dir .*a_file is a file, not a folder"):
        load_tool("train").main([str(DEMO), f"run_dir={blocked}"])
    with pytest.raises(OutputPathError, match="run_dir .*a_file is a file"):
        load_tool("train_clip").main([str(CLIP_DEMO), f"run_dir={blocked}"])
    assert load_tool("train_seg").main([str(SEG_DEMO), f"train.run_dir={blocked}"]) == 2
    assert "error: run_dir" in capsys.readouterr().err


def test_eval_and_export_tools_check_their_output_first(blocked, monkeypatch, capsys):
    _fail_before_building(monkeypatch)
    assert load_tool("test_seg").main([str(SEG_DEMO), f"test.out_dir={blocked}"]) == 2
    assert "error: test.out_dir" in capsys.readouterr().err
    with pytest.raises(OutputPathError, match="--output .*a_file is a file"):  # (before the model is loaded)
        load_tool("eval_zeroshot").main(["--model", "ViT-B-32", "--pretrained", "missing.pt",
                                         "--output", str(blocked / "r.json")])
    assert load_tool("export").main(["vrwkv_tiny_patch16_224", "--output", str(blocked / "m.pt2")]) == 2
    assert "error: --output" in capsys.readouterr().err
