"""The environment switches: one rule for every on/off switch, one reading of VRWKV_BACKEND shared by the WKV ops'
dispatch, the fused ops and the models' fused-path switch, clear errors naming the variable, read live."""
import re
from pathlib import Path

import pytest
import torch

from vision_rwkv.ops import _triton_utils as tu
from vision_rwkv.ops import bi_wkv, dispatch, fused

ROOT = Path(__file__).resolve().parents[2]
CPU = torch.device("cpu")
CUDA = torch.device("cuda")  # a label: nothing here touches a GPU

ON = ["1", "true", "TRUE", "On", "yes", " 1 ", "Yes\n"]
OFF = ["0", "false", "False", "OFF", "no", " 0"]
BAD = ["2", "enable", "-1", "y", "1 0"]


def _switches(monkeypatch):
    """(variable, default, function reading it) for every on/off switch of the package."""
    monkeypatch.setattr(fused, "cpu_triton", lambda: True)  # VRWKV_FUSED: as under the interpreter, CPU tensors
    monkeypatch.setattr(fused, "triton_active", lambda x: True)  # whose fused ops resolve to Triton
    monkeypatch.setenv("VRWKV_BACKEND", "triton")
    x = torch.zeros(2)
    out = [("VRWKV_FUSED", True, lambda: fused.fused_enabled(x)),
           ("VRWKV_FUSED_STEP", True, fused.fused_step_enabled),
           ("VRWKV_FUSED_GEMM", False, fused.fused_gemm_enabled),
           ("VRWKV_FUSED_MIX", False, fused.fused_mix_enabled),
           ("VRWKV_FUSED_MIX_TRAIN", False, fused.fused_mix_train_enabled),
           ("VRWKV_FUSED_MLP", False, fused.fused_mlp_enabled),
           ("VRWKV_TRITON_DEBUG", False, tu.debug_poison)]
    try:
        from vision_rwkv.ops.triton_jit import fast_launch_enabled
    except ImportError:  # no triton
        pass
    else:
        out.append(("VRWKV_TRITON_FAST_LAUNCH", True, fast_launch_enabled))
    return out


def test_every_on_off_switch_takes_the_same_words(monkeypatch):
    """1/0, true/false, on/off, yes/no in any case and with spaces; unset or empty: the default. Before, "false" /
    "off" left VRWKV_FUSED on and "true" / "on" left VRWKV_FUSED_GEMM off, silently."""
    for var, default, read in _switches(monkeypatch):
        monkeypatch.delenv(var, raising=False)
        assert read() is default, var
        for value, want in [(v, True) for v in ON] + [(v, False) for v in OFF] + [("", default), ("  ", default)]:
            monkeypatch.setenv(var, value)
            assert read() is want, (var, value)
            assert read() is want, (var, value)  # (the second read takes the cached parse)


@pytest.mark.parametrize("value", BAD)
def test_an_unknown_switch_value_is_an_error_naming_the_variable(monkeypatch, value):
    for var, default, read in _switches(monkeypatch):
        monkeypatch.setenv(var, value)
        with pytest.raises(ValueError) as info:
            read()
        msg = str(info.value)
        assert msg.startswith(f"{var}={value!r} ") and "1 or 0" in msg and "true/false, on/off, yes/no" in msg, msg
        assert f"the default, {int(default)}" in msg
        with pytest.raises(ValueError, match=var):  # (an invalid value is never cached)
            read()
        monkeypatch.delenv(var)


def test_a_changed_value_takes_effect_at_once(monkeypatch):
    monkeypatch.delenv("VRWKV_FUSED_GEMM", raising=False)
    seen = []
    for value in ("1", "0", "on", "2", "off", "ON"):
        monkeypatch.setenv("VRWKV_FUSED_GEMM", value)
        try:
            seen.append(fused.fused_gemm_enabled())
        except ValueError:
            seen.append("error")
    assert seen == [True, False, True, "error", False, True]


def test_no_switch_is_read_past_the_shared_helpers():
    """Every VRWKV_* on/off switch and VRWKV_BACKEND go through env_flag / env_backend: no module compares a raw
    value of its own (how VRWKV_BACKEND=TRITON ran the Triton WKV ops but kept the models on their plain path)."""
    raw = re.compile(r"""env_get\(\s*["']VRWKV_""")
    found = [f"{p.relative_to(ROOT)}:{i}" for p in sorted((ROOT / "vision_rwkv").rglob("*.py"))
             for i, line in enumerate(p.read_text().splitlines(), 1) if raw.search(line)]
    assert not found, found


@pytest.fixture
def fake_triton(monkeypatch):
    monkeypatch.setattr(dispatch, "_cache", {"bi_wkv": lambda *a: None, "bi_wkv6": lambda *a: None})
    monkeypatch.setattr(fused, "_triton_ok", lambda: True)
    for module in (dispatch, fused):  # (stand-ins run anywhere: no interpreter needed)
        monkeypatch.setattr(module, "check_cpu_kernels", lambda op: None)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)


@pytest.mark.parametrize("value", ["triton", "TRITON", " triton", "Triton\t"])
def test_backend_spellings_agree_everywhere(monkeypatch, fake_triton, value):
    """The WKV ops' dispatch, the fused ops and the models' fused-path switch read VRWKV_BACKEND one way: with the
    interpreter a CPU tensor takes Triton in all three (before, "TRITON" sent the ops to Triton and the models to
    their plain path)."""
    monkeypatch.setenv("VRWKV_BACKEND", value)
    monkeypatch.setattr(fused, "cpu_triton", lambda: True)
    monkeypatch.setattr(dispatch, "cpu_triton", lambda: True)
    x = torch.zeros(2)
    assert dispatch.resolve_backend("bi_wkv", CPU, None) == "triton"
    assert fused._resolve("fused", CPU, None) == "triton"
    assert fused.fused_enabled(x)


@pytest.mark.parametrize("value", ["auto", "AUTO", " Auto ", ""])
def test_backend_auto_is_the_default(monkeypatch, fake_triton, value):
    """``auto`` (the default the docs name) and an empty value mean auto: CUDA takes Triton, CPU the reference."""
    monkeypatch.setenv("VRWKV_BACKEND", value)
    for resolve in (lambda dev: dispatch.resolve_backend("bi_wkv", dev, None),
                    lambda dev: fused._resolve("f", dev, None)):
        assert resolve(CUDA) == "triton" and resolve(CPU) == "reference"
    assert not fused.fused_enabled(torch.zeros(2))


@pytest.mark.parametrize("value", ["cuda", "fast", "triton,reference", "none"])
def test_an_invalid_backend_is_an_error_everywhere(monkeypatch, fake_triton, value):
    """Also for float64 inputs, which auto mode sends to the reference (before, the value was not looked at)."""
    monkeypatch.setenv("VRWKV_BACKEND", value)
    msg = re.escape(f"VRWKV_BACKEND={value!r} is not one of reference, triton or auto")
    with pytest.raises(ValueError, match=msg):
        dispatch.resolve_backend("bi_wkv", CPU, None, (torch.float64,))
    with pytest.raises(ValueError, match=msg):
        dispatch.resolve_backend("bi_wkv", CUDA, None, (torch.float32,))
    with pytest.raises(ValueError, match=msg):
        fused._resolve("f", CPU, None)
    w = torch.zeros(3, dtype=torch.float64)
    k = torch.zeros(1, 4, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match=msg):
        bi_wkv(w, w, k, k)
    monkeypatch.setenv("VRWKV_BACKEND", "reference")  # (an explicit backend= never reads the variable)
    assert dispatch.resolve_backend("bi_wkv", CPU, "reference", (torch.float64,)) == "reference"


@pytest.mark.parametrize("value, want", [("1", True), ("true", True), ("ON", True), ("yes", True), ("0", False),
                                         ("false", False), ("", False), ("2", False), (" 1", False)])
def test_triton_interpret_is_read_as_triton_reads_it(monkeypatch, value, want):
    """TRITON_INTERPRET is Triton's variable: the words Triton takes as on (any case, no spaces), anything else off,
    never an error; CPU tensors may take the kernels exactly when Triton interprets them."""
    monkeypatch.setenv("TRITON_INTERPRET", value)
    assert tu.triton_interpret() is want and tu.cpu_triton() is want


def test_switches_trace_under_torch_compile(monkeypatch):
    """The helpers run inside a fullgraph torch.compile trace (the models call them in forward)."""
    monkeypatch.setenv("VRWKV_FUSED_GEMM", "Yes")
    monkeypatch.setenv("VRWKV_BACKEND", "Reference")

    def fn(x):
        if tu.env_flag("VRWKV_FUSED_GEMM", False) and tu.env_backend() == "reference":
            return x + 1
        return x - 1

    torch._dynamo.reset()
    out = torch.compile(fn, backend="eager", fullgraph=True)(torch.zeros(2))
    assert torch.equal(out, torch.ones(2))


def test_triton_interpret_set_too_late_is_a_clear_error():
    """TRITON_INTERPRET=1 set after Triton was imported: Triton defined its library (and our kernels) for the GPU,
    so the interpreter cannot run them; the ops say so instead of Triton's "Cannot call @triton.jit'd outside of
    the scope of a kernel". (A subprocess: the variable must be unset when it starts.)"""
    import os
    import subprocess
    import sys
    pytest.importorskip("triton")
    code = """if True:
        import os, torch, triton, triton.language, vision_rwkv
        from vision_rwkv.ops import bi_wkv, fused
        os.environ["TRITON_INTERPRET"] = "1"
        w, u, k, v = torch.randn(4), torch.randn(4), torch.randn(1, 3, 4), torch.randn(1, 3, 4)
        for call in (lambda: bi_wkv(w, u, k, v, backend="triton"),
                     lambda: fused.relu_square(k, backend="triton")):
            try:
                call()
            except RuntimeError as err:
                print(err)
        """
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "VRWKV_BACKEND")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 2 and all("TRITON_INTERPRET=1 was set after Triton" in line for line in lines), out.stdout
    assert lines[0].startswith("bi_wkv: ") and lines[1].startswith("relu_square: ")
