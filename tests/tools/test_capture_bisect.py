"""benchmarks/capture_bisect.py: the variants' steps run (eagerly on CPU: the plumbing a device run relies on)."""
import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "capture_bisect.py"
TINY = json.dumps({"embed_dim": 64, "depth": 1, "img_size": 32})


def _bisect_module():
    spec = importlib.util.spec_from_file_location("capture_bisect", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_variants_run_eagerly_on_cpu(tmp_path):
    out = tmp_path / "bisect.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--batch", "2", "--model-kw", TINY,
                           "--variant", "no_drop_path", "--variant", "forward_only_train_mode",
                           "--variant", "deit_control", "--variant", "vrwkv6", "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads(out.read_text())["rows"]
    assert [r["variant"] for r in rows] == ["no_drop_path", "forward_only_train_mode", "deit_control", "vrwkv6"]
    assert all(r["ok"] and all(math.isfinite(v) for v in r["eager_loss"]) for r in rows), rows
    assert rows[0]["model_kw"] == {"drop_path_rate": 0.0} and rows[1]["opts"]["backward"] is False
    assert [r["model"] for r in rows[1:]] == ["vrwkv_tiny_patch16_224", "deit_tiny_patch16_224",
                                              "vrwkv6_tiny_patch16_224"]


def test_where_names_our_frames_of_an_exception():
    """A failing capture's row says where the exception came from: our frames (paths from the package root), the
    innermost last; the frames of the caller (this test) and of the libraries left out."""
    from vision_rwkv.ops import bi_wkv

    where = _bisect_module().where
    with pytest.raises(ValueError) as info:
        bi_wkv(torch.zeros(3), torch.zeros(3), torch.zeros(1, 2, 3), torch.zeros(1, 2, 4))
    frames = where(info.value)
    assert frames[0].startswith("vision_rwkv/ops/bi_wkv/__init__.py:") and frames[0].endswith(" bi_wkv"), frames
    assert frames[-1].startswith("vision_rwkv/ops/_validate.py:"), frames
    assert where(info.value, limit=1) == frames[-1:]


def test_bad_arguments_are_named():
    proc = subprocess.run([sys.executable, str(SCRIPT), "--variant", "nope"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2 and "invalid choice: 'nope'" in proc.stderr
    if not torch.cuda.is_available():
        proc = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2 and "no CUDA device" in proc.stderr


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_default_training_step_captures_cuda(tmp_path):
    """The aim (round 6 failed it): a whole training step of a small VRWKV-T captures and replays."""
    out = tmp_path / "bisect.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--batch", "4", "--variant", "default",
                           "--model-kw", json.dumps({"depth": 2}), "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    row = json.loads(out.read_text())["rows"][0]
    assert row["ok"], row


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_first_sync_names_the_synchronising_op_cuda():
    mod = _bisect_module()
    x = torch.ones(4, device="cuda")
    assert mod.first_sync(lambda: x * 2) is None
    found = mod.first_sync(lambda: float(x.sum()))  # (.item(): a device-to-host copy the host waits for)
    assert found is not None and "synchroniz" in found[-1].lower(), found
    assert torch.cuda.get_sync_debug_mode() == 0  # (put back for what runs next)
