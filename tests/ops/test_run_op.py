"""vision_rwkv.ops._triton_utils.run_op: the custom op while compiling, the autograd Function when a gradient is
needed, the bare forward launch otherwise (inference skips the autograd bookkeeping on the host)."""
import torch

from vision_rwkv.ops._triton_utils import run_op


class _Function:
    @staticmethod
    def apply(*args):
        return "function"


def _op(*args):
    return "custom_op"


def _forward(*args):
    return "forward"


def test_inference_skips_autograd():
    x = torch.randn(3)
    assert run_op(_op, _Function, _forward, x, None, 2) == "forward"
    w = torch.randn(3, requires_grad=True)
    with torch.no_grad():
        assert run_op(_op, _Function, _forward, x, w) == "forward"
    with torch.inference_mode():
        assert run_op(_op, _Function, _forward, x, w) == "forward"


def test_gradient_uses_function():
    x = torch.randn(3)
    w = torch.randn(3, requires_grad=True)
    assert run_op(_op, _Function, _forward, x, None, w, 1.0) == "function"


def test_compile_uses_custom_op():
    seen = []

    def op(t):
        seen.append("custom_op")
        return t * 2

    def fn(t):
        return run_op(op, _Function, _forward, t)

    out = torch.compile(fn, backend="eager", fullgraph=True)(torch.ones(2))
    assert seen == ["custom_op"] and torch.equal(out, torch.full((2,), 2.0))


def test_env_get_reads_the_environment_live(monkeypatch):
    """The fast environment read behind the backend / fused-path switches sees every change at once and agrees with
    ``os.environ.get`` (set, changed, empty, unset, non-ASCII)."""
    import os

    from vision_rwkv.ops._triton_utils import env_get

    name = "VRWKV_TEST_ENV_GET"
    monkeypatch.delenv(name, raising=False)
    assert env_get(name, "dflt") == "dflt" == os.environ.get(name, "dflt")
    for value in ("1", "0", "", "triton", "caf\u00e9"):
        monkeypatch.setenv(name, value)
        assert env_get(name) == value == os.environ.get(name)
    os.environ[name] = "direct"
    assert env_get(name) == "direct"
    del os.environ[name]
    assert env_get(name, "gone") == "gone"
