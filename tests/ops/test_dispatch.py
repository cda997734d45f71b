"""Backend selection: auto/forced/env-var behaviour, clear errors, lazy import of the Triton modules."""
import subprocess
import sys

import pytest
import torch

from vision_rwkv.ops import bi_wkv, bi_wkv6, dispatch

CPU = torch.device("cpu")
CUDA = torch.device("cuda")  # only used as a label: resolve_backend never touches the device


@pytest.fixture
def fake_triton(monkeypatch):
    """Pretend the Triton modules load; the fakes record their calls and return recognisable outputs."""
    calls = []

    def fake_v4(w, u, k, v, mode, chunks, scale):
        calls.append(("bi_wkv", mode, chunks) + (() if scale == 1.0 else (scale,)))
        return torch.full_like(v, 7.0)

    def fake_v6(r, k, v, logd, u):
        calls.append(("bi_wkv6",))
        return torch.full_like(v, 8.0)

    monkeypatch.setattr(dispatch, "_cache", {"bi_wkv": fake_v4, "bi_wkv6": fake_v6})
    monkeypatch.setattr(dispatch, "check_cpu_kernels", lambda op: None)  # (the fakes run anywhere)
    return calls


@pytest.fixture
def no_triton(monkeypatch):
    monkeypatch.setattr(dispatch, "_cache", {"bi_wkv": ImportError("no module"), "bi_wkv6": ImportError("no module")})


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    monkeypatch.delenv("VRWKV_BACKEND", raising=False)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)


def test_auto_picks_triton_for_cuda_only_when_available(fake_triton):
    assert dispatch.resolve_backend("bi_wkv", CUDA, None) == "triton"
    assert dispatch.resolve_backend("bi_wkv6", CPU, None) == "reference"


def test_auto_uses_reference_for_float64(fake_triton):
    assert dispatch.resolve_backend("bi_wkv", CUDA, None, (torch.float32, torch.float64)) == "reference"
    assert dispatch.resolve_backend("bi_wkv", CUDA, None, (torch.float32, torch.bfloat16)) == "triton"


def test_auto_falls_back_to_reference(no_triton):
    assert dispatch.resolve_backend("bi_wkv", CUDA, None) == "reference"
    assert dispatch.resolve_backend("bi_wkv", CPU, None) == "reference"


def test_env_var_forces(monkeypatch, fake_triton):
    monkeypatch.setenv("VRWKV_BACKEND", "reference")
    assert dispatch.resolve_backend("bi_wkv", CUDA, None) == "reference"
    monkeypatch.setenv("VRWKV_BACKEND", "triton")
    assert dispatch.resolve_backend("bi_wkv", CUDA, None) == "triton"
    assert dispatch.resolve_backend("bi_wkv", CPU, None) == "reference"  # auto mode: CPU stays on the reference
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert dispatch.resolve_backend("bi_wkv", CPU, None) == "triton"
    monkeypatch.setenv("VRWKV_BACKEND", "fast")
    with pytest.raises(ValueError, match="VRWKV_BACKEND"):
        dispatch.resolve_backend("bi_wkv", CPU, None)


def test_forced_triton_on_cpu_needs_interpreter(monkeypatch, fake_triton):
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        dispatch.resolve_backend("bi_wkv", CPU, "triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert dispatch.resolve_backend("bi_wkv", CPU, "triton") == "triton"


def test_forced_triton_unavailable_is_a_clear_error(monkeypatch, no_triton):
    with pytest.raises(RuntimeError, match="Triton backend is not available"):
        dispatch.resolve_backend("bi_wkv6", CUDA, "triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    with pytest.raises(RuntimeError, match="bi_wkv_triton"):
        dispatch.resolve_backend("bi_wkv", CPU, "triton")


def test_unknown_backend():
    with pytest.raises(ValueError, match="unknown backend"):
        dispatch.resolve_backend("bi_wkv", CPU, "cuda")


@pytest.mark.parametrize("spelling, want", [("auto", "reference"), (" Auto ", "reference"), ("", "reference"),
                                            ("Reference", "reference"), (" REFERENCE\n", "reference")])
def test_backend_argument_takes_the_variables_spellings(spelling, want):
    """``backend=`` reads as VRWKV_BACKEND does ('auto', any case, spaces), so the variable's value can be passed on;
    the fused ops read it the same way."""
    from vision_rwkv.ops import fused
    assert dispatch.resolve_backend("bi_wkv", CPU, spelling) == want
    assert fused._resolve("relu_square", CPU, spelling) == want
    k = torch.randn(1, 4, 3)
    torch.testing.assert_close(bi_wkv(k[0, 0], k[0, 1], k, k, backend=spelling), bi_wkv(k[0, 0], k[0, 1], k, k))


def test_public_ops_route_to_the_selected_backend(monkeypatch, fake_triton):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    k = torch.randn(1, 4, 3)
    w = torch.randn(3)
    y = bi_wkv(w, w, k, k, mode="original", chunks=5, backend="triton")
    assert torch.all(y == 7) and fake_triton == [("bi_wkv", "original", 5)]
    r = torch.randn(1, 4, 2, 3)
    assert torch.all(bi_wkv6(r, r, r, -r.abs(), torch.randn(2, 3), backend="triton") == 8)
    # auto mode on CPU never calls the kernels
    y = bi_wkv(w, w, k, k)
    assert not torch.all(y == 7) and len(fake_triton) == 2


def test_importing_the_package_does_not_import_triton_modules():
    code = ("import sys, vision_rwkv, vision_rwkv.ops; "
            "bad = [m for m in sys.modules if m.startswith('vision_rwkv.ops') and m.endswith('triton')]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("var, value, message", [
    ("VRWKV_TRITON_V4", "seq=true", "VRWKV_TRITON_V4: seq='true' is not a valid int"),
    ("VRWKV_TRITON_V6", "bogus=1", "VRWKV_TRITON_V6: unknown key 'bogus'"),
])
def test_a_malformed_kernel_setting_is_an_error_not_a_silent_fallback(var, value, message):
    """A typo in VRWKV_TRITON_V4 / _V6 must surface: caching it as "Triton unavailable" would send CUDA tensors to
    the slow reference without a word (fresh process: the settings are read when the kernel module imports)."""
    pytest.importorskip("triton")
    op = "bi_wkv" if var.endswith("V4") else "bi_wkv6"
    code = ("import torch\nfrom vision_rwkv.ops import dispatch\n"
            f"dispatch.resolve_backend('{op}', torch.device('cuda'), None, (torch.float32,))\n")
    env = dict(__import__("os").environ, **{var: value})
    env.pop("VRWKV_BACKEND", None)
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert proc.returncode != 0 and message in proc.stderr, proc.stderr[-2000:]


def test_kernel_settings_out_of_range_are_clear_errors(monkeypatch):
    """Settings with a closed set of values are checked where the kernels use them (so also when a sweep or test
    sets CONFIG in place): before, v4 seq=2 ran silently, chunk_t=0 was a bare ZeroDivisionError and v6
    fp32_precision=bogus an assertion inside Triton."""
    pytest.importorskip("triton")
    from vision_rwkv.ops.bi_wkv import triton as v4
    from vision_rwkv.ops.bi_wkv6 import triton as v6

    monkeypatch.setitem(v4.CONFIG, "seq", 2)
    with pytest.raises(ValueError, match=r"VRWKV_TRITON_V4 seq must be 1 .* or 0 .*, got 2"):
        v4._chosen_plan(40, "exact", 32)
    monkeypatch.setitem(v4.CONFIG, "seq", 0)
    for bad in (0, 24, -8):
        monkeypatch.setitem(v4.CONFIG, "chunk_t", bad)
        with pytest.raises(ValueError, match=f"VRWKV_TRITON_V4 chunk_t must be a power of two >= 1, got {bad}"):
            v4._chosen_plan(40, "original", 4)
    monkeypatch.setitem(v4.CONFIG, "chunk_t", 16)
    assert v4._chosen_plan(40, "exact", 32)[0] is False
    monkeypatch.setitem(v6.CONFIG, "fp32_precision", "bogus")
    with pytest.raises(ValueError, match="VRWKV_TRITON_V6 fp32_precision must be one of tf32x3, ieee, got 'bogus'"):
        v6._cfg(64, torch.float32, CPU)
    assert v6._cfg(64, torch.bfloat16, CPU)[2] == "tf32"  # (16-bit inputs never use the setting)
    monkeypatch.setitem(v6.CONFIG, "fp32_precision", "ieee")
    assert v6._cfg(64, torch.float32, CPU)[2] == "ieee"


@pytest.mark.parametrize("var, value, message", [
    ("VRWKV_TRITON_V4", "seq=0,chunk_t=0", "VRWKV_TRITON_V4 chunk_t must be a power of two >= 1, got 0"),
    ("VRWKV_TRITON_V4", "seq=2", "VRWKV_TRITON_V4 seq must be 1"),
    ("VRWKV_TRITON_V6", "fp32_precision=bogus", "VRWKV_TRITON_V6 fp32_precision must be one of tf32x3, ieee"),
])
def test_out_of_range_kernel_settings_from_the_environment(var, value, message):
    """The audit's repros, end to end under the interpreter: the public op raises the setting's error."""
    pytest.importorskip("triton")
    op = ("bi_wkv(torch.zeros(8), torch.zeros(8), torch.zeros(1, 40, 8), torch.zeros(1, 40, 8), backend='triton')"
          if var.endswith("V4") else "bi_wkv6(*[torch.zeros(1, 20, 1, 16)] * 4, torch.zeros(1, 16), backend='triton')")
    code = f"import torch\nfrom vision_rwkv.ops import bi_wkv, bi_wkv6\n{op}\n"
    env = dict(__import__("os").environ, TRITON_INTERPRET="1", **{var: value})
    env.pop("VRWKV_BACKEND", None)
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and f"ValueError: {message}" in proc.stderr, proc.stderr[-2000:]
