"""Address checks for Triton kernels run by the CPU interpreter: compute-sanitizer's memcheck, without a GPU.

Under ``TRITON_INTERPRET=1`` with ``VRWKV_TRITON_DEBUG=1`` (how the CPU tests run every kernel: outputs NaN-poisoned),
:func:`install` makes every interpreted load and store check its enabled lanes: each address must lie, with its whole
element, inside the memory spanned by one of the launch's tensor arguments - the extent of the view the kernel was
given (from its lowest to its highest element, strides included), not the whole storage behind it: a kernel handed
a slice of a larger buffer fails when it steps outside the slice, one that reads past T fails at the batch's last
sequence. A lane out of range raises :class:`OutOfBoundsAccess` naming the kernel, the program, the access and the
nearest argument (e.g. "byte offset 40 of argument Y (a 40-byte view)"). On a GPU the same lane would read another
tensor's memory (or fault), which the masked ``other=`` value or a later ``tl.where`` could hide from every
numerical test.

Lanes a mask disables are not checked (they are never dereferenced), nor the pointer arithmetic itself.
``VRWKV_TRITON_BOUNDS=0`` leaves the interpreter unpatched (the checks cost ~no time: the CPU tests' run time is
the interpreter's).
"""
from __future__ import annotations

import threading
from typing import List, Tuple

import numpy as np

__all__ = ["OutOfBoundsAccess", "install", "installed", "tensor_extent"]

_Range = Tuple[str, int, int]  # (argument name, first byte, one past the last byte)
_STATE = threading.local()
_INSTALLED: List[bool] = [False]


class OutOfBoundsAccess(IndexError):
    """An interpreted kernel's load or store addressed memory outside every tensor argument of its launch."""


def tensor_extent(t) -> Tuple[int, int]:
    """(first byte, one past the last byte) a tensor view spans: its lowest and highest element, strides included
    ((p, p) for an empty tensor: no byte may be addressed)."""
    ptr = t.data_ptr()
    if t.numel() == 0:
        return ptr, ptr
    lo = sum(min(0, (s - 1) * st) for s, st in zip(t.shape, t.stride()))
    hi = sum(max(0, (s - 1) * st) for s, st in zip(t.shape, t.stride()))
    return ptr + lo * t.element_size(), ptr + (hi + 1) * t.element_size()


def _ranges(names, values) -> List[_Range]:
    out = []
    for name, value in zip(names, values):
        if isinstance(value, tuple):
            out += _ranges([f"{name}[{i}]" for i in range(len(value))], value)
        elif hasattr(value, "data_ptr") and hasattr(value, "stride"):
            out.append((name, *tensor_extent(value)))
    return out


def _describe(addr: int, size: int, ranges: List[_Range]) -> str:
    """Where ``addr`` lies, as a byte offset into the nearest argument."""
    best = None
    for name, lo, hi in ranges:
        dist = lo - addr if addr < lo else addr + size - hi
        if best is None or dist < best[0]:
            best = (dist, f"byte offset {addr - lo} of argument {name} (a {hi - lo}-byte view)")
    return best[1] if best else "the launch has no tensor argument"


def _check(kind: str, ptrs, mask) -> None:
    launch = getattr(_STATE, "launch", None)
    if launch is None:  # (an interpreted function outside a tracked launch: nothing to check against)
        return
    name, ranges, builder = launch
    addrs = np.asarray(ptrs.data, dtype=np.uint64)
    if mask is not None:
        addrs = addrs[np.broadcast_to(np.asarray(mask.data, dtype=bool), addrs.shape)]
    addrs = addrs.reshape(-1)
    if addrs.size == 0:
        return
    size = max(1, ptrs.get_element_ty().primitive_bitwidth // 8)
    ok = np.zeros(addrs.shape, dtype=bool)
    for _, lo, hi in ranges:
        ok |= (addrs >= lo) & (addrs + size <= hi)
    if ok.all():
        return
    bad = addrs[~ok]
    first = int(bad[0])
    raise OutOfBoundsAccess(
        f"{name} program {tuple(int(i) for i in builder.grid_idx)}: {kind} of {bad.size} lane(s) of {size}-byte "
        f"elements outside every tensor argument; first at {first:#x}, {_describe(first, size, ranges)}")


def installed() -> bool:
    """Whether :func:`install` has patched the interpreter in this process."""
    return _INSTALLED[0]


def install() -> None:
    """Patch Triton's interpreter (this process, once) so that every launch's loads and stores are checked."""
    if _INSTALLED[0]:
        return
    from triton.runtime import interpreter as ti

    builder_cls, executor = ti.InterpreterBuilder, ti.GridExecutor
    load, store = builder_cls.create_masked_load, builder_cls.create_masked_store
    init_args, call = executor._init_args_hst, executor.__call__

    def create_masked_load(self, ptrs, mask, *args, **kwargs):
        _check("load", ptrs, mask)
        return load(self, ptrs, mask, *args, **kwargs)

    def create_masked_store(self, ptrs, value, mask, *args, **kwargs):
        _check("store", ptrs, mask)
        return store(self, ptrs, value, mask, *args, **kwargs)

    def _init_args_hst(self, args_dev, kwargs):
        args_hst, kwargs_hst = init_args(self, args_dev, kwargs)
        names = list(self.arg_names[:len(args_hst)]) + list(kwargs_hst)
        ranges = _ranges(names, list(args_hst) + list(kwargs_hst.values()))
        _STATE.launch = (getattr(self.fn, "__name__", "kernel"), ranges, ti.interpreter_builder)
        return args_hst, kwargs_hst

    def __call__(self, *args, **kwargs):
        try:
            return call(self, *args, **kwargs)
        finally:
            _STATE.launch = None

    builder_cls.create_masked_load = create_masked_load
    builder_cls.create_masked_store = create_masked_store
    executor._init_args_hst = _init_args_hst
    executor.__call__ = __call__
    _INSTALLED[0] = True

