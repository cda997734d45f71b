"""The short launch path (``vision_rwkv.ops.triton_jit``) hands Triton's launcher exactly what ``JITFunction.run``
would: the same compiled specialization, grid and arguments - checked on CPU with kernels compiled for sm_90 and the
final C call recorded (``_fast_launch_case.py`` in a fresh process); and it steps aside when it must."""
import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("triton")
from vision_rwkv.kernel_report import cuobjdump_path  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
needs_ptxas = pytest.mark.skipif(cuobjdump_path() is None, reason="Triton's NVIDIA backend tools (ptxas) not found")


@pytest.fixture(scope="module")
def found():
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VRWKV_", "TRITON_INTERPRET"))}
    proc = subprocess.run([sys.executable, os.path.join(HERE, "_fast_launch_case.py")], env=env, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@needs_ptxas
def test_kernels_are_fast_launch_functions(found):
    assert found["kernel_class"] == "FastLaunchFunction"


@needs_ptxas
def test_fast_path_launches_what_triton_launches(found):
    assert found["fast"] == found["triton"]  # kernel, compiled binary, grid, every argument, in order
    assert found["fast_first"] == found["triton"]
    assert len(found["triton"]) == found["triton_run_calls"] > 0
    # the short path served every launch once its dicts were filled; the first pass went through Triton's for each
    # new key (some launches repeat a key: the token shift of the two float32 rounds)
    assert found["fast_run_calls"] == 0
    assert 0 < found["fast_first_run_calls"] < found["triton_run_calls"]


@needs_ptxas
def test_fast_path_hands_the_launcher_addresses(found):
    """Each launch made twice on the same arguments: the short path passes every tensor as its address (no
    ``data_ptr`` call and driver pointer query in the launcher), the misaligned view's included; all else as is."""
    paired = found["paired"]
    assert paired["mismatches"] == []
    assert paired["launches"] == len(found["triton"])
    assert paired["addresses"] >= 3 * paired["launches"]  # (every kernel of the workload takes >= 3 tensors)


@needs_ptxas
def test_specializations_stay_apart(found):
    launches = found["fast"]
    v6 = [d for d in launches if d[0] == "_v6_fwd_kernel"]
    aligned = {d[1] for d in v6 if d[3][0] == ["ptr", 0]}  # compiled binaries of r 16-byte aligned / not
    misaligned = {d[1] for d in v6 if d[3][0][1] != 0}
    assert aligned and misaligned and not aligned & misaligned
    # the test kernel's scalar as 1, True, 1.0, 3, 3.0: 1 / True / 1.0 compare equal in Python yet are three
    # specializations (the constant 1, i1, fp32), 3 (i32) and 3.0 (fp32 again, as 1.0) two more
    handles = found["scalar_handles"]
    assert len(handles) == 6 and len(set(handles[:4])) == 4 and handles[4] == handles[2]
    assert handles[5] not in handles[:5]  # maxnreg=64 (a register cap): another compiled binary, same arguments
    scalars = [d for d in launches if d[0] == "_scale_kernel"]
    assert scalars[5][3] == scalars[4][3]


@needs_ptxas
def test_observed_launches_take_tritons_path(found):
    assert found["hooked_run_calls"] == len(found["triton"])  # every launch: JITFunction.run, the hook called
    assert found["hook_calls"] == len(found["triton"])


@needs_ptxas
def test_full_dict_is_cleared_and_launches_stay_exact(found):
    assert found["small_dict"] == found["triton"]
    assert found["small_dict_sizes"] <= 2
    assert found["driver_restored"]


@needs_ptxas
def test_tensor_keywords_are_not_remembered(found):
    assert found["kw_tensor_launches"] == 3 and found["kw_tensor_dict_growth"] == 0


def test_interpreter_keeps_tritons_function():
    code = ("import os; os.environ['TRITON_INTERPRET'] = '1'\n"
            "from triton.runtime.interpreter import InterpretedFunction\n"
            "from vision_rwkv.ops.fused import shift_triton as ft\n"
            "from vision_rwkv.ops.triton_jit import FastLaunchFunction\n"
            "k = ft._tsm_fwd_kernel\n"
            "print(isinstance(k, InterpretedFunction), isinstance(k, FastLaunchFunction))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["True", "False"]


def test_switch_reads_the_environment(monkeypatch):
    from vision_rwkv.ops.triton_jit import fast_launch_enabled

    monkeypatch.delenv("VRWKV_TRITON_FAST_LAUNCH", raising=False)
    assert fast_launch_enabled()
    monkeypatch.setenv("VRWKV_TRITON_FAST_LAUNCH", "0")
    assert not fast_launch_enabled()
