"""The device plans (benchmarks/device_run*.sh) before they cost device time: shell syntax, every sweep config a
plan names exists in benchmarks/sweep.py, and the current plans' Python commands - as the plan expands them - name
files that exist and arguments their scripts accept (a typo would surface only on the GPU machine, as a lost step)."""
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PLANS = sorted((ROOT / "benchmarks").glob("device_*.sh"))


@pytest.fixture(scope="module")
def sweep():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import sweep as mod
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    return mod


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
@pytest.mark.parametrize("plan", PLANS, ids=lambda p: p.name)
def test_plan_parses(plan):
    proc = subprocess.run(["bash", "-n", str(plan)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_named_sweep_configs_exist(sweep):
    named = 0
    for plan in PLANS:
        for m in re.finditer(r"^CFGS=((?:[^\n]*\\\n)*[^\n]*)", plan.read_text(), re.M):
            names = m.group(1).replace("\\\n", "").split(",")
            unknown = [n for n in names if n not in sweep.V4_CONFIGS and n not in sweep.V6_CONFIGS]
            assert not unknown, f"{plan.name}: no sweep config named {unknown}"
            named += len(names)
    assert named >= 10  # (device_run8.sh names its configs)


def test_named_config_lookup(sweep):
    assert sweep.named_config("chunk_bcarry") == ("v6", {"algo": "chunk", "bwd_carry": 1})
    assert sweep.named_config("seq_t32")[0] == "v4"
    with pytest.raises(SystemExit, match="no config named 'nope'; known: .*chunk_r128"):
        sweep.named_config("nope")


def test_sweep_skips_shapes_a_setting_does_not_change(sweep):
    """A setting with a MAX_T (seq_inline: the inline carries stop at 16 chunks) is timed at the short shapes only,
    its base at every shape, in the same shape-by-shape order."""
    cases = [(name, shape) for op, name, cfg, dn, shape in sweep._time_cases(("v4",), {"seq_t16", "seq_inline"},
                                                                            ("bf16",))]
    assert [s for n, s in cases if n == "seq_t16"] == sweep.V4_SHAPES
    assert [s for n, s in cases if n == "seq_inline"] == [s for s in sweep.V4_SHAPES if s[1] <= 256] != []
    assert cases.index(("seq_inline", (64, 196, 192))) == cases.index(("seq_t16", (64, 196, 192))) + 1


CURRENT = [p for p in PLANS  # (the plans a device session would run now: rounds 8 to 10)
           if re.fullmatch(r"device_run\d+\.sh", p.name) and int(re.search(r"\d+", p.name).group()) >= 8]
_RECORDER = """#!/bin/bash
# stands in for python while a device plan runs: records each command line (fields \\x1f, lines \\x1e) with one
# write (the plan runs commands in parallel)
line=""
for a in "$@"; do line+="$a"$'\\x1f'; done
printf '%s\\x1e' "$line" >> "$PLAN_RECORD"
"""


def _plan_commands(plan: Path, tmp: Path, env: dict) -> list:
    """The plan's python command lines, recorded by running it with ``python`` replaced by a recorder (nothing
    runs: no tests, no timings; nvidia-smi is absent here and only its line in gpu.txt fails)."""
    fake = tmp / "bin"
    fake.mkdir()
    (fake / "python").write_text(_RECORDER)
    (fake / "python").chmod(0o755)
    # compute-sanitizer (absent here) runs the command after its options: the recorder sees its python
    (fake / "compute-sanitizer").write_text('#!/bin/bash\nwhile [ $# -gt 0 ] && [ "$1" != python ]; do shift; done\n'
                                            'exec "$@"\n')
    (fake / "compute-sanitizer").chmod(0o755)
    record = tmp / "record"
    env = {**os.environ, "PATH": f"{fake}:{os.environ['PATH']}", "PLAN_RECORD": str(record), "W": str(tmp / "w"),
           "OUT": str(tmp / "out"), **env}
    proc = subprocess.run(["bash", str(plan)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return [line.split("\x1f")[:-1] for line in record.read_text().split("\x1e") if line]


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
@pytest.mark.parametrize("plan", CURRENT, ids=lambda p: p.name)
def test_current_plan_commands_parse(plan, tmp_path):
    sweep = tmp_path / "sweep.json"  # (device_run9.sh reads run 8's sweep; the recorder makes its picks empty)
    sweep.write_text("[]")
    cmds = _plan_commands(plan, tmp_path, {"SWEEP": str(sweep)})
    scripts = [c for c in cmds if c and c[0] not in ("-c", "-m")]
    tests = [c for c in cmds if c[:2] == ["-m", "pytest"]]
    assert len(scripts) >= 2, cmds  # (device_run8.sh: ~35 script runs and one pytest run; run 9: 9; run 10: 4)
    for c in tests:  # the test paths the plan hands pytest exist
        paths = [a for a in c[2:] if not a.startswith("-") and ("/" in a or a.endswith(".py"))]
        assert paths and all((ROOT / a).exists() for a in paths), c
    missing = sorted({c[0] for c in scripts if not (ROOT / c[0]).is_file()})
    assert not missing, f"{plan.name} runs scripts that do not exist: {missing}"
    unique = [list(c) for c in dict.fromkeys(tuple(c) for c in scripts)]
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "tools" / "_plan_args_check.py")],
                          input=json.dumps(unique), cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    bad = [r for r in json.loads(proc.stdout.strip().splitlines()[-1]) if r["error"]]
    assert not bad, f"{plan.name}: commands whose arguments do not parse: {bad}"


def test_plan_check_catches_a_bad_argument(tmp_path):
    """The checker itself: an unknown flag, an unknown kernel-config key, an unknown sweep config and dtype are
    errors."""
    cmds = [["tools/benchmark.py", "--backbones", "--no-such-flag"],
            ["tools/benchmark.py", "--backbones", "--kernel-config", "v6.no_such_key=1"],
            ["benchmarks/sweep.py", "warm", "no_such_config"],
            ["tools/profile_backbone.py", "--models", "VRWKV-T", "--img-size", "1024"],
            ["benchmarks/sweep.py", "warm", "chunk", "bf61"],
            ["benchmarks/sweep.py", "warm", "chunk", "bf16"]]
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "tools" / "_plan_args_check.py")],
                          input=json.dumps(cmds), cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    errors = [r["error"] for r in json.loads(proc.stdout.strip().splitlines()[-1])]
    assert errors[0] and "exited with 2" in errors[0], errors
    assert errors[1] and "no_such_key" in errors[1], errors
    assert errors[2] and "no_such_config" in errors[2], errors
    assert errors[3] is None, errors
    assert errors[4] and "bf61" in errors[4] and errors[5] is None, errors


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_run9_without_a_sweep_stops_and_says_so(tmp_path):
    """Run 9 reads run 8's sweep; without one it stops before any timing (a wasted call otherwise) and names it."""
    plan = ROOT / "benchmarks" / "device_run9.sh"
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "python").write_text(_RECORDER)
    (fake / "python").chmod(0o755)
    env = {**os.environ, "PATH": f"{fake}:{os.environ['PATH']}", "PLAN_RECORD": str(tmp_path / "record"),
           "W": str(tmp_path / "w"), "OUT": str(tmp_path / "out"), "SWEEP": str(tmp_path / "nope.json")}
    proc = subprocess.run(["bash", str(plan)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "no sweep at" in proc.stdout and "nope.json" in proc.stdout, proc.stdout
    recorded = (tmp_path / "record").read_text() if (tmp_path / "record").exists() else ""
    assert "tools/benchmark.py" not in recorded and "pick_settings.py" not in recorded
