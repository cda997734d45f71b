"""benchmarks/capture_bisect.py: the variants' steps run (eagerly on CPU: the plumbing a device run relies on)."""
import importlib.util
import json
import math
import os
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


def test_host_sync_scan_finds_what_a_capture_cannot_contain():
    """Each kind of op that would make the host wait for a GPU is found (with the frame that ran it), a scalar
    assigned into a tensor and the ordinary ops are not."""
    mod = _bisect_module()
    x = torch.randn(6)
    kinds = {
        "_local_scalar_dense": lambda: float(x.sum()),
        "nonzero": lambda: torch.nonzero(x > 0),
        "index": lambda: x[x > 0],
        "index_put_": lambda: x.clone().__setitem__(x > 0, 0.0),
        "masked_select": lambda: torch.masked_select(x, x > 0),
        "repeat_interleave": lambda: torch.repeat_interleave(torch.tensor([1, 2])),
        "tensor": lambda: torch.tensor([1.0, 2.0]),
        "as_tensor": lambda: torch.as_tensor([1.0]),
        "equal": lambda: torch.equal(x, x),
        "_unique2": lambda: torch.unique(x),
    }
    for op, fn in kinds.items():
        rows = mod.host_syncs(fn)
        assert op in [r["op"] for r in rows], (op, rows)
        inner = [r["frames"][-1] for r in rows]  # (the caller's frame innermost; the scan's own frames left out)
        assert all(f.startswith("benchmarks/capture_bisect.py:") and f.endswith(" host_syncs") for f in inner), rows
    clean = mod.host_syncs(lambda: (x.clone().__setitem__(0, 1.0), x.exp().sum(), x[1:3] * 2, torch.cumsum(x, 0),
                                    torch.repeat_interleave(x, torch.tensor([1] * 6), output_size=6)))
    assert [r["op"] for r in clean] == ["tensor"], clean  # (the repeats made from a list, not the interleave)
    assert torch.tensor is not None and torch.tensor.__module__ == "torch", "the scan put torch.tensor back"


def test_host_sync_scan_skips_only_the_optimizer():
    mod = _bisect_module()
    p = torch.nn.Parameter(torch.randn(3))
    opt = torch.optim.AdamW([p], lr=1e-3)

    def step():
        p.grad = torch.ones_like(p)
        opt.step()
    step()
    assert any(r["op"] == "_local_scalar_dense" for r in mod.host_syncs(step))  # (AdamW's step count, not capturable)
    assert mod.host_syncs(step, skip_optimizer=True) == []


def test_training_steps_through_the_kernels_do_not_sync_the_host(tmp_path):
    """What a CUDA-graph capture of a training step needs (round 6's failed on an H200): no op of the forward, the
    backward or AdamW waits for the GPU - checked here on the Triton path (kernels interpreted), fused and per-op,
    v4 and v6, bf16 autocast and fp32, drop path on."""
    out = tmp_path / "bisect.json"
    env = {**os.environ, "TRITON_INTERPRET": "1", "VRWKV_BACKEND": "triton"}
    tiny = json.dumps({"embed_dim": 64, "depth": 2, "img_size": 32, "drop_path_rate": 0.1})
    proc = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--batch", "2", "--model-kw", tiny,
                           "--variant", "default", "--variant", "vrwkv6", "--variant", "per_op_mixers",
                           "--variant", "fp32", "--out", str(out)],
                          capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads(out.read_text())["rows"]
    assert len(rows) == 4 and all(r["ok"] for r in rows), rows
    assert [r["host_syncs"] for r in rows] == [[]] * 4, rows


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
