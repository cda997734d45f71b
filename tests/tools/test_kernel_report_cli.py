"""tools/kernel_report.py: compiles the v6 chunk kernels for sm_90 on CPU and writes one row per kernel launch."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from vision_rwkv.kernel_report import cuobjdump_path

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.skipif(cuobjdump_path() is None, reason="cuobjdump (shipped with triton) not found")
def test_cli_v6_chunk_variant(tmp_path):
    out = tmp_path / "kr.json"
    cmd = [sys.executable, str(ROOT / "tools" / "kernel_report.py"), "--op", "v6_biwkv", "--shape", "1,40,64",
           "--dtype", "fp32", "--variant", "chunk:v6.algo=chunk,v6.state_t=32,v6.state_walk=0,v6.suffix_inline=0",
           "--variant", "walk:v6.algo=chunk,v6.state_t=32", "--json", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    kernels = [(r["tag"], r["kernel"]) for r in rows]
    assert kernels == [("chunk/fwd", "_state_kernel"), ("chunk/fwd", "_scan_kernel"), ("chunk/fwd", "_fwd_kernel"),
                       ("chunk/bwd", "_state_kernel"), ("chunk/bwd", "_scan_kernel"), ("chunk/bwd", "_bwd_kernel"),
                       ("chunk/bwd", "_suffix_kernel"), ("chunk/bwd", "_glogd_kernel"),
                       # (the default below 16 state chunks: the states walked, no increments and no scan)
                       ("walk/fwd", "_state_walk_kernel"), ("walk/fwd", "_fwd_kernel"),
                       # (and the log decay's suffix sums inside its gradient kernel: 3 sub-chunks)
                       ("walk/bwd", "_state_walk_kernel"), ("walk/bwd", "_bwd_kernel"), ("walk/bwd", "_glogd_kernel")]
    fwd = rows[2]
    assert fwd["grid"] == [1, 3] and fwd["mma"] > 0 and fwd["regs"] > 0  # 3 sub-chunks of 16; tensor-core dots
    assert "| chunk/fwd | _fwd_kernel | 1x3 |" in proc.stdout
    assert rows[8]["grid"] == [4, 2] and rows[8]["mma"] > 0  # one head, 64 state rows in blocks of 16, 2 streams


def test_cli_rejects_bad_variant():
    cmd = [sys.executable, str(ROOT / "tools" / "kernel_report.py"), "--variant", "x:v4.nope=1", "--shape", "1,8,32"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode != 0 and "unknown key 'nope'" in proc.stderr


@pytest.mark.slow
@pytest.mark.skipif(cuobjdump_path() is None, reason="cuobjdump (shipped with triton) not found")
def test_cli_operand_gemms_count_the_repeated_operand_work(tmp_path):
    """The operand-forming GEMMs (VRWKV_FUSED_MIX): the v6 token mix's five projections as two launches (4 + 1) and
    the dynamic estimate, which for 64-wide column tiles is above the wide default's (each column tile of a row block
    forms the mixed operand again)."""
    out = tmp_path / "kr.json"
    cmd = [sys.executable, str(ROOT / "tools" / "kernel_report.py"), "--op", "mix_v6x5", "--shape", "2,256,192",
           "--variant", "wide", "--variant", "narrow:mix.bm=64,mix.bn=64,mix.warps=4", "--json", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    assert [(r["tag"], r["kernel"]) for r in rows] == [("wide/fwd", "_mix_linear_kernel")] * 2 + [
        ("narrow/fwd", "_mix_linear_kernel")] * 2
    assert [r["programs"] for r in rows] == [4 * 4, 4, 4 * 8 * 3, 8 * 3]  # (P x row tiles x column tiles)
    assert all(0 < r["loop_instr"] < r["instr"] and r["local"] == 0 for r in rows)
    wide, narrow = sum(r["warp_instr_M"] for r in rows[:2]), sum(r["warp_instr_M"] for r in rows[2:])
    assert narrow > 1.5 * wide, (wide, narrow)
    assert "warp_instr_M |" in proc.stdout


def test_cli_operand_gemms_need_a_square_grid():
    cmd = [sys.executable, str(ROOT / "tools" / "kernel_report.py"), "--op", "mix_v4x3", "--shape", "1,200,64"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 2 and "T must be a square" in proc.stderr


def _failing_cuobjdump(tmp_path) -> str:
    tool = tmp_path / "cuobjdump"
    tool.write_text('#!/bin/sh\necho \'nvdisasm fatal : CUDA architecture "SM70" is deprecated\' >&2\nexit 1\n')
    tool.chmod(0o755)
    return str(tool)


def test_cli_cuobjdump_failure_is_one_error_line(tmp_path, monkeypatch, capsys):
    """``--arch 70`` with the bundled CUDA 13 cuobjdump (here a stand-in that fails the same way): the tool's own
    message in one line and status 1, not a CalledProcessError traceback."""
    pytest.importorskip("triton")
    sys.path.insert(0, str(ROOT / "tools"))
    import kernel_report as tool

    from vision_rwkv import kernel_report as kr

    monkeypatch.setattr(kr, "cuobjdump_path", lambda: _failing_cuobjdump(tmp_path))
    with pytest.raises(SystemExit) as info:
        tool.main(["--op", "v4_biwkv", "--shape", "1,16,8", "--arch", "90"])
    msg = str(info.value.code)
    assert msg.startswith("kernel_report: cuobjdump --dump-resource-usage failed on ") and "sm_90" in msg, msg
    assert 'CUDA architecture "SM70" is deprecated' in msg


@pytest.mark.parametrize("shape", ["abc", "1,16", "1,0,8", "1,16,8,2"])
def test_cli_bad_shape_is_a_usage_error(shape, capsys):
    sys.path.insert(0, str(ROOT / "tools"))
    import kernel_report as tool

    with pytest.raises(SystemExit) as info:
        tool.main(["--op", "v4_biwkv", "--shape", shape])
    assert info.value.code == 2 and "--shape must be B,T,C" in capsys.readouterr().err
