"""The README demo CLI: stage selection and its error (each stage's library function has its own tests)."""
import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _demo():
    spec = importlib.util.spec_from_file_location("vrwkv_demo", ROOT / "tools" / "demo.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_unknown_stage_is_an_error(tmp_path, capsys):
    with pytest.raises(SystemExit):
        _demo().main(["--stages", "classify,detect", "--out", str(tmp_path)])
    assert "detect" in capsys.readouterr().err


def test_stage_runners_exist_for_every_stage():
    demo = _demo()
    assert set(demo.RUNNERS) == set(demo.STAGES)
    for fn in demo.RUNNERS.values():
        assert callable(fn)


def test_stage_folders_of_an_earlier_demo_are_replaced_and_others_kept(tmp_path):
    demo = _demo()
    old = tmp_path / "clip"
    (old / "checkpoints").mkdir(parents=True)
    (old / "config.yaml").write_text("x: 1\n")
    demo.clear_stage_dir(old)
    assert not old.exists()
    demo.clear_stage_dir(tmp_path / "missing")  # nothing to clear
    other = tmp_path / "seg"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit, match="not an earlier demo's stage folder"):
        demo.clear_stage_dir(other)
    assert (other / "notes.txt").read_text() == "mine"
