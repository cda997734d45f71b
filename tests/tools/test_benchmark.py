"""tools/benchmark.py: a tiny CPU run of both tables writes sane JSON; the anchor lookup picks the best original."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from vision_rwkv import benchmark as bm

ROOT = Path(__file__).resolve().parents[2]


def test_best_anchor_prefers_old_kernel_where_it_runs():
    kern = bm.load_anchors("kernels")
    if kern is None:
        pytest.skip("no anchors")
    ms, impl = bm._best_anchor(kern, "v4_biwkv", (64, 196, 192), "fwd+bwd")
    assert impl == "old_cuda_Tmax256" and ms == pytest.approx(0.35589, rel=1e-3)
    ms, impl = bm._best_anchor(kern, "v4_biwkv", (4, 4096, 384), "fwd+bwd")
    assert impl == "official_cuda_new"
    ms, impl = bm._best_anchor(kern, "v6_biwkv", (4, 4096, 6, 64), "fwd+bwd")
    assert ms is None  # the original v6 backward does not run at T = 4096


def test_op_bytes_match_anchor_floor():
    kern = bm.load_anchors("kernels")
    if kern is None:
        pytest.skip("no anchors")
    import torch

    row = next(r for r in kern["rows"] if r["op"] == "v6_biwkv" and r["B"] == 16)
    fb, fbb = bm._op_bytes("v6_biwkv", (16, 1024, 6, 64), torch.float32)
    assert fb / bm.DRAM_BPS * 1e3 == pytest.approx(row["dram_floor_fwd_ms"], rel=1e-6)
    assert fbb / bm.DRAM_BPS * 1e3 == pytest.approx(row["dram_floor_fwdbwd_ms"], rel=1e-6)


def test_cli_quick_cpu(tmp_path):
    out = tmp_path / "bench.json"
    cmd = [sys.executable, str(ROOT / "tools" / "benchmark.py"), "--ops", "--gemm", "--backbones", "--device", "cpu",
           "--quick", "--dtype", "fp32", "--shapes", "1,20,64", "--model", "vrwkv_tiny_patch16_224", "--res", "32",
           "--no-train", "--graph", "--iters", "1", "--warmup", "0", "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "## Operators" in proc.stdout and "## Backbones" in proc.stdout and "## GEMM epilogues" in proc.stdout
    data = json.loads(out.read_text())
    ops = data["ops"]
    assert {r["op"] for r in ops} == {"v4_biwkv", "v6_biwkv"}
    assert all("error" not in r for r in ops), [r.get("error") for r in ops]
    assert all(r["ms"] > 0 and r["GBps"] > 0 for r in ops)
    assert {r["mode"] for r in ops} == {"fwd", "fwd+bwd"}
    gemm = data["gemm"]
    assert all("error" not in r and r["ms"] > 0 for r in gemm), gemm
    assert {(r["epilogue"], r["impl"], r["mode"]) for r in gemm} == {
        (e, i, m) for e in ("relu_square", "sigmoid_mul", "tanh", "decay") for i in ("fused", "unfused")
        for m in ("fwd", "fwd+bwd")} | {(e, i, "fwd") for e in ("mix_v4x3", "mix_v6x5", "mix_v6gn", "mlp", "res")
                                        for i in ("fused", "unfused")} | {
        (e, "fused_each", "fwd") for e in ("mix_v4x3", "mix_v6x5")}  # grouped vs one launch per projection
    assert all("vs_unfused" in r for r in gemm if r["impl"].startswith("fused"))
    bbs = data["backbones"]
    ours = [r for r in bbs if r["model"] == "vrwkv_tiny_patch16_224"]
    assert ours and all("error" not in r and r["img_per_s"] > 0 for r in ours), ours
    assert any(r["model"].startswith("deit") for r in bbs)
    assert "ratio_vs_deit" in ours[0]
    assert not any(k.startswith("graph") for r in bbs for k in r)  # CUDA graphs only on CUDA


def test_json_keeps_rows_of_a_run_cut_short(tmp_path, monkeypatch):
    """Each measured row is in the JSON as soon as it is printed (atomically replaced), so a run stopped by a timeout
    keeps its rows; the section's full list replaces the partial one at its end."""
    sys.path.insert(0, str(ROOT / "tools"))
    import benchmark as tool

    out = tmp_path / "bench.json"

    def fake_backbones(*args, progress=None, **kwargs):
        progress(dict(model="vrwkv_tiny_patch16_224", res=32, img_per_s=5.0))
        seen = json.loads(out.read_text())["backbones"]
        assert seen == [dict(model="vrwkv_tiny_patch16_224", res=32, img_per_s=5.0)]
        raise KeyboardInterrupt  # the timeout

    monkeypatch.setattr(tool.bm, "bench_backbones", fake_backbones)
    with pytest.raises(KeyboardInterrupt):
        tool.main(["--backbones", "--device", "cpu", "--quick", "--out", str(out)])
    data = json.loads(out.read_text())
    assert data["backbones"][0]["img_per_s"] == 5.0 and "meta" in data
    assert data["meta"]["device"] == "cpu" and "v6" in data["meta"]["kernel_configs"]
    assert not (tmp_path / "bench.json.tmp").exists()


def test_mix_gemm_runs_the_mixed_operand_rows_alone(tmp_path, monkeypatch, capsys):
    """--mix-gemm: the mixed-operand GEMM rows without the epilogue table (a tile sweep's table), with the live mix
    settings in the metadata; --gemm already includes those rows, so both together is an error."""
    sys.path.insert(0, str(ROOT / "tools"))
    import benchmark as tool

    calls = []

    def fake_mix(*args, progress=None, **kwargs):
        calls.append("mix")
        return [dict(epilogue="mix_v4x3", impl="fused", ms=1.0)]

    monkeypatch.setattr(tool.bm, "bench_gemm_epilogues", lambda *a, **k: calls.append("epilogues") or [])
    monkeypatch.setattr(tool.bm, "bench_mix_gemms", fake_mix)
    from vision_rwkv.ops.fused import mix_linear_triton

    monkeypatch.setitem(mix_linear_triton.CONFIG, "bm", mix_linear_triton.CONFIG["bm"])  # (restored afterwards)
    out = tmp_path / "mix.json"
    assert tool.main(["--mix-gemm", "--device", "cpu", "--quick", "--kernel-config", "mix.bm=64",
                      "--out", str(out)]) == 0
    assert calls == ["mix"]
    data = json.loads(out.read_text())
    assert data["gemm"] == [dict(epilogue="mix_v4x3", impl="fused", ms=1.0)]
    assert data["meta"]["kernel_configs"]["mix"]["bm"] == 64
    with pytest.raises(SystemExit):
        tool.main(["--gemm", "--mix-gemm", "--device", "cpu"])
    assert "--mix-gemm is that part alone" in capsys.readouterr().err


def test_saved_activation_bytes_counts_saved_storages_once():
    """What autograd keeps for the backward: each saved storage once, the excluded tensors (parameters) not."""
    import torch

    x = torch.randn(4, 8, requires_grad=True)
    w = torch.randn(8, requires_grad=True)

    def fn():
        h = x * w  # saves x and w
        return (h.sin() * h).sum()  # sin saves h; the product saves sin(h) and h (h once)

    saved, out = bm.saved_activation_bytes(fn, exclude=[w])
    assert saved == 3 * x.numel() * 4  # x, h, sin(h)
    assert bm.saved_activation_bytes(fn)[0] == saved + w.numel() * 4
    out.backward()  # the hooks leave the graph usable
    assert x.grad is not None and w.grad is not None


def test_cli_training_rows_on_cpu(tmp_path):
    """``--train-batch`` sets the training rows' batch; they report the activations kept for the backward
    (``saved_GiB``) for our model and for DeiT in the same run."""
    sys.path.insert(0, str(ROOT / "tools"))
    import benchmark as tool

    out = tmp_path / "bench.json"
    tool.main(["--backbones", "--device", "cpu", "--quick", "--dtype", "fp32", "--model", "vrwkv6_tiny_patch16_224",
               "--res", "32", "--train-batch", "3", "--iters", "1", "--warmup", "0", "--out", str(out)])
    rows = json.loads(out.read_text())["backbones"]
    train = [r for r in rows if r["train"]]
    assert {r["model"] for r in train} == {"vrwkv6_tiny_patch16_224", "deit_tiny_patch16_224"}
    assert all(r["batch"] == 3 and "error" not in r and r["saved_GiB"] > 0 for r in train), train
    ours = next(r for r in train if r["model"].startswith("vrwkv6"))
    assert ours["deit_saved_GiB"] > 0
    assert ours["deit_ms"] == next(r["ms"] for r in train if r["model"].startswith("deit"))  # (the table's column)
    assert not any("saved_GiB" in r for r in rows if not r["train"])
    assert not any("anchor_img_per_s" in r for r in rows)  # (the anchors are H100 numbers)


def test_host_ms_times_each_call_alone_without_the_device_wait(monkeypatch):
    """``host_ms``: each call made on an idle device (a synchronize before it) and timed until it returns, the
    synchronize after it (the device's work) not counted; none by default on CPU, where it would be ``ms``."""
    import time

    log = []

    def slow_sync(device):
        log.append("sync")
        time.sleep(0.02)

    def fn():
        log.append("call")
        time.sleep(0.002)

    monkeypatch.setattr(bm, "_sync", slow_sync)
    out = bm.time_fn(fn, bm.torch.device("cpu"), iters=2, warmup=0, host_calls=3)
    assert 2.0 <= out["host_ms"] < 15.0  # (a sync inside the clock would add 20 ms)
    assert log[-9:] == ["sync", "call", "sync"] * 3
    assert "host_ms" not in bm.time_fn(fn, bm.torch.device("cpu"), iters=1, warmup=0)


def test_failed_capture_puts_the_generator_state_back(monkeypatch):
    """A CUDA-graph capture that fails must not leave the generator mid-capture (later rows would all fail)."""
    import contextlib

    import torch

    class FakeGen:
        def __init__(self):
            self.calls = []

        def clone_state(self):
            self.calls.append("clone")
            return "clean state"

        def graphsafe_set_state(self, state):
            self.calls.append(("set", state))

    @contextlib.contextmanager
    def failing_graph(graph, **kwargs):
        yield
        raise RuntimeError("operation failed due to a previous error during capture")

    monkeypatch.setattr(torch.cuda, "CUDAGraph", lambda: object())
    monkeypatch.setattr(torch.cuda, "graph", failing_graph)
    gen, ran = FakeGen(), []
    with pytest.raises(RuntimeError, match="during capture"):
        bm.capture_graph(lambda: ran.append(1), gen)
    assert ran == [1] and gen.calls == ["clone", ("set", "clean state")]

    monkeypatch.setattr(torch.cuda, "graph", lambda graph, **kwargs: contextlib.nullcontext())
    gen = FakeGen()
    assert bm.capture_graph(lambda: None, gen) is not None and gen.calls == ["clone"]


def test_graph_fields_fall_back_to_the_relaxed_capture_mode():
    """The backbone rows' graph numbers: CUDA's default capture mode first; where it fails, the relaxed mode's
    number with the first failure kept in the row; where every mode fails, no number and every mode's error."""
    tried = []

    def timer(refuse):
        def run(mode):
            tried.append(mode)
            if mode in refuse:
                raise RuntimeError(f"{mode}: operation failed due to a previous error during capture")
            return 2.5
        return run

    assert bm.GRAPH_CAPTURE_MODES == ("global", "relaxed")
    assert bm.graph_fields(timer(())) == dict(graph_ms=2.5, graph_capture_mode="global") and tried == ["global"]
    tried.clear()
    row = bm.graph_fields(timer(("global",)))
    assert tried == ["global", "relaxed"]
    assert row["graph_ms"] == 2.5 and row["graph_capture_mode"] == "relaxed" and "graph_errors" not in row
    assert row["graph_error"].startswith("RuntimeError: global: operation failed")
    row = bm.graph_fields(timer(("global", "relaxed")))
    assert "graph_ms" not in row and "graph_capture_mode" not in row
    assert row["graph_error"].startswith("RuntimeError: global") and sorted(row["graph_errors"]) == ["global",
                                                                                                     "relaxed"]
    with pytest.raises(KeyboardInterrupt):  # (only errors are caught)
        bm.graph_fields(lambda mode: (_ for _ in ()).throw(KeyboardInterrupt()))


def test_v6_rows_compare_with_fla_where_installed():
    """Where flash-linear-attention imports (here its entry points stood in for by tests/ops/_fla_standin.py, the
    kernels under TRITON_INTERPRET=1) the Triton v6 rows also time the same call through ``algo=fla`` and give our
    speed-up over it; v4 rows and a run without fla carry none of it, and the kernel configuration is put back."""
    script = textwrap.dedent(f"""
        import json, sys
        sys.path.insert(0, {str(ROOT / "tests" / "ops")!r})
        from _fla_standin import installed
        from vision_rwkv import benchmark as bm
        from vision_rwkv.ops.bi_wkv6 import triton as v6
        kw = dict(device="cpu", dtypes=("fp32",), shapes=[(1, 20, 64)], backends=("triton",), v4_modes=("exact",),
                  iters=1, warmup=0)
        without = bm.bench_ops(**kw)
        with installed():
            rows = bm.bench_ops(**kw)
        print(json.dumps(dict(rows=rows, without=without, algo=v6.CONFIG["algo"])))
    """)
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONWARNINGS="ignore")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600, cwd=ROOT,
                          env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(proc.stdout.strip().splitlines()[-1])
    fla_keys = ("fla_ms", "speedup_vs_fla", "fla_error")
    v6 = [r for r in data["rows"] if r["op"] == "v6_biwkv"]
    assert len(v6) == 2 and all("error" not in r for r in data["rows"]), data["rows"]
    assert all("fla_error" not in r and r["fla_ms"] > 0 and r["speedup_vs_fla"] > 0 for r in v6), v6
    assert not any(k in r for r in data["rows"] if r["op"] == "v4_biwkv" for k in fla_keys)
    assert not any(k in r for r in data["without"] for k in fla_keys)
    assert data["algo"] == "chunk"


def test_cli_train_only_asks_for_training_rows_alone(monkeypatch):
    """``--train-only``: no inference resolutions, the training rows on; with --no-train or --res an error."""
    sys.path.insert(0, str(ROOT / "tools"))
    import benchmark as tool

    seen = {}

    def fake_backbones(device, models, resolutions, batches, dtypes, train, **kwargs):
        seen.update(resolutions=tuple(resolutions), train=train, train_batch=kwargs["train_batch"])
        return []

    monkeypatch.setattr(tool.bm, "bench_backbones", fake_backbones)
    tool.main(["--backbones", "--device", "cpu", "--train-only", "--train-batch", "4"])
    assert seen == dict(resolutions=(), train=True, train_batch=4)
    for extra in (["--no-train"], ["--res", "224"]):
        with pytest.raises(SystemExit) as info:
            tool.main(["--backbones", "--device", "cpu", "--train-only", *extra])
        assert info.value.code == 2


def test_run_metadata_names_the_switches_settings_and_commit(monkeypatch):
    """A benchmark's JSON says what produced its numbers: the VRWKV_* / TRITON_* variables set, the live kernel
    settings (with --kernel-config applied), versions, and the checkout's commit."""
    import re

    pytest.importorskip("triton")
    monkeypatch.setenv("VRWKV_FUSED_MIX", "1")
    monkeypatch.delenv("VRWKV_FUSED_MLP", raising=False)
    v6 = bm.kernel_configs()["v6"]
    monkeypatch.setitem(v6, "walk_max_t", v6["walk_max_t"])  # restored after the test
    bm.apply_kernel_config(["v6.walk_max_t=256"])
    meta = json.loads(json.dumps(bm.run_metadata("cpu")))  # JSON-ready
    assert meta["env"]["VRWKV_FUSED_MIX"] == "1" and "VRWKV_FUSED_MLP" not in meta["env"]
    assert not [k for k in meta["env"] if not k.startswith(("VRWKV_", "TRITON_"))]
    assert meta["kernel_configs"]["v6"]["walk_max_t"] == 256
    assert meta["kernel_configs"]["v4"] == bm.kernel_configs()["v4"]
    import timm
    import torch
    assert meta["torch"] == torch.__version__ and meta["timm"] == timm.__version__ and meta["triton"]
    assert "gpu" not in meta  # a CPU run names no GPU
    if (ROOT / ".git").exists():
        assert re.fullmatch(r"[0-9a-f]{40}(\+dirty)?", meta["commit"]), meta.get("commit")


def _tool():
    sys.path.insert(0, str(ROOT / "tools"))
    import benchmark as tool

    return tool


@pytest.mark.parametrize("argv, message", [
    (["--ops", "--device", "cpu", "--shapes", "1,10,8", "--op", "v6_biwkv"], "C must be a multiple of 64"),
    (["--ops", "--device", "cpu", "--shapes", "1,10,100"], "C must be a multiple of 64, got (1, 10, 100)"),
    (["--ops", "--device", "cpu", "--shapes", "1,10,0", "--op", "v4_biwkv"], "each >= 1, got (1, 10, 0)"),
    (["--ops", "--device", "cpu", "--shapes", "1,10"], "--shapes: expected 'B,T,C;B,T,C'"),
    (["--ops", "--device", "cpu", "--shapes", "abc"], "--shapes: expected 'B,T,C;B,T,C'"),
    (["--ops", "--device", "foo"], "--device must be cpu or cuda[:N], got 'foo'"),
    (["--ops", "--device", "cpu", "--iters", "0"], "--iters must be >= 1, got 0"),
    (["--ops", "--device", "cpu", "--warmup", "-1"], "--warmup must be >= 0"),
    (["--backbones", "--device", "cpu", "--train-batch", "0"], "--train-batch must be >= 1"),
    (["--backbones", "--device", "cpu", "--batch", "8"], "--batch: expected RES=BATCH (e.g. 224=8), got '8'"),
    (["--backbones", "--device", "cpu", "--batch", "224=0"], "--batch: expected RES=BATCH with both >= 1"),
    (["--backbones", "--device", "cpu", "--res", "32"], "--batch: no batch for resolution(s) [32]"),
    (["--backbones", "--device", "cpu", "--res", "0"], "--res must be >= 1, got 0"),
    (["--backbones", "--device", "cpu", "--model", "nonexistent_model"], "'nonexistent_model' is not a timm model"),
    (["--ops", "--device", "cpu", "--backend", "triton"], "--backend triton needs --device cuda"),
    (["--ops", "--device", "cuda"], "--device cuda: no CUDA device here"),
])
def test_cli_argument_mistakes_are_usage_errors(argv, message, monkeypatch, capsys):
    """Each was a traceback, a silently replaced value, a different (or empty) shape timed, or a run whose every row
    failed with exit status 0; now a usage error (status 2) before anything runs."""
    tool = _tool()
    monkeypatch.setattr(tool.torch.cuda, "is_available", lambda: False)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    ran = []
    monkeypatch.setattr(tool.bm, "bench_ops", lambda *a, **k: ran.append("ops") or [])
    monkeypatch.setattr(tool.bm, "bench_backbones", lambda *a, **k: ran.append("backbones") or [])
    with pytest.raises(SystemExit) as info:
        tool.main(argv)
    assert info.value.code == 2 and message in capsys.readouterr().err
    assert not ran


def test_cli_exit_status_says_when_a_section_measured_nothing(monkeypatch, capsys, tmp_path):
    """Every row of a section failed: status 1 with the first error on stderr (the JSON still written); some rows
    failed: status 0."""
    tool = _tool()
    rows = [dict(op="v4_biwkv", error="RuntimeError: boom"), dict(op="v4_biwkv", error="RuntimeError: again")]
    monkeypatch.setattr(tool.bm, "bench_ops", lambda *a, **k: rows)
    out = tmp_path / "ops.json"
    assert tool.main(["--ops", "--device", "cpu", "--out", str(out)]) == 1
    assert "error: every ops row failed (first: RuntimeError: boom)" in capsys.readouterr().err
    assert json.loads(out.read_text())["ops"] == rows
    monkeypatch.setattr(tool.bm, "bench_ops", lambda *a, **k: rows[:1] + [dict(op="v6_biwkv", ms=1.0)])
    assert tool.main(["--ops", "--device", "cpu"]) == 0


def test_bench_ops_refuses_shapes_it_would_not_time_as_asked():
    """A v6 C that is not a multiple of 64 used to time C // 64 heads (C=8: an empty tensor; C=100: 64 channels)."""
    for op, shape in (("v6_biwkv", (1, 10, 8)), ("v6_biwkv", (1, 10, 100)), ("v4_biwkv", (1, 10, 0)),
                      ("v4_biwkv", (1, 10))):
        with pytest.raises(ValueError, match="C must be a multiple of 64|each >= 1"):
            bm.bench_ops("cpu", ("fp32",), [shape], ops=(op,), iters=1, warmup=0)
    assert bm.op_shape("v6_biwkv", (1, 10, 128)) == (1, 10, 2, 64) and bm.op_shape("v4_biwkv", (1, 2, 3)) == (1, 2, 3)


def test_backbone_batches_fill_in_defaults_and_name_what_is_missing():
    assert bm.backbone_batches("cpu", [224, 32], {32: 4}) == {224: 2, 512: 1, 1024: 1, 32: 4}
    with pytest.raises(ValueError, match=r"no batch for resolution\(s\) \[32\]"):
        bm.backbone_batches("cpu", [224, 32])


def test_backbones_plan_times_unfused_rows_only_for_the_requested_models():
    """``--unfused`` models not among ``--models`` got plain-path rows without their fused rows (wasted GPU time)."""
    sys.path.insert(0, str(ROOT / "tools"))
    import benchmark_backbones as tool

    cfgs = tool.main(["--out", "/dev/null", "--dry-run", "--models", "VRWKV-S", "--res", "224", "--dtypes", "fp32",
                      "--modes", "eager", "compile"])
    assert {c["model"] for c in cfgs} == {"VRWKV-S", "DeiT-S"}, cfgs
    assert not [c for c in cfgs if c["mode"] in ("eager-unfused", "compile-plain")]
    cfgs = tool.plan(["VRWKV-T", "VRWKV-S"], [224, 1024], ["bf16"], ["eager", "compile"], False,
                     ["VRWKV-T", "VRWKV6-T"])
    assert {(c["model"], c["res"]) for c in cfgs if c["mode"] == "eager-unfused"} == {("VRWKV-T", 224),
                                                                                      ("VRWKV-T", 1024)}
    assert {c["model"] for c in cfgs if c["mode"] == "compile-plain"} == {"VRWKV-T"}
