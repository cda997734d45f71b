"""tools/train.py: config + overrides -> a run directory with config dump, logs, curves, checkpoints, metrics."""
import json
import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "configs" / "classification" / "demo_shapes.yaml"
TINY = ["model.kwargs.img_size=16", "model.kwargs.patch_size=4", "model.kwargs.embed_dim=16", "model.kwargs.depth=1",
        "data.input_size=16", "data.shapes.image_size=16", "data.shapes.train_length=32",
        "data.shapes.val_length=16", "train.batch_size=8", "train.epochs=1", "train.show_progress=false",
        "train.eval_every_epochs=1", "train.ckpt_every_epochs=1"]


def load_tool(name: str):
    """tools/<name>.py as a module (tools/ is not a package)."""
    spec = importlib.util.spec_from_file_location(f"tool_{name}", ROOT / "tools" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_train_cli_writes_run(tmp_path, capsys):
    train = load_tool("train")
    result = train.main([str(DEMO), *TINY, f"run_dir={tmp_path}", "train.tensorboard=true"])
    assert result["step"] == 4 and 0.0 <= result["top1"] <= 100.0
    for name in ("config.yaml", "train_metrics.csv", "val_metrics.csv", "curves.png", "final_metrics.json",
                 "checkpoints/best.pt", "checkpoints/ckpt_00000004.pt"):
        assert (tmp_path / name).is_file(), name
    assert list((tmp_path / "tb").iterdir())
    dumped = (tmp_path / "config.yaml").read_text()
    assert "embed_dim: 16" in dumped and "${" not in dumped
    final = json.loads((tmp_path / "final_metrics.json").read_text())
    assert final["top1"] == result["top1"]
    assert '"top1"' in capsys.readouterr().out


def test_train_cli_unknown_key_exits_with_its_name(tmp_path, capsys):
    train = load_tool("train")
    with pytest.raises(SystemExit) as exc:
        train.main([str(DEMO), "train.epoch=3"])
    assert exc.value.code == 2
    assert "train.epoch" in capsys.readouterr().err


def test_train_cli_missing_data_root_is_clear(tmp_path):
    train = load_tool("train")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        train.main([str(DEMO), *TINY, f"run_dir={tmp_path}", "data.type=imagefolder",
                    f"data.train_dir={tmp_path / 'nowhere'}"])
