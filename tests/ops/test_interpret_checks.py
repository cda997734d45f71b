"""The interpreter's memory checks (``vision_rwkv.ops.interpret_checks``), on in every CPU kernel test (the
interpreter with ``VRWKV_TRITON_DEBUG=1``): they must refuse a load or store lane outside the launch's tensor
arguments - past the end, before the start, outside a view but inside its storage - and pass masked-off lanes; and
refuse a launch whose programs race (one loads what another stores, or two store different values to one place)
while passing a program's own read-modify-write and identical stores. CPU: toy kernels in a subprocess (this file
as a script) under TRITON_INTERPRET=1."""
import json
import os
import subprocess
import sys

import pytest
import torch

pytest.importorskip("triton")


def _kernels():
    import triton.language as tl

    from vision_rwkv.ops.triton_jit import jit

    @jit
    def copy2(X, Y, n, off, BLOCK: tl.constexpr, MASK: tl.constexpr):
        """Y[i] = 2 X[i + off] for i < BLOCK (MASK: only the lanes with i < n)."""
        i = tl.arange(0, BLOCK)
        m = i < n if MASK else i < BLOCK
        tl.store(Y + i, 2 * tl.load(X + i + off, mask=m, other=0.0), mask=m)

    @jit
    def store_at(Y, pos, val):
        tl.store(Y + pos, val)

    @jit
    def shift_left(X, NEIGHBOUR: tl.constexpr):
        """X[i] <- X[i + 1] in place, program i (NEIGHBOUR; else X[i] <- 2 X[i]: each program its own element)."""
        i = tl.program_id(0)
        tl.store(X + i, tl.load(X + i + 1) if NEIGHBOUR else 2 * tl.load(X + i))

    @jit
    def store_all(Y, SAME: tl.constexpr):
        """Every program stores to Y[0]: the same value (SAME), else its own id; and to Y[1 + id]."""
        i = tl.program_id(0)
        tl.store(Y, 1.0 if SAME else i.to(tl.float32))
        tl.store(Y + 1 + i, 1.0)

    return copy2, store_at, shift_left, store_all


def _error(fn) -> str:
    try:
        fn()
    except Exception as e:  # (the interpreter wraps a kernel's exception in an InterpreterError holding its repr)
        return f"{type(e).__name__}: {e}"
    return ""


def _run(checked: bool) -> dict:
    from vision_rwkv.ops import interpret_checks as ib

    copy2, store_at, shift_left, store_all = _kernels()
    x, y = torch.randn(10), torch.full((16,), float("nan"))
    if not checked:  # (only a read past x: the stores below would write past y unchecked)
        return {"installed": ib.installed(), "past_end": _error(lambda: copy2[(1,)](x, y, 10, 0, BLOCK=16,
                                                                                     MASK=False))}
    copy2[(1,)](x, y, 10, 0, BLOCK=16, MASK=True)
    base = torch.randn(4, 8)
    rows = base[:2]  # (a view: 16 elements of a 32-element storage)
    col = base[:, 3]  # (4 elements 8 apart: its extent is elements 3 .. 27)
    return {
        "installed": ib.installed(),
        "masked_ok": bool(torch.equal(y[:10], 2 * x)) and bool(torch.isnan(y[10:]).all()),
        "past_end": _error(lambda: copy2[(1,)](x, y, 10, 0, BLOCK=16, MASK=False)),
        "before_start": _error(lambda: store_at[(1,)](y, -1, 1.0)),
        "store_past_end": _error(lambda: store_at[(1,)](y, 16, 1.0)),
        "last_ok": _error(lambda: store_at[(1,)](y, 15, 1.0)),
        "outside_view": _error(lambda: copy2[(1,)](rows, y, 16, 8, BLOCK=16, MASK=True)),
        "inside_view": _error(lambda: copy2[(1,)](rows, y, 8, 8, BLOCK=16, MASK=True)),
        "strided_gap_ok": _error(lambda: copy2[(1,)](col, y, 16, 0, BLOCK=16, MASK=True)),
        "strided_past": _error(lambda: copy2[(1,)](col, y, 16, 12, BLOCK=16, MASK=True)),
        "extent_rows": list(ib.tensor_extent(rows)) == [rows.data_ptr(), rows.data_ptr() + 64],
        "extent_col": list(ib.tensor_extent(col)) == [col.data_ptr(), col.data_ptr() + 100],
        "extent_empty": (lambda lo, hi: lo == hi)(*ib.tensor_extent(x[:0])),
        "race_neighbour": _error(lambda: shift_left[(4,)](torch.randn(5), NEIGHBOUR=True)),
        "own_element_ok": _error(lambda: shift_left[(4,)](torch.randn(5), NEIGHBOUR=False)),
        "race_store": _error(lambda: store_all[(3,)](torch.zeros(4), SAME=False)),
        "same_store_ok": _error(lambda: store_all[(3,)](torch.zeros(4), SAME=True)),
    }


def _interpret(debug: str) -> dict:
    env = dict(os.environ, TRITON_INTERPRET="1", VRWKV_TRITON_DEBUG=debug, PYTHONWARNINGS="ignore")
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), debug], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def checked():
    return _interpret("1")


def test_in_bounds_accesses_pass(checked):
    assert checked["installed"] is True
    assert checked["masked_ok"] is True
    for key in ("last_ok", "inside_view", "strided_gap_ok", "own_element_ok", "same_store_ok"):
        assert checked[key] == "", f"{key}: {checked[key]}"


@pytest.mark.parametrize("key, what", [
    ("past_end", "copy2 program (0, 0, 0): load of 6 lane(s) of 4-byte elements outside every tensor argument"),
    ("before_start", "store_at program (0, 0, 0): store of 1 lane(s) of 4-byte elements"),
    ("store_past_end", "store of 1 lane(s)"),
    ("outside_view", "load of 8 lane(s)"),  # (inside base's storage: the view is what the kernel was given)
    ("strided_past", "load of 3 lane(s)"),
])
def test_out_of_bounds_lanes_are_refused(checked, key, what):
    assert "OutOfBoundsAccess" in checked[key] and what in checked[key], checked[key]


@pytest.mark.parametrize("key, where", [
    ("past_end", "byte offset 40 of argument X (a 40-byte view)"),
    ("before_start", "byte offset -4 of argument Y (a 64-byte view)"),
    ("store_past_end", "byte offset 64 of argument Y"),
    ("outside_view", "byte offset 64 of argument X (a 64-byte view)"),
])
def test_the_error_names_the_argument_and_offset(checked, key, where):
    assert where in checked[key], checked[key]


@pytest.mark.parametrize("key, what", [
    ("race_neighbour", "shift_left: program (0, 0, 0) loads memory that program (1, 0, 0) stores in the same launch "
                       "(3 4-byte piece(s); first byte offset 4 of argument X (a 20-byte view))"),
    ("race_store", "store_all: programs (0, 0, 0) and (2, 0, 0) store different values to the same memory "
                   "(1 4-byte piece(s); first byte offset 0 of argument Y"),
])
def test_races_between_programs_are_refused(checked, key, what):
    assert "DataRace" in checked[key] and what in checked[key], checked[key]


def test_extents(checked):
    assert checked["extent_rows"] and checked["extent_col"] and checked["extent_empty"]


def test_off_without_debug():
    plain = _interpret("0")
    assert plain["installed"] is False and plain["past_end"] == ""  # (not checked: reads past x's 10 elements)


def test_an_interpreter_without_the_hooks_is_left_alone(monkeypatch):
    """On a Triton whose interpreter lacks a hooked method: a warning, nothing patched (in this process)."""
    from triton.runtime import interpreter as ti

    from vision_rwkv.ops import interpret_checks as ic

    if ic.installed():
        pytest.skip("the checks are installed in this process")
    call = ti.GridExecutor.__call__
    monkeypatch.delattr(ti.GridExecutor, "_init_args_hst")
    with pytest.warns(UserWarning, match="interpreter checks .* are off.*GridExecutor._init_args_hst"):
        assert ic.install() is False
    assert not ic.installed() and ti.GridExecutor.__call__ is call


if __name__ == "__main__":
    print(json.dumps(_run(sys.argv[1] == "1")))
