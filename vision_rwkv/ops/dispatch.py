"""Backend selection for the token-mixing operators.

``backend=None`` (auto) reads the environment variable ``VRWKV_BACKEND`` (``reference``, ``triton`` or ``auto``;
:func:`vision_rwkv.ops._triton_utils.env_backend`, the reading the fused ops share) when set (in auto mode CPU
tensors still use the reference unless ``TRITON_INTERPRET=1``); otherwise CUDA tensors use the Triton
kernel when ``vision_rwkv.ops.<op>.triton`` imports, and everything else (CPU tensors in particular) uses the
plain-PyTorch reference. Forcing ``triton`` on CPU tensors is allowed only under ``TRITON_INTERPRET=1``. Triton
modules are imported lazily, so ``import vision_rwkv`` never imports them.
"""
from __future__ import annotations

import importlib
from typing import Callable

import torch

from ._triton_utils import BACKEND_CHOICES, backend_arg, check_cpu_kernels, cpu_triton, env_backend

__all__ = ["BACKENDS", "resolve_backend", "triton_impl", "triton_available"]

BACKENDS = BACKEND_CHOICES

# op package name -> name of the function its ``triton`` module must expose
_TRITON_FUNCS = {"bi_wkv": "bi_wkv_triton", "bi_wkv6": "bi_wkv6_triton"}
_cache: dict[str, Callable | BaseException] = {}


def _load(op: str) -> Callable | BaseException:
    if op not in _cache:
        try:
            mod = importlib.import_module(f"vision_rwkv.ops.{op}.triton")
            _cache[op] = getattr(mod, _TRITON_FUNCS[op])
        except (ImportError, AttributeError, RuntimeError, OSError) as e:  # no triton / function / driver
            _cache[op] = e
        # (a ValueError - a malformed VRWKV_TRITON_V4 / _V6 setting - propagates: silently running the reference
        # on CUDA tensors would hide it)
    return _cache[op]


def triton_available(op: str) -> bool:
    """True when ``vision_rwkv.ops.<op>.triton`` imports and exposes its kernel entry point."""
    return not isinstance(_load(op), BaseException)


def triton_impl(op: str) -> Callable:
    """The Triton entry point of ``op`` (e.g. ``bi_wkv_triton``); a clear RuntimeError when it is unavailable."""
    fn = _load(op)
    if isinstance(fn, BaseException):
        raise RuntimeError(
            f"{op}: the Triton backend is not available (vision_rwkv.ops.{op}.triton.{_TRITON_FUNCS[op]} "
            f"could not be loaded: {type(fn).__name__}: {fn}); use backend='reference'"
        ) from fn
    return fn


def resolve_backend(op: str, device: torch.device, backend: str | None, dtypes: tuple = ()) -> str:
    """Pick the backend ("reference" or "triton") for an ``op`` call on tensors living on ``device``.

    ``dtypes``: the input dtypes; in auto mode float64 inputs (gradcheck, precision studies) use the reference
    (an invalid ``VRWKV_BACKEND`` is an error for them too). ``backend`` is read as the variable is (``"auto"``,
    any case, surrounding spaces).
    """
    backend = backend_arg(op, backend)
    if backend is None:
        env = env_backend()  # (validated first: a bad value is an error whatever the inputs)
        if torch.float64 in dtypes:
            return "reference"
        if env is not None:
            if env == "triton" and device.type != "cuda" and not cpu_triton():
                return "reference"  # auto mode: CPU tensors use the reference unless Triton is interpreted
            backend = env
        elif device.type == "cuda" and triton_available(op):
            return "triton"
        else:
            return "reference"
    if backend == "triton":
        if device.type != "cuda" and not cpu_triton():
            raise RuntimeError(
                f"{op}: backend 'triton' needs CUDA tensors (got {device.type}); set TRITON_INTERPRET=1 to run "
                "the Triton kernels on CPU in the interpreter"
            )
        triton_impl(op)  # (a clear error when the kernel module is missing; else it defines the kernels)
        if device.type != "cuda":
            check_cpu_kernels(op)  # (kernels defined outside the interpreter: an error saying why)
    return backend
