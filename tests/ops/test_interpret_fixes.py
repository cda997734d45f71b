"""vision_rwkv.ops.interpret_fixes: the CPU interpreter's bf16 tl.dot and float32 -> bf16 casts as a GPU does them."""
import inspect
import json
import operator
import os
import subprocess
import sys
import types

import numpy as np
import pytest
import torch

from vision_rwkv.ops.interpret_fixes import bf16_bits_to_float32, fix_scalar_index, float32_to_bf16_bits


def _edge_and_random_floats() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    scale = 10.0 ** torch.randint(-40, 39, (20000,), generator=g).float()
    edges = [0.0, -0.0, float("inf"), -float("inf"), 3.3895314e38, -3.3895314e38, 3.4e38, 1e-40, -1e-40, 1e-45,
             1.00390625, 1.01171875, 1.0078125, -1.00390625, 65504.0, 2.0 ** -126]
    return torch.cat([torch.randn(20000, generator=g) * scale, torch.tensor(edges)])


def test_float32_to_bf16_rounds_to_nearest_even_as_torch():
    x = _edge_and_random_floats()
    assert np.array_equal(float32_to_bf16_bits(x.numpy()), x.bfloat16().view(torch.int16).numpy().view(np.uint16))
    nan = float32_to_bf16_bits(np.array([np.nan, -np.nan], dtype=np.float32))
    assert np.isnan(bf16_bits_to_float32(nan)).all() and nan[0] != nan[1]  # (NaN stays NaN, its sign kept)
    assert float32_to_bf16_bits(np.array(1.5, dtype=np.float32)).shape == ()  # (0-d stays 0-d)


def test_bf16_bits_to_float32_is_exact():
    x = _edge_and_random_floats().bfloat16()
    bits = x.view(torch.int16).numpy().view(np.uint16)
    assert np.array_equal(bf16_bits_to_float32(bits), x.float().numpy())


_KERNEL = """
import json, os
os.environ["TRITON_INTERPRET"] = "1"
import numpy as np, torch, triton, triton.language as tl
from vision_rwkv.ops import interpret_fixes, triton_jit  # (importing triton_jit installs the fixes)

@triton.jit
def dot_cast(A, B, ACC, C, Y, M: tl.constexpr, N: tl.constexpr, K: tl.constexpr, PREC: tl.constexpr):
    m, n, k = tl.arange(0, M), tl.arange(0, N), tl.arange(0, K)
    a = tl.load(A + m[:, None] * K + k[None, :])
    b = tl.load(B + k[:, None] * N + n[None, :])
    acc = tl.load(ACC + m[:, None] * N + n[None, :])
    c = tl.dot(a, b, acc, input_precision=PREC)
    tl.store(C + m[:, None] * N + n[None, :], c)
    tl.store(Y + m[:, None] * N + n[None, :], c.to(tl.bfloat16))

def rel(x, ref):
    return ((x.double() - ref).abs().max() / ref.abs().max()).item()

g = torch.Generator().manual_seed(1)
res = {"installed": interpret_fixes.installed()}
for dt, prec in ((torch.bfloat16, "tf32"), (torch.float16, "tf32"), (torch.float32, "ieee"),
                 (torch.float32, "tf32x3"), (torch.float32, "tf32")):
    a, b = (torch.randn(16, 32, generator=g) * 3).to(dt), torch.randn(32, 16, generator=g).to(dt)
    acc = torch.randn(16, 16, generator=g)
    c, y = torch.full((16, 16), float("nan")), torch.zeros(16, 16, dtype=torch.bfloat16)
    dot_cast[(1,)](a, b, acc, c, y, 16, 16, 32, prec)
    want = a.double() @ b.double() + acc.double()
    same_bits = torch.equal(y.view(torch.int16), c.bfloat16().view(torch.int16))
    row = {"dot": rel(c, want), "cast_bit_exact": bool(same_bits)}
    if prec == "tf32":  # the operands as a tensor core reads them: the low 13 mantissa bits dropped
        t32 = [torch.from_numpy(interpret_fixes.tf32_truncate(x.float().numpy())).double() for x in (a, b)]
        row["vs_truncated"] = rel(c, t32[0] @ t32[1] + acc.double())
    res[f"{dt} {prec}"] = row
print(json.dumps(res))
"""


def test_interpreted_dots_and_casts_match_a_gpu():
    """Under TRITON_INTERPRET=1 a bf16 x bf16 tl.dot accumulates the exact products in fp32 (the unfixed
    interpreter returned ~1e10 for values ~10) and fp16 likewise; fp32 dots follow their input precision as tensor
    cores do - "ieee" exact, "tf32x3" within ~fp32 rounding, "tf32" the products of operands truncated to TF32 (~1e-3
    off the exact value); a float32 -> bf16 cast rounds to nearest even (bit-equal to torch's)."""
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    proc = subprocess.run([sys.executable, "-c", _KERNEL], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    assert res.pop("installed")
    assert all(row["cast_bit_exact"] for row in res.values()), res
    for key in ("torch.bfloat16 tf32", "torch.float16 tf32", "torch.float32 ieee", "torch.float32 tf32x3"):
        assert res[key]["dot"] < 1e-6, res
    tf32 = res["torch.float32 tf32"]
    assert 1e-5 < tf32["dot"] < 3e-3 and tf32["vs_truncated"] < 1e-6, res


def test_tf32_rounding_helpers():
    from vision_rwkv.ops.interpret_fixes import tf32_round, tf32_truncate

    x = np.array([1 + 2.0 ** -11, 1 + 2.0 ** -10 + 2.0 ** -11, -1 - 2.0 ** -11, 1 + 2.0 ** -12, 3.4e38, np.inf],
                 dtype=np.float32)
    # TF32 keeps 10 mantissa bits: 2^-11 is half an ulp at 1 (ties away from zero when rounding), 2^-12 less
    assert tf32_round(x).tolist()[:4] == [1 + 2.0 ** -10, 1 + 2.0 ** -9, -1 - 2.0 ** -10, 1.0]
    assert tf32_truncate(x).tolist()[:4] == [1.0, 1 + 2.0 ** -10, -1.0, 1.0]
    assert np.isinf(tf32_round(x)[-1]) and np.isnan(tf32_round(np.array([np.nan], dtype=np.float32)))[0]
    y = tf32_round(np.random.default_rng(0).standard_normal(1000).astype(np.float32))
    assert (y.view(np.uint32) & 0x1FFF == 0).all()  # (no bit below the 10th of the mantissa)


class _Scope:
    """The interpreter's patch scope, as Triton's: set attributes, undo them last first."""

    def __init__(self):
        self.changes = []

    def set_attr(self, obj, name, value):
        self.changes.append((obj, name, obj.__dict__.get(name)))
        setattr(obj, name, value)

    def restore(self):
        while self.changes:
            obj, name, old = self.changes.pop()
            setattr(obj, name, old)


def _old_patch_lang_tensor(tensor, scope):  # Triton 3.6's conversion, which NumPy >= 2.4 rejects for shape (1,)
    scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data))
    scope.set_attr(tensor, "__bool__", lambda self: bool(self.handle.data.size))


def test_scalar_arguments_index_on_any_numpy():
    """On an interpreter with Triton 3.6's ``int(handle.data)``, fix_scalar_index makes a one-element 1-D scalar an
    index (``range(0, N, B)`` over a kernel argument); the rest of the patch and its undo are kept; an interpreter
    that converts correctly (this one) is left alone."""
    old_interp = types.SimpleNamespace(_patch_lang_tensor=_old_patch_lang_tensor)
    assert fix_scalar_index(old_interp) and not fix_scalar_index(old_interp)  # (wrapped once)

    class Tensor:
        def __init__(self, data):
            self.handle = types.SimpleNamespace(data=np.asarray(data))

    scope = _Scope()
    old_interp._patch_lang_tensor(Tensor, scope)
    assert operator.index(Tensor(np.array([7], dtype=np.int32))) == 7
    assert operator.index(Tensor(np.array(5, dtype=np.int64))) == 5
    assert list(range(0, Tensor(np.array([10])), 4)) == [0, 4, 8]
    with pytest.raises(ValueError):  # (a block is no index)
        operator.index(Tensor(np.array([1, 2])))
    assert bool(Tensor(np.array([0])))  # (the other patched attributes are the original's)
    scope.restore()  # (the class had no __index__: None again)
    with pytest.raises(TypeError):
        operator.index(Tensor(np.array([7])))

    from triton.runtime import interpreter as ti

    if "int(self.handle.data)" not in inspect.getsource(ti._patch_lang_tensor):
        assert not fix_scalar_index(ti)
