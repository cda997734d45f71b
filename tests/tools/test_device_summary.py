"""benchmarks/device_summary.py: parses a device run's logs and JSON, computes the ratios and targets, and decides which
opt-in kernels become default only on passing tests and measured speed-ups."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
import device_summary as ds  # noqa: E402

XDIST_LOG = """\
[gw0] [  1%] PASSED tests/ops/test_bi_wkv_triton.py::test_bi_wkv_triton_cuda[exact_64x196x192]
[gw1] [  2%] PASSED tests/ops/test_bi_wkv_triton.py::test_bi_wkv_triton_cuda[exact_64x196x192_seq]
[gw1] [  3%] FAILED tests/ops/test_bi_wkv6_triton.py::test_bi_wkv6_triton_cuda[16x1024x6x64_chunk]
[gw0] [  4%] PASSED tests/ops/test_bi_wkv6_triton.py::test_bi_wkv6_triton_cuda[64x196x3x64]
[gw2] [  5%] PASSED tests/ops/test_fused_triton.py::test_fused_triton_cuda[linear_relu_square_T_1024]
[gw2] [  6%] SKIPPED tests/ops/test_fused_triton.py::test_fused_triton_cuda[linear_sigmoid_mul_T_1024]
FAILED tests/ops/test_bi_wkv6_triton.py::test_bi_wkv6_triton_cuda[16x1024x6x64_chunk] - AssertionError: y 0.3
"""
PLAIN_LOG = """\
tests/models/test_fused_path.py::test_fused_path_cuda[vrwkv_tiny_patch16_224] PASSED                     [ 50%]
tests/models/test_fused_path.py::test_compile_fullgraph_cuda[vrwkv_tiny_patch16_224] PASSED              [100%]
======================== 2 passed, 31 deselected in 40.1s ========================
"""


def _sweep_rows(v4_speedup: float, v6_speedup: float) -> list:
    rows = []
    for op, (old, new), x, shape in (("v4", ds.SWEEP_PAIRS["v4"], v4_speedup, [16, 1024, 384]),
                                     ("v6", ds.SWEEP_PAIRS["v6"], v6_speedup, [16, 1024, 6, 64])):
        for dtype in ("fp32", "bf16"):
            base = dict(op=op, dtype=dtype, shape=shape)
            rows.append(dict(base, config=old, eager_f=1.0, eager_fb=3.0, graph_f=0.5, graph_fb=2.0))
            rows.append(dict(base, config=new, eager_f=1.0 / x, eager_fb=3.0 / x, graph_f=0.5 / x, graph_fb=2.0 / x))
    rows.append(dict(op="v4", config="seq_t16", dtype="fp32", shape=[1, 16384, 192], error="RuntimeError: oom"))
    return rows


def test_parse_pytest_log_both_layouts():
    res = ds.parse_pytest_log(XDIST_LOG + PLAIN_LOG)
    assert res["tests/ops/test_bi_wkv_triton.py::test_bi_wkv_triton_cuda[exact_64x196x192_seq]"] == "PASSED"
    assert res["tests/ops/test_bi_wkv6_triton.py::test_bi_wkv6_triton_cuda[16x1024x6x64_chunk]"] == "FAILED"
    assert res["tests/ops/test_fused_triton.py::test_fused_triton_cuda[linear_sigmoid_mul_T_1024]"] == "SKIPPED"
    assert res["tests/models/test_fused_path.py::test_fused_path_cuda[vrwkv_tiny_patch16_224]"] == "PASSED"
    assert len(res) == 8


def test_sweep_speedups_pairs_configs_and_skips_errors():
    rows = ds.sweep_speedups(_sweep_rows(2.0, 1.5), "v4")
    assert len(rows) == 2 and {r["dtype"] for r in rows} == {"fp32", "bf16"}
    assert all(r["graph_fb_x"] == pytest.approx(2.0) and r["eager_f_x"] == pytest.approx(2.0) for r in rows)
    assert ds.sweep_speedups(_sweep_rows(2.0, 0.5), "v6")[0]["graph_fb_x"] == pytest.approx(0.5)


def test_verdict_needs_passing_tests_model_tests_and_speed():
    default = ds.parse_pytest_log(XDIST_LOG)
    optin = ds.parse_pytest_log(PLAIN_LOG)
    gemm = [dict(impl="unfused", mode="fwd", ms=1.0), dict(impl="fused", mode="fwd", ms=0.8, vs_unfused=1.25),
            dict(impl="fused", mode="fwd+bwd", ms=2.0, vs_unfused=1.1)]
    v = ds.verdict(default, optin, _sweep_rows(2.0, 3.0), gemm)
    assert v["v4_seq"]["make_default"] and v["v4_seq"]["tests_ran"] == 1
    # v6 chunk is 3x faster, but one of its CUDA cases failed
    assert not v["v6_chunk"]["make_default"] and v["v6_chunk"]["faster"]
    assert v["v6_chunk"]["tests_failed"] == ["tests/ops/test_bi_wkv6_triton.py::test_bi_wkv6_triton_cuda"
                                             "[16x1024x6x64_chunk]"]
    assert v["fused_gemm"]["make_default"] and v["fused_gemm"]["vs_unfused_geomean"] == pytest.approx(1.1726, 1e-3)
    # the mixed-operand GEMMs are judged by their own rows only (none here: not faster, and no CUDA case ran)
    assert not v["fused_mix"]["make_default"] and v["fused_mix"]["vs_unfused_geomean"] is None
    mix = gemm + [dict(epilogue="mix_v4x3", impl="fused", mode="fwd", ms=0.5, vs_unfused=1.5),
                  dict(epilogue="mix_v6x5", impl="fused", mode="fwd", ms=0.5, vs_unfused=0.6)]
    mix_tests = dict(default, **{"tests/ops/test_fused_triton.py::test_fused_triton_cuda[mix_linear_v4_T_1024_bf16]":
                                 "PASSED"})
    v = ds.verdict(mix_tests, optin, _sweep_rows(2.0, 3.0), mix)
    assert v["fused_mix"]["vs_unfused_geomean"] == pytest.approx(0.9487, 1e-3) and not v["fused_mix"]["faster"]
    assert v["fused_gemm"]["vs_unfused_geomean"] == pytest.approx(1.1726, 1e-3)
    mix[-1]["vs_unfused"] = 1.2
    assert ds.verdict(mix_tests, optin, _sweep_rows(2.0, 3.0), mix)["fused_mix"]["make_default"]
    # the fused MLP: its own rows
    mlp_tests = dict(mix_tests, **{"tests/ops/test_fused_triton.py::test_fused_triton_cuda[mix_mlp_v4_T_1024_bf16]":
                                   "PASSED"})
    v = ds.verdict(mlp_tests, optin, _sweep_rows(2.0, 3.0), mix + [dict(epilogue="mlp", impl="fused", vs_unfused=0.8)])
    assert v["fused_mlp"]["vs_unfused_geomean"] == pytest.approx(0.8) and not v["fused_mlp"]["make_default"]
    assert v["fused_mix"]["make_default"] and v["fused_mix"]["vs_unfused_geomean"] == pytest.approx(1.3416, 1e-3)
    # slower: no
    assert not ds.verdict(default, optin, _sweep_rows(1.05, 3.0), gemm)["v4_seq"]["make_default"]
    # whole-model tests with the opt-ins failed or never ran: nothing becomes default
    broken = dict(optin, **{"tests/models/test_fused_path.py::test_fused_path_cuda[vrwkv6_tiny_patch16_224]": "FAILED"})
    for models in (broken, {}):
        assert not any(x["make_default"] for x in ds.verdict(default, models, _sweep_rows(2.0, 3.0), gemm).values())
    # v6: a chunk forward 3x faster with a backward slower than the walk kernels' (2.4 / 1.8 ms against 2.0 / 1.5)
    # -> the forward alone
    rows = _sweep_rows(2.0, 3.0)
    for r in rows:
        if r["op"] == "v6" and r["config"] == "chunk":
            r.update(eager_fb=r["eager_f"] + 2.4, graph_fb=r["graph_f"] + 1.8)
    passing = {k: "PASSED" for k in default}
    v6 = ds.verdict(passing, optin, rows, gemm)["v6_chunk"]
    assert v6["graph_f_speedup_geomean"] == pytest.approx(3.0)
    assert v6["graph_bwd_speedup_geomean"] == pytest.approx(1.5 / 1.8)
    assert v6["make_default_forward_only"] and not v6["make_default"]
    assert v6["forward_only_env"] == "VRWKV_TRITON_V6=algo=chunk,bwd_algo=walk"
    v6 = ds.verdict(passing, optin, _sweep_rows(2.0, 3.0), gemm)["v6_chunk"]  # both faster: the whole opt-in
    assert v6["make_default"] and not v6["make_default_forward_only"]
    # no CUDA case of the opt-in ran (all skipped): no
    skipped = {k: "SKIPPED" for k in default}
    assert not ds.verdict(skipped, optin, _sweep_rows(2.0, 3.0), gemm)["v4_seq"]["make_default"]


def test_verdict_walk_for_short_sequences_only():
    """``v6_walk_short`` (walk_max_t): the walk kernels against the chunk kernels on the sweep's short shapes only -
    faster there counts even where they lose at 4096 tokens; slower there, or their CUDA cases failing, does not."""
    walk_case = "tests/ops/test_bi_wkv6_triton.py::test_bi_wkv6_triton_cuda[16x1024x6x64_bf16_walk_decay]"
    optin = ds.parse_pytest_log(PLAIN_LOG)

    def rows(short_x: float) -> list:
        out = []
        for shape, x in (([64, 196, 3, 64], short_x), ([16, 4096, 3, 64], 0.5)):  # x: chunk / walk time
            base = dict(op="v6", dtype="bf16", shape=shape)
            out += [dict(base, config="chunk", eager_f=1.0, eager_fb=3.0, graph_f=0.5, graph_fb=2.0),
                    dict(base, config="walk", eager_f=1.0 / x, eager_fb=3.0 / x, graph_f=0.5 / x, graph_fb=2.0 / x)]
        return out

    v = ds.verdict({walk_case: "PASSED"}, optin, rows(1.5), [])["v6_walk_short"]
    assert v["make_default"] and v["shapes"] == 1 and v["env"] == "VRWKV_TRITON_V6=walk_max_t=256"  # (196 tokens)
    assert v["graph_fb_speedup_geomean"] == pytest.approx(1.5)
    assert not ds.verdict({walk_case: "PASSED"}, optin, rows(1.05), [])["v6_walk_short"]["make_default"]
    assert not ds.verdict({walk_case: "FAILED"}, optin, rows(1.5), [])["v6_walk_short"]["make_default"]


def test_backbone_rows_ratios_and_targets():
    old = [dict(model="vrwkv_tiny_patch16_224", res=1024, dtype="bf16", train=False, img_per_s=1500.0,
                peak_mem_GiB=0.7, deit="deit_tiny_patch16_224", graph_img_per_s=1800.0),
           dict(model="vrwkv_tiny_patch16_224", res=224, dtype="bf16", train=True, img_per_s=2000.0,
                deit="deit_tiny_patch16_224", per_op_img_per_s=1600.0, ms=64.0, host_ms=60.0),
           dict(model="deit_tiny_patch16_224", res=1024, dtype="bf16", train=False, img_per_s=1000.0,
                peak_mem_GiB=1.2, graph_img_per_s=1200.0),
           dict(model="deit_tiny_patch16_224", res=224, dtype="bf16", train=True, img_per_s=4000.0, ms=32.0,
                host_ms=20.0)]
    new = [dict(model="vrwkv_tiny_patch16_224", res=1024, dtype="bf16", train=False, img_per_s=2100.0,
                peak_mem_GiB=0.6),
           dict(model="vrwkv_tiny_patch16_224", res=224, dtype="bf16", train=True, error="RuntimeError: boom")]
    rows = ds.backbone_rows(old, new)
    assert len(rows) == 2
    hi, tr = rows
    assert hi["x_deit_old"] == pytest.approx(1.5) and hi["x_deit_new"] == pytest.approx(2.1)
    assert hi["target"] == 2.0 and hi["met"] is True and hi["mem_deit"] == 1.2
    assert hi["graph_x_deit_old"] == pytest.approx(1.5) and hi["graph_x_deit_new"] is None
    assert tr["x_deit_old"] == pytest.approx(0.5) and tr["new"] is None and tr["target"] == 0.7
    assert tr["met"] is False and "boom" in tr["error"]
    assert tr["x_deit_per_op"] == pytest.approx(0.4) and hi["x_deit_per_op"] is None  # one node per op (training)
    # host time to enqueue a step on an idle GPU next to the step's time, ours and DeiT's (host-bound: close)
    assert (tr["host_ms_old"], tr["ms_old"], tr["host_ms_deit"], tr["ms_deit"]) == (60.0, 64.0, 20.0, 32.0)
    assert "| 60.0/64.0 | 20.0/32.0 |" in ds.render({}, rows, [], {}, None, [])
    assert hi["graph_modes"] == {} and tr["graph_modes"] == {}
    # a graph number captured in CUDA's relaxed mode (benchmark.graph_fields' fallback) says so in the table
    graphed = [dict(r) for r in old]
    graphed[1].update(graph_img_per_s=3000.0, graph_capture_mode="relaxed")
    graphed[3].update(graph_img_per_s=5000.0, graph_capture_mode="global")
    tr = ds.backbone_rows(graphed, new)[1]
    assert tr["graph_x_deit_old"] == pytest.approx(0.6) and tr["graph_modes"] == {"old": "relaxed"}
    assert "| 0.60/ (old: relaxed capture) |" in ds.render({}, [tr], [], {}, None, [])
    # at 1024 the target also asks for less memory than DeiT, from a configuration fast enough
    new[0]["peak_mem_GiB"] = 1.3
    assert ds.backbone_rows(old, new)[0]["met"] is False
    old[0]["img_per_s"] = 2050.0
    assert ds.backbone_rows(old, new)[0]["met"] is True  # the old configuration: 2.05x with 0.7 GiB


def test_summarise_files_end_to_end(tmp_path):
    (tmp_path / "tests_default.log").write_text(XDIST_LOG)
    (tmp_path / "tests_optin.log").write_text(PLAIN_LOG)
    (tmp_path / "sanitizer.log").write_text("v4 scan ok\nv6 chunk ok\n========= ERROR SUMMARY: 0 errors\n"
                                            "sanitizer rc=0\n")
    (tmp_path / "sweep.json").write_text(json.dumps(_sweep_rows(2.0, 0.9)))
    (tmp_path / "bb_old.json").write_text(json.dumps({"backbones": [
        dict(model="vrwkv6_small_patch16_224", res=1024, dtype="bf16", train=False, img_per_s=300.0,
             deit="deit_small_patch16_224"),
        dict(model="deit_small_patch16_224", res=1024, dtype="bf16", train=False, img_per_s=500.0)]}))
    # gemm.json and bb_new.json missing: reported, not fatal
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "device_summary.py"), str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    assert "Missing inputs: gemm.json, bb_new.json" in text
    assert "ERROR SUMMARY: 0 errors" in text and "2 cases ok" in text
    assert "| vrwkv6_small_patch16_224 | 1024 | bf16 | False | 300 |  | 500 | 0.60 |" in text
    assert "- v4_seq (VRWKV_TRITON_V4=seq=1): YES" in text and "- v6_chunk (VRWKV_TRITON_V6=algo=chunk): no" in text
    verdict = json.loads((tmp_path / "verdict.json").read_text())
    assert verdict["verdict"]["v4_seq"]["make_default"] and not verdict["verdict"]["fused_gemm"]["make_default"]
    assert (tmp_path / "summary.md").read_text() == text.rstrip("\n") + "\n"


def test_summarise_reads_logs_from_their_own_folder(tmp_path):
    """The device script summarises after every step, with the logs kept outside $OUT (its file limit)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from device_summary import summarise
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    out, logs = tmp_path / "out", tmp_path / "logs"
    out.mkdir()
    logs.mkdir()
    (logs / "tests_default.log").write_text(XDIST_LOG)
    (logs / "sanitizer.log").write_text("v4 scan ok\n========= ERROR SUMMARY: 0 errors\nsanitizer rc=0\n")
    text, _ = summarise(out, logs)
    assert "tests_default.log" not in text.split("Missing inputs:")[1].split("\n")[0]
    assert "tests_optin.log" in text and "ERROR SUMMARY: 0 errors" in text and "1 cases ok" in text
    assert sorted(p.name for p in out.iterdir()) == ["summary.md", "verdict.json"]
    text_same_dir, _ = summarise(logs)  # default: logs beside the outputs
    assert "ERROR SUMMARY: 0 errors" in text_same_dir
    # two runs' logs concatenated (device_run10.sh): the worst rc, the errors summed, every case counted
    (logs / "sanitizer.log").write_text("v4 scan ok\n========= ERROR SUMMARY: 0 errors\nsanitizer rc=0\n"
                                        "v6 chunk ok\nmix ok\n========= ERROR SUMMARY: 2 errors\nsanitizer rc=3\n")
    text, _ = ds.summarise(out, logs)
    assert "Sanitizer: rc=3, ERROR SUMMARY: 2 errors (2 runs), 3 cases ok, 0 non-finite" in text


def test_settings_bisect_and_block_checks_are_summarised(tmp_path):
    """device_run8.sh's files: every timed setting against the default kernels, the capture variants, the v6
    block-size errors (absent diagnostics are not reported missing)."""
    rows = []
    for cfg, f, fb in (("chunk", 1.0, 4.0), ("chunk_carry", 0.5, 3.5), ("chunk_st16", 2.0, 8.0)):
        rows.append(dict(op="v6", config=cfg, dtype="bf16", shape=[16, 4096, 3, 64], eager_f=f, eager_fb=fb,
                         graph_f=f, graph_fb=fb))
    rows.append(dict(op="v6", config="chunk_w8", dtype="bf16", shape=[16, 4096, 3, 64], error="OutOfResources"))
    (tmp_path / "sweep.json").write_text(json.dumps(rows))
    text, _ = ds.summarise(tmp_path)
    assert "bisect.json" not in text and "v6_blocks.json" not in text
    assert "| v6 | chunk_carry | bf16 | (16, 4096, 3, 64) | 1.000 | 0.500 | 2.00 | 4.000 | 3.500 | 1.14 |" in text
    assert "| v6 | chunk_st16 | bf16 | (16, 4096, 3, 64) | 1.000 | 2.000 | 0.50 | 4.000 | 8.000 | 0.50 |" in text
    assert "chunk_w8" not in text  # (an errored row has nothing to compare)

    (tmp_path / "bisect.json").write_text(json.dumps({"rows": [
        {"variant": "default", "ok": False, "error": "AcceleratorError: operation failed during capture",
         "frames": ["vision_rwkv/models/_base.py:1 forward", "vision_rwkv/ops/x.py:2 op"],
         "sync_op": ["timm/a.py:3 f", "vision_rwkv/b.py:4 g", "vision_rwkv/c.py:5 h", "called a synchronizing op"],
         "host_syncs": [{"op": "_local_scalar_dense", "count": 2, "frames": ["vision_rwkv/b.py:4 g"]},
                        {"op": "nonzero", "count": 1, "frames": ["timm/a.py:3 f", "vision_rwkv/d.py:6 k"]}]},
        {"variant": "per_op_mixers", "ok": True, "sync_op": None, "host_syncs": []}]}))
    (tmp_path / "v6_blocks.json").write_text(json.dumps({"results": {
        "bt32_bj8": {"y": 1.6e-7, "gr": 3.4e-4, "gk": 3.4e-4, "gv": 1.6e-7, "glogd": 2.6e-2, "gu": 1.4e-7},
        "bt16_bj8": {"error": "CompilationError: K >= 16\nmore"}}}))
    text, _ = ds.summarise(tmp_path)
    assert ("| default | NO | AcceleratorError: operation failed during capture | vision_rwkv/ops/x.py:2 op <- "
            "vision_rwkv/models/_base.py:1 forward | called a synchronizing op <- vision_rwkv/c.py:5 h <- "
            "vision_rwkv/b.py:4 g | _local_scalar_dense x2 @ vision_rwkv/b.py:4 g; nonzero x1 @ vision_rwkv/d.py:6 k |"
            ) in text
    assert "| per_op_mixers | yes |  |  |  |  |" in text
    assert "| bt32_bj8 | 1.6e-07 | 3.4e-04 | 3.4e-04 | 1.6e-07 | 2.6e-02 | 1.4e-07 |  |" in text
    assert "| bt16_bj8 |  |  |  |  |  |  | CompilationError: K >= 16 |" in text
    (tmp_path / "bisect.json").write_text("{not json")
    assert "bisect.json (unreadable)" in ds.summarise(tmp_path)[0]
    (tmp_path / "profile_train.md").write_text("Share of cuda time per op group, training step\n\n| group | x |\n")
    text, _ = ds.summarise(tmp_path)
    assert text.endswith("## Profile (profile_train)\n\nShare of cuda time per op group, training step\n\n"
                         "| group | x |\n")


def test_missing_output_folder_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="no folder .*nope"):
        ds.summarise(tmp_path / "nope")
