"""benchmarks/mix_tiles.py: the mixed-operand GEMM tile sweep's table and pick (device_run11.sh), on made-up runs."""
import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
import mix_tiles  # noqa: E402

SHAPES = [("mix_v4x3", 192), ("mix_v6x5", 192), ("mix_v4x3", 384), ("mix_v6x5", 384), ("mix_v6x5", 768),
          ("mlp", 192)]


def _run(factor: dict, mix: dict, errors=()) -> dict:
    """A --mix-gemm JSON: fused ms = 1.0 * factor (per shape, default 1), unfused 0.5; error rows where named."""
    rows = []
    for ep, k in SHAPES:
        rows.append(dict(epilogue=ep, impl="unfused", K=k, ms=0.5))
        row = dict(epilogue=ep, impl="fused", K=k)
        if (ep, k) in errors:
            row["error"] = "OutOfResources: shared memory"
        else:
            row["ms"] = 1.0 * factor.get((ep, k), factor.get("all", 1.0))
        rows.append(row)
    return {"gemm": rows, "meta": {"kernel_configs": {"mix": {**dict(bm=0, bn=0, warps=0), **mix},
                                                      "norm": dict(bm=0), "v6": dict(algo="chunk")}}}


def _write(tmp_path: Path, runs: dict) -> Path:
    for name, run in runs.items():
        (tmp_path / f"mix_{name}.json").write_text(json.dumps(run))
    return tmp_path


def test_pick_is_the_best_geomean_on_the_grouped_T_and_S_rows(tmp_path):
    runs = {"default": _run({}, {}),
            "fast": _run({"all": 0.5, ("mix_v6x5", 768): 3.0}, dict(bm=64)),  # (K 768 is not judged)
            "faster_but_broken": _run({"all": 0.25}, dict(bm=32), errors={("mix_v4x3", 384)}),
            "mixed": _run({("mix_v4x3", 192): 0.25, ("mix_v6x5", 192): 4.0}, dict(bn=128))}
    choice = mix_tiles.pick(runs)
    assert choice["config"] == "fast" and choice["gain"] == pytest.approx(2.0)
    assert "faster_but_broken" not in choice["gains"]
    assert choice["gains"]["mixed"] == pytest.approx(1.0)  # (4 x 1/4 x 1 x 1)^(1/4)
    assert mix_tiles.kernel_args(runs["fast"]) == ["--kernel-config", "mix.bm=64", "--kernel-config", "mix.bn=0",
                                                   "--kernel-config", "mix.warps=0", "--kernel-config", "norm.bm=0"]


def test_defaults_stay_without_a_clear_lead(tmp_path):
    runs = {"default": _run({}, {}), "close": _run({"all": 0.99}, dict(bm=64))}
    assert mix_tiles.pick(runs)["config"] == "default"
    assert mix_tiles.pick({"close": runs["close"]})["config"] == "default"  # (no default run: nothing to judge by)


def test_summary_writes_the_table_and_shell_line(tmp_path):
    out = _write(tmp_path, {"default": _run({}, {}), "m64": _run({"all": 0.5}, dict(bm=64))})
    (out / "mix_cut.json").write_text('{"gemm": [')  # a run cut mid-write is skipped
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "mix_tiles.py"), "summary", str(out), "--shell"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    line = proc.stdout.strip()
    assert line.startswith("MIX_ARGS=")
    assert shlex.split(line[len("MIX_ARGS="):])[0].split() == ["--kernel-config", "mix.bm=64", "--kernel-config",
                                                               "mix.bn=0", "--kernel-config", "mix.warps=0",
                                                               "--kernel-config", "norm.bm=0"]
    table = (out / "mix_tiles.md").read_text()
    assert "| mix_v4x3 | 192 | 0.500 | 1.000 | 0.500 |" in table
    assert "Pick: **m64**" in table and "cut" not in table


def test_summary_without_runs_says_so(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "mix_tiles.py"), "summary", str(tmp_path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "no mix_*.json runs" in proc.stderr
