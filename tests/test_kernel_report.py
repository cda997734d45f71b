"""vision_rwkv.kernel_report: Triton launches compiled for sm_90 on a CPU-only machine, cubins read by cuobjdump.

Asserts properties the v4 kernels were designed for (static SASS, no GPU needed): the register-sequential kernels
(triton_seq.py) cross no threads (no shuffles or barriers) and spill nothing, while the tile-scan kernels they
replace shuffle; channel loads vectorize when C % 16 == 0.
"""
import pytest
import torch

pytest.importorskip("triton")

from vision_rwkv import benchmark as bm  # noqa: E402
from vision_rwkv.kernel_report import (capture_kernels, cuobjdump_path, format_rows, kernel_rows,  # noqa: E402
                                      loop_instructions, sass_counts)

pytestmark = pytest.mark.skipif(cuobjdump_path() is None, reason="cuobjdump (shipped with triton) not found")


@pytest.fixture
def restore_kernel_config():
    saved = {k: dict(v) for k, v in bm.kernel_configs().items()}
    yield
    for k, v in bm.kernel_configs().items():
        v.clear()
        v.update(saved[k])


def _v4_rows(shape, dtype, settings):
    from vision_rwkv.ops.bi_wkv import triton as t4

    bm.apply_kernel_config(settings)
    w, u, k, v = bm._op_inputs("v4_biwkv", shape, dtype, "cpu")
    with capture_kernels(90, tag="fwd") as fwd:
        y, m, car = t4._fwd(w, u, k, v, "exact", 32)
    assert y.shape == k.shape and y.dtype == v.dtype and not fwd[0].kernel.asm["cubin"] == b""
    with capture_kernels(90, tag="bwd") as bwd:
        t4._bwd(w, u, k, v, m, car, torch.randn_like(y), "exact", 32)
    return {(r["tag"], r["kernel"]): r for r in kernel_rows(fwd + bwd)}


@pytest.mark.slow
def test_seq_kernels_cross_no_threads(restore_kernel_config):
    rows = _v4_rows((2, 100, 64), torch.bfloat16, ["v4.seq=1"])
    names = {("fwd", "_seq_fwd_summary_kernel"), ("fwd", "_carry_kernel"), ("fwd", "_seq_fwd_kernel"),
             ("bwd", "_seq_bwd_summary_kernel"), ("bwd", "_carry_kernel"), ("bwd", "_seq_bwd_kernel")}
    assert set(rows) == names
    for key in names - {("fwd", "_carry_kernel"), ("bwd", "_carry_kernel")}:
        r = rows[key]
        assert r["shfl"] == 0 and r["bar"] == 0, r
        if key == ("bwd", "_seq_bwd_kernel"):  # 6 values per token and channel in registers: at most one spilled
            assert r["local"] <= 4 and r["stack"] <= 16, r
        else:
            assert r["local"] == 0 and r["stack"] == 0, r  # nothing spilled
        assert 0 < r["regs"] <= 255 and r["ldg"] > 0 and r["mufu"] > 0, r
    # 64 channels per program, one warp: two adjacent bf16 channels per thread -> 32-bit loads, none 16-bit
    assert rows[("fwd", "_seq_fwd_kernel")]["ldg_16bit"] == 0
    assert rows[("fwd", "_seq_fwd_kernel")]["grid"] == [2, 1, 7]  # B, channel blocks, ceil(100 / 16) chunks
    table = format_rows(list(rows.values()))
    assert "_seq_fwd_kernel" in table and table.count("\n") == len(rows) + 2


@pytest.mark.slow
def test_seq_inline_carries_stay_in_registers(restore_kernel_config):
    """seq_carry_inline: no carry kernel, and the chunk kernels that fold every chunk summary themselves (7 chunks
    here, unrolled to 8) still cross no threads and spill no more than with the carry kernel."""
    rows = _v4_rows((2, 100, 64), torch.bfloat16, ["v4.seq=1", "v4.seq_carry_inline=16"])
    assert set(rows) == {("fwd", "_seq_fwd_summary_kernel"), ("fwd", "_seq_fwd_kernel"),
                         ("bwd", "_seq_bwd_summary_kernel"), ("bwd", "_seq_bwd_kernel")}
    for key, r in rows.items():
        assert r["shfl"] == 0 and r["bar"] == 0, r
        assert r["local"] <= (4 if key == ("bwd", "_seq_bwd_kernel") else 0), r


@pytest.mark.slow
def test_v6_pairs_forward_is_one_launch_without_spills(restore_kernel_config):
    """pairs_max_t: a 224-px forward is one launch of the sub-chunk pair kernel, which spills nothing; with a
    power-of-two head size its channel mask is known at compile time, so its loads are vectors, none 16-bit.
    pairs_keys=1: two launches, the pair kernel lighter."""
    from vision_rwkv.ops.bi_wkv6 import triton as t6

    bm.apply_kernel_config(["v6.algo=chunk", "v6.pairs_max_t=256"])
    for N, even in ((64, True), (48, False)):
        ins = bm._op_inputs("v6_biwkv", (2, 196, 2, N), torch.bfloat16, "cpu")
        with capture_kernels(90, tag="fwd") as fwd:
            t6._fwd(*ins)
        rows = kernel_rows(fwd)
        assert [r["kernel"] for r in rows] == ["_pairs_fwd_kernel"] and rows[0]["grid"] == [4, 13], rows
        r = rows[0]
        assert r["local"] == 0 and r["stack"] == 0 and r["mma"] > 0 and r["regs"] <= 255, r
        assert (r["ldg_16bit"] == 0) if even else (r["ldg_16bit"] > 0), r
        if even:
            plain = r
    # pairs_keys: the decayed keys' kernel first; the pair kernel's source loops then form no decays (fewer
    # instructions and special-function ops than without), both without spills
    bm.apply_kernel_config(["v6.pairs_keys=1"])
    ins = bm._op_inputs("v6_biwkv", (2, 196, 2, 64), torch.bfloat16, "cpu")
    with capture_kernels(90, tag="fwd") as fwd:
        t6._fwd(*ins)
    keys = kernel_rows(fwd)
    assert [k["kernel"] for k in keys] == ["_pair_keys_kernel", "_pairs_fwd_kernel"], keys
    assert all(k["local"] == 0 and k["stack"] == 0 and k["grid"] == [4, 13] for k in keys), keys
    assert keys[1]["instr"] < plain["instr"] and keys[1]["mufu"] < plain["mufu"] and keys[1]["mma"] == plain["mma"], (
        keys, plain)


@pytest.mark.slow
def test_scan_kernels_shuffle(restore_kernel_config):
    rows = _v4_rows((1, 70, 32), torch.float32, ["v4.seq=0"])  # the tile scans
    assert rows[("fwd", "_fwd_kernel")]["shfl"] > 0
    assert rows[("fwd", "_fwd_kernel")]["grid"] == [1, 1, 3]


def test_sass_counts_parses_predicated_ops():
    sass = ("        /*0010*/              @!P0 FMUL R28, R28, 0.5 ;   /* 0x3f0000001c1c8820 */\n"
            "        /*0020*/                   MUFU.EX2 R73, R28 ;      /* 0x0000001c00497308 */\n"
            "        /*0030*/                   LDG.E.128 R4, desc[UR4][R2.64] ;\n"
            "        /*0040*/               @P1 LDG.E.U16 R5, desc[UR4][R2.64] ;\n")
    c = sass_counts(sass)
    assert c == {"FMUL": 1, "MUFU.EX2": 1, "LDG.E.128": 1, "LDG.E.U16": 1}


def test_loop_instructions_is_the_longest_backward_branch():
    sass = ("        /*0000*/                   MOV R1, c[0x0][0x28] ;\n"
            "        /*0010*/                   IADD3 R2, R2, 0x1, RZ ;\n"
            "        /*0020*/              @!P0 BRA 0x10 ;\n"  # a 2-instruction loop
            "        /*0030*/                   FADD R3, R3, R4 ;\n"
            "        /*0040*/                   FADD R3, R3, R4 ;\n"
            "        /*0050*/               @P1 BRA 0x30 ;\n"  # a 3-instruction loop
            "        /*0060*/                   BRA 0x80 ;\n"  # forward: not a loop
            "        /*0070*/                   EXIT ;\n"
            "        /*0080*/                   BRA 0x80;\n")  # the trailing self-branch: not a loop
    assert loop_instructions(sass) == 3
    assert loop_instructions(sass.split("        /*0020*/")[0]) == 0


def test_fp64_count_includes_conversions():
    """fp64 work: double arithmetic and conversions to / from fp64, not 16 / 32-bit conversions or 64-bit addresses."""
    from vision_rwkv.kernel_report import _group

    ops = sass_counts("        /*0010*/                   DADD R2, R4, R6 ;\n"
                      "        /*0020*/                   F2F.F32.F64 R8, R2 ;\n"
                      "        /*0030*/                   F2F.F64.BF16 R10, R12 ;\n"
                      "        /*0040*/                   F2F.BF16.F32 R13, R14 ;\n"
                      "        /*0050*/                   UIADD3.64 UR4, UR6, UR8 ;\n")
    assert _group(ops)["fp64"] == 3


@pytest.mark.slow
def test_v6_kernels_use_no_fp64(restore_kernel_config):
    """No RWKV-6 WKV kernel does fp64 work (1/64 of the fp32 rate on most GPUs): the chunk kernels (head size 64,
    states scanned and walked, both carries) and the walk kernels (head size 80, the RWKV-CLIP image tower's), whose
    in-chunk sums are fp32 scans and fp32 pairs hi + lo."""
    from vision_rwkv.ops.bi_wkv6 import triton as t6

    settings = {64: ["v6.state_walk=0", "v6.state_walk=16,v6.fwd_carry=1,v6.bwd_carry=1"], 80: ["v6.algo=walk"]}
    names = set()
    for n, configs in settings.items():
        ins = bm._op_inputs("v6_biwkv", (1, 100, 2, n), torch.bfloat16, "cpu")
        for cfg in configs:
            bm.apply_kernel_config(cfg.split(","))
            with capture_kernels(90, tag=cfg) as recs:
                y = t6._fwd(*ins)
                t6._bwd(*ins, torch.randn_like(y))
            for row in kernel_rows(recs):
                assert row["fp64"] == 0, row
                names.add(row["kernel"])
    assert {"_v6_fwd_kernel", "_v6_bwd_kernel", "_fwd_kernel", "_fwd_carry_kernel", "_state_kernel",
            "_scan_kernel", "_state_walk_kernel"} <= names, names


def test_apply_kernel_config_errors(restore_kernel_config):
    with pytest.raises(ValueError, match="unknown key 'nope'"):
        bm.apply_kernel_config(["v4.nope=1"])
    with pytest.raises(ValueError, match="unknown op 'v5'"):
        bm.apply_kernel_config(["v5.seq=1"])
    with pytest.raises(ValueError, match="OP.KEY=VALUE"):
        bm.apply_kernel_config(["seq=1"])
    bm.apply_kernel_config(["v4.seq_t=8", "v6.algo=chunk"])
    assert bm.kernel_configs()["v4"]["seq_t"] == 8 and bm.kernel_configs()["v6"]["algo"] == "chunk"


@pytest.mark.parametrize("op", ["linear_relu_square", "linear_sigmoid_mul"])
def test_gemm_epilogue_kernel_uses_wgmma_without_spills(op, restore_kernel_config):
    """The GEMM-epilogue kernel compiles for sm_90 to warpgroup tensor-core MMAs (HGMMA) fed by asynchronous
    128-bit copies, with 128-bit output stores and no local-memory spills (bf16, real channel widths)."""
    import subprocess
    import tempfile

    from vision_rwkv.ops.fused import linear_triton as lt

    x, w, y = (torch.empty(s, dtype=torch.bfloat16) for s in ((512, 192), (768, 192), (512, 768)))
    with capture_kernels(90, tag="fwd") as recs:
        if op == "linear_relu_square":
            lt.linear_relu_square_triton(x, w)  # no gradient needed: the bare forward
        else:
            lt._sigmoid_mul_fwd(x, w, y, save_pre=True)
    (row,) = kernel_rows(recs)
    assert row["local"] == 0 and row["stack"] == 0, row
    with tempfile.TemporaryDirectory() as tmp:
        path = f"{tmp}/k.cubin"
        with open(path, "wb") as f:
            f.write(recs[0].kernel.asm["cubin"])
        ops = sass_counts(subprocess.run([cuobjdump_path(), "-sass", path], capture_output=True, text=True,
                                         check=True).stdout)
    assert any(k.startswith("HGMMA") for k in ops), sorted(ops)
    assert ops["LDGSTS.E.BYPASS.128"] > 0 and ops["STG.E.128"] > 0, sorted(ops)


def test_a_cuobjdump_failure_names_the_kernel_target_and_the_tools_message(tmp_path):
    """cuobjdump refusing a target (the CUDA 13 one bundled with Triton no longer disassembles sm_70) is one
    CuobjdumpError carrying its stderr, not a bare CalledProcessError."""
    import types

    from vision_rwkv.kernel_report import CuobjdumpError

    tool = tmp_path / "cuobjdump"
    tool.write_text('#!/bin/sh\necho \'nvdisasm fatal : CUDA architecture "SM70" is deprecated\' >&2\nexit 1\n')
    tool.chmod(0o755)
    kernel = types.SimpleNamespace(asm={"cubin": b"\0"}, metadata=types.SimpleNamespace(
        target=types.SimpleNamespace(arch=70), num_warps=4, shared=0))
    rec = types.SimpleNamespace(tag="fwd", name="_fwd_kernel", grid=(1,), kernel=kernel, extra={})
    with pytest.raises(CuobjdumpError, match=r'failed on _fwd_kernel compiled for sm_70: nvdisasm fatal .*"SM70"'):
        kernel_rows([rec], cuobjdump=str(tool))
    assert issubclass(CuobjdumpError, RuntimeError)
