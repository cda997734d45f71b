"""benchmarks/launch_cost.py: host time per launch by launch path, on CPU with kernels compiled for sm_90 and the
launcher's final C call recorded."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from vision_rwkv.kernel_report import cuobjdump_path

ROOT = Path(__file__).resolve().parents[2]
needs_ptxas = pytest.mark.skipif(cuobjdump_path() is None, reason="Triton's NVIDIA backend tools (ptxas) not found")


def _env():
    return {k: v for k, v in os.environ.items() if not k.startswith(("VRWKV_", "TRITON_INTERPRET"))}


@needs_ptxas
def test_cli_times_every_path_on_cpu(tmp_path):
    out = tmp_path / "lc.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "launch_cost.py"), "--device", "cpu",
                           "--launches", "50", "--repeats", "2", "--out", str(out)], capture_output=True, text=True,
                          timeout=600, cwd=ROOT, env=_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(out.read_text())
    rows = {r["mode"]: r for r in data["rows"]}
    assert list(rows) == ["aten", "fast", "launcher_tensors", "launcher_addresses", "triton"]
    assert all(r["us_per_launch"] > 0 for r in rows.values()) and rows["aten"]["x_aten"] == 1.0
    assert data["meta"]["torch"] and "kernel_configs" in data["meta"]  # (what produced the numbers)
    assert "| launcher_addresses |" in proc.stdout


@needs_ptxas
def test_each_path_hands_the_launcher_what_it_says():
    """The launcher gets tensors from ``launcher_tensors``, their addresses from ``launcher_addresses`` and the short
    path; Triton's path and the short path launch the same compiled kernel. On a Triton the short path does not
    support there are no ``launcher_*`` modes (nothing recorded to call)."""
    code = textwrap.dedent("""
        import json, sys, torch
        sys.path.insert(0, "benchmarks")
        import launch_cost as lc
        from vision_rwkv.ops.host_driver import host_only_launches
        with host_only_launches(keep=True) as host:
            tensors = [torch.randn(64) for _ in range(lc.N_TENSORS)]
            calls = lc._launchers(tensors, lc._ints())
            found = {}
            for mode in ("fast", "launcher_tensors", "launcher_addresses", "triton"):
                host.launches.clear()
                calls[mode]()
                (launch,) = host.launches
                found[mode] = [launch.handle, ["t" if isinstance(a, torch.Tensor) else a for a in launch.args]]
            found["ptrs"] = [t.data_ptr() for t in tensors]
            # a Triton the short path does not support: its kernels take Triton's path, no launcher_* rows
            from vision_rwkv.ops import triton_jit
            lc._touch_kernel._fast_kernels = triton_jit._UNSUPPORTED
            found["unsupported_modes"] = sorted(lc._launchers(tensors, lc._ints()))
        print(json.dumps(found))
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, cwd=ROOT,
                          env=_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    ptrs, ints = found["ptrs"], [64] + [17 + 3 * i for i in range(15)]
    assert found["launcher_tensors"][1][:24] == ["t"] * 8 + ints
    assert found["launcher_addresses"][1][:24] == found["fast"][1][:24] == ptrs + ints
    assert found["triton"][1][:24] == ["t"] * 8 + ints
    assert len({found[m][0] for m in ("fast", "launcher_tensors", "launcher_addresses", "triton")}) == 1
    assert found["unsupported_modes"] == ["aten", "fast", "triton"]
