"""tools/benchmark_host.py: host cost and launch counts of one forward with the device launches stubbed (CPU)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _run(tmp_path, name, extra_env=None, extra_args=()):
    out = tmp_path / f"{name}.json"
    cmd = [sys.executable, str(ROOT / "tools" / "benchmark_host.py"), "--model", "vrwkv_tiny_patch16_224",
           "--model", "deit_tiny_patch16_224", "--repeats", "1", "--calls", "2", "--out", str(out), *extra_args]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VRWKV_", "TRITON_"))}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT, env={**env, **(extra_env or {})})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| vrwkv_tiny_patch16_224 | fused" in proc.stdout and "x DeiT" in proc.stdout
    data = json.loads(out.read_text())
    assert data["meta"]["env"].get("VRWKV_BACKEND") == "triton" and "v4" in data["meta"]["kernel_configs"]
    return {r["model"]: r for r in data["rows"]}


@pytest.mark.slow
def test_launch_counts_and_fused_gemms(tmp_path):
    base = _run(tmp_path, "base")
    ours, deit = base["vrwkv_tiny_patch16_224"], base["deit_tiny_patch16_224"]
    assert ours["host_ms"] > 0 and deit["host_ms"] > 0
    assert ours["dim"] == deit["dim"] == 64  # narrow models by default: the same launches, no weight-sized CPU work
    assert deit["triton_launches"] == 0 and deit["gemms"] == 48  # 4 Linear layers x 12 blocks
    # 12 blocks: 2 shift+lerp, 1 WKV (one chunk at 4 tokens), 1 relu^2, 2 residual+norm (the last block's second add
    # carries the final norm); the two sigmoid gates formed inside the WKV and the second residual+norm kernels; 7
    # projections per block + the patch embedding
    assert ours["triton_by_kernel"] == {"_tsm_fwd_kernel": 24, "_seq_fwd_kernel": 12, "_relu_square_fwd_kernel": 12,
                                        "_add_norm_fwd_kernel": 24}
    # per block the token mix's k, v, r in one batched GEMM, its output projection and the channel mix's 3
    # projections; + the patch embedding
    assert ours["stubbed_products"] == {"bmm": 12} and "aten.bmm" not in ours["aten_by_op"]  # stubbed, not computed
    assert ours["gemms"] == 12 * 5 + 1
    # the other launches: 2 LayerNorms (norm0, the first norm1), the position-embedding add and the patch cut (the
    # "1 - mu" of the v4 interpolations is computed inside the shift kernels; the 2 stacks of interpolation vectors
    # and the decay / bonus divided by T of each block are kept after the first inference forward)
    assert ours["other_aten_ops"] == 2 + 1 + 1
    assert "aten.stack" not in ours["aten_by_op"] and "aten._foreach_div" not in ours["aten_by_op"]
    gemm = _run(tmp_path, "gemm", {"VRWKV_FUSED_GEMM": "1"})["vrwkv_tiny_patch16_224"]
    # the channel mix's key and both receptance projections become Triton GEMMs that absorb relu^2 and the sigmoid
    # gates (the token mix's k and v still share one batched GEMM): as many launches as the default path, which
    # forms both gates inside other kernels (the WKV, the residual + norm) and keeps its relu^2 pass
    assert gemm["triton_by_kernel"] == {"_tsm_fwd_kernel": 24, "_seq_fwd_kernel": 12, "_linear_act_kernel": 36,
                                        "_add_norm_fwd_kernel": 24}
    assert gemm["gemms"] == 12 * 3 + 1 and gemm["launches"] == ours["launches"]
    assert gemm["vs_deit"] > 0


def test_training_step_launches(tmp_path):
    rows = _run(tmp_path, "train", extra_args=("--train",))
    ours, deit = rows["vrwkv_tiny_patch16_224"], rows["deit_tiny_patch16_224"]
    assert ours["mode"] == deit["mode"] == "train" and ours["host_ms"] > 0 and deit["host_ms"] > 0
    for r in (ours, deit):  # the host time split: forward, backward (and zero_grad, the rest), same repeat
        assert 0 < r["host_ms_forward"] and 0 < r["host_ms_backward"]
        assert r["host_ms_forward"] + r["host_ms_backward"] <= r["host_ms"] * 1.001
    # forward kernels as in inference, and each one's backward kernel (the WKV at 4 tokens: one chunk each way); no
    # sigmoid-gate kernels: the channel mixes' gate is formed by the residual kernels, the spatial mixes' by the WKV
    # kernels, forward and backward
    fwd = {"_tsm_fwd_kernel": 24, "_seq_fwd_kernel": 12, "_relu_square_fwd_kernel": 12, "_add_norm_fwd_kernel": 24}
    bwd = {"_tsm_bwd_kernel": 24, "_seq_bwd_kernel": 12,
           "_relu_square_bwd_from_out_kernel": 12, "_add_norm_bwd_kernel": 24}
    assert ours["triton_by_kernel"] == {**fwd, **bwd}
    # 61 forward GEMMs, each with d input and d weight (+ d bias for the patch embedding)
    assert ours["gemms"] == 61 * 3 + 1 and deit["gemms"] == 48 * 3 + 48
    # one reduction per backward kernel that has parameter gradients (shift: mix weights; WKV: w and u together;
    # residual + norm: gamma, weight and bias together) and the loss sum
    assert ours["aten_by_op"]["aten.sum"] == 24 + 12 + 24 + 1


def test_autocast_training_step_casts(tmp_path):
    """--autocast: the forwards under bf16 autocast, autocast's casts for the stubbed F.linear done for real. DeiT
    casts each weight in the forward (once per step: autocast's cache) and each gradient back; our backbone casts
    every mixer's matrices with one _foreach_copy_ each way per step (``step_cast_blocks = 0``)."""
    rows = _run(tmp_path, "amp", extra_args=("--train", "--autocast"))
    ours, deit = rows["vrwkv_tiny_patch16_224"], rows["deit_tiny_patch16_224"]
    assert ours["dtype"] == deit["dtype"] == "bf16 autocast" and ours["host_ms"] > 0
    # DeiT: qkv, proj, fc1, fc2 weights and biases per block, each cast once and its gradient cast back, plus the
    # patch embedding's operands
    assert deit["aten_by_op"]["aten._to_copy"] >= 2 * 12 * 8
    assert ours["aten_by_op"]["aten._foreach_copy_"] == 2
    assert ours["aten_by_op"].get("aten._to_copy", 0) < 12  # none per block
    assert ours["launches"] < deit["launches"]


def test_launches_through_tritons_host_path(tmp_path):
    """--launches triton: the kernels compiled for sm_90 and launched through Triton's host path up to its C call
    (no GPU); our model runs twice - the short launch path and Triton's ``JITFunction.run`` - with the launches the
    stubbed run counts."""
    import pytest

    from vision_rwkv.kernel_report import cuobjdump_path

    if cuobjdump_path() is None:
        pytest.skip("Triton's NVIDIA backend tools (ptxas) not found")
    out = tmp_path / "triton.json"
    cmd = [sys.executable, str(ROOT / "tools" / "benchmark_host.py"), "--model", "vrwkv_tiny_patch16_224",
           "--model", "deit_tiny_patch16_224", "--repeats", "1", "--calls", "2", "--launches", "triton",
           "--out", str(out)]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VRWKV_", "TRITON_"))}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=ROOT, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {(r["model"], r["path"]): r for r in json.loads(out.read_text())["rows"]}
    fast = rows[("vrwkv_tiny_patch16_224", "fused")]
    slow = rows[("vrwkv_tiny_patch16_224", "fused, Triton's launch")]
    deit = rows[("deit_tiny_patch16_224", "fused")]
    assert {r["launches_via"] for r in rows.values()} == {"triton"}
    # every Triton launch reached the (recording) C call: the counts of the stubbed run (24 + 12 + 12 + 24)
    assert fast["triton_launches"] == slow["triton_launches"] == 72 and deit["triton_launches"] == 0
    assert fast["gemms"] == slow["gemms"] == 61 and fast["host_ms"] > 0 and slow["host_ms"] > 0


_PRODUCT_STUBS = """
import sys
sys.path.insert(0, sys.argv[1])
import benchmark_host as bh
import torch
import pytest

real_mm = torch.mm
with bh._Stubs(products=True) as stubs:
    a, b = torch.randn(5, 3), torch.randn(3, 7, requires_grad=True)
    y = torch.mm(a, b)
    assert y.shape == (5, 7) and y.dtype == torch.float32 and y.requires_grad
    y.sum().backward()  # d b only: one GEMM (a does not require a gradient)
    assert b.grad.shape == (3, 7) and stubs.gemm == 2 and stubs.by_product == {"mm": 1}
    x, w = torch.randn(4, 5, 3), torch.randn(4, 3, 2)
    out = torch.empty(4, 5, 2)
    assert torch.bmm(x, w, out=out) is out and torch.bmm(x, w).shape == (4, 5, 2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.mm(a, b.detach()).dtype == torch.bfloat16
    assert stubs.by_product == {"mm": 2, "bmm": 2} and stubs.gemm == 5
    with pytest.raises(RuntimeError):  # the real op's error for mismatched shapes
        torch.mm(a, torch.randn(4, 7))
    with pytest.raises(RuntimeError):  # and for mismatched dtypes
        torch.bmm(x, w.double())
    assert stubs.gemm == 5
assert torch.mm is real_mm and torch.allclose(torch.mm(a, b), a @ b)
print("ok")
"""


def test_product_stubs():
    """``_Stubs(products=True)``: torch.mm / torch.bmm allocate their output (in autocast's dtype under autocast), count
    one GEMM each and one per input gradient in backward, honour ``out=``, raise what the real op raises, and are
    restored on exit."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VRWKV_", "TRITON_"))}
    proc = subprocess.run([sys.executable, "-c", _PRODUCT_STUBS, str(ROOT / "tools")], capture_output=True,
                          text=True, timeout=300, cwd=ROOT, env=env)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]


@pytest.mark.parametrize("args, message", [(["--repeats", "0"], "--repeats must be >= 1, got 0"),
                                           (["--calls", "-2"], "--calls must be >= 1, got -2"),
                                           (["--dim", "-1"], "--dim must be >= 0")])
def test_cli_bad_counts_are_usage_errors(args, message):
    """``--repeats 0`` printed ``inf`` and wrote ``Infinity`` (not JSON) to --out: now a usage error."""
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "benchmark_host.py"), *args], capture_output=True,
                          text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr[-2000:]


def test_fused_gemm_column_reads_the_switch_as_the_models_do(tmp_path):
    """``VRWKV_FUSED_GEMM=true`` turns the GEMM epilogues on (the one on/off rule): the row says so too."""
    out = tmp_path / "host.json"
    cmd = [sys.executable, str(ROOT / "tools" / "benchmark_host.py"), "--model", "vrwkv_tiny_patch16_224",
           "--repeats", "1", "--calls", "1", "--out", str(out)]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VRWKV_", "TRITON_"))}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT,
                          env=dict(env, VRWKV_FUSED_GEMM="true"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    row = json.loads(out.read_text())["rows"][0]
    assert row["fused_gemm"] == "1" and "_linear_act_kernel" in row["triton_by_kernel"]
    assert "| vrwkv_tiny_patch16_224 | fused + fused GEMMs |" in proc.stdout
