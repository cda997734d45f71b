"""benchmarks/pick_settings.py: which timed WKV settings the second device call of a session runs the backbones with,
and the table of what they gave."""
import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
import pick_settings as ps  # noqa: E402

V6_LONG = ([16, 4096, 3, 64], [4, 4096, 6, 64])
V6_SHORT = ([64, 196, 3, 64], [64, 196, 12, 64])
V4_LONG = ([16, 4096, 192], [4, 4096, 384])
V4_SHORT = ([64, 196, 192],)


def _rows(op, config, shapes, graph_f, graph_fb, eager_fb, dtype="bf16", **extra):
    return [dict(op=op, config=config, dtype=dtype, shape=list(s), eager_f=1.0, eager_fb=eager_fb, graph_f=graph_f,
                 graph_fb=graph_fb, **extra) for s in shapes]


def _sweep():
    rows = []
    for shapes in (V6_LONG, V6_SHORT):
        rows += _rows("v6", "chunk", shapes, 1.0, 3.0, 4.0)  # the default
    rows += _rows("v6", "chunk_carry", V6_LONG, 0.5, 2.9, 4.0)  # 2x the forward at 4096 tokens
    rows += _rows("v6", "chunk_carry", V6_SHORT, 1.0, 3.0, 4.0)
    rows += _rows("v6", "chunk_r128", V6_LONG, 0.55, 3.0, 4.0)[:1]  # timed at the first shape only (a deadline)
    rows += _rows("v6", "chunk_st32", V6_LONG, 0.3, 3.0, 4.0)[:1]  # the fastest at the first shape ...
    rows += [dict(op="v6", config="chunk_st32", dtype="bf16", shape=V6_LONG[1], error="OutOfResources")]  # failed
    rows += _rows("v6", "walk", V6_SHORT, 1.0, 2.0, 5.0)  # GPU time 1.5x, but eager fwd+bwd slower: not for training
    rows += _rows("v6", "chunk_st16", V6_SHORT, 1.0, 2.5, 3.9)  # 1.2x graph fwd+bwd, eager ~the same
    rows += _rows("v6", "chunk_scan", V6_LONG, 0.1, 0.1, 0.1, dtype="fp32")  # fp32 rows do not count
    rows += [dict(op="v6", config="chunk_swalk64", dtype="bf16", shape=s, error="OutOfResources") for s in V6_LONG]
    rows += _rows("v4", "seq_t16", V4_LONG + V4_SHORT, 1.0, 2.0, 3.0)  # the default
    rows += _rows("v4", "seq_t32", V4_LONG, 0.99, 2.0, 3.0)  # 1% faster: within the noise (MIN_GAIN)
    rows += _rows("v4", "seq_r96", V4_SHORT, 1.0, 1.0, 3.0)
    return rows


def test_pick_per_workload():
    picks = ps.pick_all(_sweep())
    inf, inf224, train = picks["inference_1024"], picks["inference_224"], picks["train_224"]
    assert inf224["v6"]["config"] == "chunk" and inf224["v6"]["speedup"] == 1.0  # (no setting's forward is faster)
    assert inf["v6"]["config"] == "chunk_carry" and inf["v6"]["speedup"] == pytest.approx(2.0)
    assert inf["v6"]["settings"] == {"algo": "chunk", "fwd_carry": 1}
    r128 = inf["v6"]["candidates"]["chunk_r128"]  # (judged on the one shape it has: 1.82x < chunk_carry's 2x)
    assert r128["shapes"] == 1 and r128["speedup"] == pytest.approx(1 / 0.55)
    assert "chunk_st32" not in inf["v6"]["candidates"]  # (an error at one of the workload's shapes rules it out)
    assert "chunk_swalk64" not in inf["v6"]["candidates"] and "chunk_scan" not in inf["v6"]["candidates"]
    assert train["v6"]["config"] == "chunk_st16" and train["v6"]["speedup"] == pytest.approx(1.2)
    assert train["v6"]["candidates"]["walk"]["speedup"] == pytest.approx(1.5)  # faster on the GPU, slower eager
    assert inf["v4"]["config"] == "seq_t16" and inf["v4"]["speedup"] == 1.0  # (the default: 1% is noise)
    assert train["v4"]["config"] == "seq_r96" and train["v4"]["speedup"] == pytest.approx(2.0)
    assert ps.kernel_config_args(inf) == ["--kernel-config", "v6.algo=chunk", "--kernel-config", "v6.fwd_carry=1"]
    assert ps.kernel_config_args(train) == ["--kernel-config", "v4.seq=1", "--kernel-config", "v4.seq_maxnreg=96",
                                            "--kernel-config", "v6.algo=chunk", "--kernel-config", "v6.state_t=16"]


def test_no_default_rows_means_no_pick():
    rows = [r for r in _sweep() if r["config"] != "chunk"]
    p = ps.pick(rows, "v6", "inference_1024")
    assert p["config"] == "chunk" and p["speedup"] is None and p["candidates"] == {}
    assert ps.kernel_config_args({"v6": p}) == []


def test_cli_pick_shell_and_summary(tmp_path):
    sweep = tmp_path / "sweep.json"
    sweep.write_text(json.dumps(_sweep()))
    script = str(ROOT / "benchmarks" / "pick_settings.py")
    proc = subprocess.run([sys.executable, script, "pick", str(sweep), "--out", str(tmp_path / "picks.json"),
                           "--shell"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assigned = dict(line.split("=", 1) for line in proc.stdout.strip().splitlines())
    words = {k: shlex.split(shlex.split(v)[0]) for k, v in assigned.items()}  # (as `eval` and then $VAR split it)
    assert words["INF_CFG"] == ["--kernel-config", "v6.algo=chunk", "--kernel-config", "v6.fwd_carry=1"]
    assert words["TRAIN_CFG"][-4:] == ["--kernel-config", "v6.algo=chunk", "--kernel-config", "v6.state_t=16"]
    assert assigned["INF224_CFG"] == "''"  # (the defaults)
    assert json.loads((tmp_path / "picks.json").read_text())["train_224"]["v4"]["config"] == "seq_r96"
    # the backbone runs: ours with DeiT in the same file, and a variant run without DeiT rows (taken from the other)
    deit = dict(model="deit_tiny_patch16_224", res=1024, dtype="bf16", train=False, img_per_s=1000.0, peak_mem_GiB=3.0,
                ms=16.0, host_ms=3.0)
    ours = dict(model="vrwkv6_tiny_patch16_224", deit="deit_tiny_patch16_224", res=1024, dtype="bf16", train=False,
                img_per_s=2100.0, peak_mem_GiB=2.0, ms=7.62, host_ms=7.5)
    (tmp_path / "bb_tuned_inference_1024.json").write_text(json.dumps({"backbones": [deit, ours]}))
    (tmp_path / "bb_tuned_inference_1024_fused_mix.json").write_text(
        json.dumps({"backbones": [dict(ours, img_per_s=1500.0)]}))
    proc = subprocess.run([sys.executable, script, "summary", str(tmp_path)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    text = (tmp_path / "tuned.md").read_text()
    assert "## inference_1024: v4 seq_t16 (x1.00 vs default" in text and "v6 chunk_carry (x2.00 vs default" in text
    host = "7.50/7.62 (3.00/16.00)"  # (host time of a call on an idle GPU / the call's time, DeiT's borrowed too)
    assert (f"| vrwkv6_tiny_patch16_224 | 1024 | no | 2100.00 | 1000.00 | 2.10 |  | 2.00 (3.00) | 2.00 | yes | {host} "
            "|  |") in text
    assert "## inference_1024_fused_mix:" in text
    assert (f"| vrwkv6_tiny_patch16_224 | 1024 | no | 1500.00 | 1000.00 | 1.50 |  | 2.00 (3.00) | 2.00 | no | {host} "
            "|  |") in text


def test_cli_errors_name_the_file(tmp_path):
    script = str(ROOT / "benchmarks" / "pick_settings.py")
    proc = subprocess.run([sys.executable, script, "pick", str(tmp_path / "nope.json")], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2 and "no sweep file" in proc.stderr and "nope.json" in proc.stderr
    proc = subprocess.run([sys.executable, script, "summary", str(tmp_path)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2 and "picks.json" in proc.stderr
