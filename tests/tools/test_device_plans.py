"""The device plans (benchmarks/device_run*.sh) before they cost device time: shell syntax, and every sweep config a
plan names exists in benchmarks/sweep.py (a typo would surface only on the GPU machine, as a lost step)."""
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
