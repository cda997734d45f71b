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
