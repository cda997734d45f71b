"""Shared plumbing of the Triton case scripts (``_triton_cases.py``, ``_fused_cases.py``).

A case script computes, per named case, a result dict of relative errors (float64 2-norm) plus ``finite`` and
``dtype_ok`` flags (or ``error``). It runs in-process on CUDA, or as a subprocess on CPU under ``TRITON_INTERPRET=1``
with NaN-poisoned outputs (``VRWKV_TRITON_DEBUG=1``).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Sequence

import torch

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
FLAGS = ("finite", "dtype_ok", "no_y", "clamp_grad", "carry_path")  # (True, or a string saying what went wrong)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """``|a - b| / |b|`` in float64 2-norms (floored so an all-zero reference does not divide by zero)."""
    a = a.double()
    b = b.double()
    scale = max(b.norm().item(), 1e-12 * max(1, b.numel()) ** 0.5)
    return (a - b).norm().item() / scale


def check_result(result: dict, tol_y: float, tol_grad: float, tol_keys: dict | None = None) -> None:
    """Assert a case result is error-free, finite, dtype-correct and within tolerance (``y`` vs every gradient;
    ``tol_keys``: quantities with their own tolerance)."""
    assert "error" not in result, result.get("error")
    assert result["finite"], f"non-finite output or gradient (unwritten element?): {result}"
    assert result["dtype_ok"], f"output/gradient dtype differs from the promised one: {result}"
    for flag in FLAGS[2:]:
        assert result.get(flag, True) is True, f"{flag}: {result[flag]} ({result})"
    for key, val in result.items():
        if key in FLAGS:
            continue
        tol = (tol_keys or {}).get(key, tol_y if key == "y" else tol_grad)
        assert val == val and val <= tol, f"{key}: relative error {val:.3e} > {tol:.1e} ({result})"


def run_script_in_interpreter(script: str, args: Sequence[str], timeout: float) -> dict:
    """Run ``python script *args`` on CPU under TRITON_INTERPRET=1; the last stdout line is the JSON result."""
    env = dict(os.environ, TRITON_INTERPRET="1", VRWKV_TRITON_DEBUG="1", PYTHONWARNINGS="ignore")
    proc = subprocess.run([sys.executable, os.path.abspath(script), *args], env=env,
                          capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"interpreter subprocess failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def quick_params(names: Sequence[str], quick: set[str]) -> list:
    """``pytest.param`` per case name: the ``quick`` ones run by default, the others are marked slow (--run-slow)."""
    import pytest

    unknown = set(quick) - set(names)
    if unknown:
        raise ValueError(f"quick cases not among the cases: {sorted(unknown)}")
    return [pytest.param(name, marks=() if name in quick else pytest.mark.slow) for name in names]


def quick_cases(cases: dict, quick: set[str], run_slow: bool) -> dict:
    """The cases an interpreter fixture runs: all of them with --run-slow, else the quick ones."""
    return dict(cases) if run_slow else {name: case for name, case in cases.items() if name in quick}
