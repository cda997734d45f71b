"""Memory checks for Triton kernels run by the CPU interpreter: compute-sanitizer's memcheck, and a race check
between a launch's programs, without a GPU.

Under ``TRITON_INTERPRET=1`` with ``VRWKV_TRITON_DEBUG=1`` (how the CPU tests run every kernel: outputs NaN-poisoned),
:func:`install` patches the interpreter:

- **Bounds.** Every load and store checks the lanes its mask enables: each address must lie, with its whole element,
  inside the memory spanned by one of the launch's tensor arguments - the extent of the view the kernel was given
  (from its lowest to its highest element, strides included), not the whole storage behind it: a kernel handed a
  slice of a larger buffer fails when it steps outside the slice, one that reads past T fails at the batch's last
  sequence. A lane out of range raises :class:`OutOfBoundsAccess` naming the kernel, the program, the access and the
  nearest argument (e.g. "byte offset 40 of argument Y (a 40-byte view)"). On a GPU the same lane would read another
  tensor's memory (or fault), which the masked ``other=`` value or a later ``tl.where`` could hide from every
  numerical test.
- **Races.** The interpreter runs a launch's programs one after another; a GPU runs them in no fixed order. After
  each launch, a place one program stores and another program loads, or that two programs store with different
  values, raises :class:`DataRace` (naming the kernel, both programs and the place). A program's own
  read-modify-write and identical stores from several programs pass. (compute-sanitizer's racecheck covers shared
  memory only; nothing on a GPU checks this.)

Lanes a mask disables are not checked (they are never dereferenced), nor the pointer arithmetic itself. The checks
add ~7% to the CPU kernel tests (the interpreter's own cost dominates). ``VRWKV_TRITON_CHECKS=0`` leaves the
interpreter unpatched.
"""
from __future__ import annotations

import threading
from typing import Dict, List, Tuple

import numpy as np

__all__ = ["DataRace", "OutOfBoundsAccess", "install", "installed", "tensor_extent"]

_Range = Tuple[str, int, int]  # (argument name, first byte, one past the last byte)
_STATE = threading.local()
_INSTALLED: List[bool] = [False]


class OutOfBoundsAccess(IndexError):
    """An interpreted kernel's load or store addressed memory outside every tensor argument of its launch."""


class DataRace(RuntimeError):
    """Two programs of one interpreted launch access the same memory, one of them storing, with no order between
    them on a GPU."""


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


class _Launch:
    """What one interpreted launch has accessed so far: per load / store, the enabled lanes' element addresses, their
    size, the program (an index into ``programs``) and, for stores, the values' bytes."""

    def __init__(self, name: str, ranges: List[_Range], builder):
        self.name, self.ranges, self.builder = name, ranges, builder
        self.programs: Dict[tuple, int] = {}
        self.loads: list = []
        self.stores: list = []

    def key(self) -> tuple:
        """The running program's grid index."""
        return tuple(int(i) for i in self.builder.grid_idx)

    def program(self) -> int:
        return self.programs.setdefault(self.key(), len(self.programs))

    def where(self, prog: int) -> tuple:
        return next(k for k, v in self.programs.items() if v == prog)


def _enabled(x: np.ndarray, mask) -> np.ndarray:
    """The lanes of ``x`` that ``mask`` enables (all without one), flattened."""
    if mask is not None:
        x = x[np.broadcast_to(np.asarray(mask.data, dtype=bool), x.shape)]
    return x.reshape(-1)


def _access(kind: str, ptrs, mask, value=None) -> None:
    launch = getattr(_STATE, "launch", None)
    if launch is None:  # (an interpreted function outside a tracked launch: nothing to check against)
        return
    addrs = _enabled(np.asarray(ptrs.data, dtype=np.uint64), mask)
    if addrs.size == 0:
        return
    size = max(1, ptrs.get_element_ty().primitive_bitwidth // 8)
    ok = np.zeros(addrs.shape, dtype=bool)
    for _, lo, hi in launch.ranges:
        ok |= (addrs >= lo) & (addrs + size <= hi)
    if not ok.all():
        bad = addrs[~ok]
        first = int(bad[0])
        raise OutOfBoundsAccess(
            f"{launch.name} program {launch.key()}: {kind} of {bad.size} lane(s) of {size}-byte elements outside "
            f"every tensor argument; first at {first:#x}, {_describe(first, size, launch.ranges)}")
    if kind == "load":
        launch.loads.append((addrs, size, launch.program(), None))
    else:  # (the values' bytes, one row per lane: the interpreter holds 16-bit floats as uint16)
        data = _enabled(np.broadcast_to(np.asarray(value.data), np.shape(ptrs.data)), mask)
        launch.stores.append((addrs, size, launch.program(), data.view(np.uint8).reshape(addrs.size, size)))


_UNITS = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}


def _units(records, unit: int, values: bool):
    """The records' accesses in ``unit``-byte pieces: (addresses, programs[, the pieces' values])."""
    if not records:
        empty = np.zeros(0, np.uint64)
        return (empty, empty.astype(np.int64)) + ((empty,) if values else ())
    out_a, out_p, out_v = [], [], []
    for addrs, size, prog, data in records:
        step = np.arange(0, size, unit, dtype=np.uint64)
        out_a.append((addrs[:, None] + step[None, :]).reshape(-1))
        out_p.append(np.full(addrs.size * step.size, prog, np.int64))
        if values:
            out_v.append(np.ascontiguousarray(data).view(_UNITS[unit]).reshape(-1).astype(np.uint64))
    res = (np.concatenate(out_a), np.concatenate(out_p))
    return res + ((np.concatenate(out_v),) if values else ())


def _check_races(launch: _Launch) -> None:
    """Programs of one launch run in no fixed order on a GPU (the interpreter runs them one after another): a byte
    one program stores and another program loads, or two programs store with different values, is a race."""
    if not launch.stores or len(launch.programs) < 2:
        return
    unit = int(np.gcd.reduce([r[1] for r in launch.loads + launch.stores]))
    wa, wp, wv = _units(launch.stores, unit, True)
    order = np.lexsort((wp, wa))
    wa, wp, wv = wa[order], wp[order], wv[order]
    first = np.flatnonzero(np.r_[True, wa[1:] != wa[:-1]])
    addr = wa[first]
    pmin, pmax = np.minimum.reduceat(wp, first), np.maximum.reduceat(wp, first)
    vmin, vmax = np.minimum.reduceat(wv, first), np.maximum.reduceat(wv, first)
    clash = np.flatnonzero((pmin != pmax) & (vmin != vmax))
    if clash.size:
        i = int(clash[0])
        where = _describe(int(addr[i]), unit, launch.ranges)
        raise DataRace(
            f"{launch.name}: programs {launch.where(int(pmin[i]))} and {launch.where(int(pmax[i]))} store different "
            f"values to the same memory ({clash.size} {unit}-byte piece(s); first {where}): the result depends on "
            f"their order on a GPU")
    ra, rp = _units(launch.loads, unit, False)
    idx = np.minimum(np.searchsorted(addr, ra), addr.size - 1)
    hit = addr[idx] == ra
    other = hit & ((pmin[idx] != rp) | (pmax[idx] != rp))
    if other.any():
        j = int(np.flatnonzero(other)[0])
        writer = int(pmin[idx[j]]) if int(pmin[idx[j]]) != int(rp[j]) else int(pmax[idx[j]])
        raise DataRace(
            f"{launch.name}: program {launch.where(int(rp[j]))} loads memory that program {launch.where(writer)} "
            f"stores in the same launch ({int(other.sum())} {unit}-byte piece(s); first "
            f"{_describe(int(ra[j]), unit, launch.ranges)}): no order between programs on a GPU")


def installed() -> bool:
    """Whether :func:`install` has patched the interpreter in this process."""
    return _INSTALLED[0]


_HOOKS = (("InterpreterBuilder", "create_masked_load"), ("InterpreterBuilder", "create_masked_store"),
          ("GridExecutor", "_init_args_hst"), ("GridExecutor", "__call__"))  # (what install patches)


def install() -> bool:
    """Patch Triton's interpreter (this process, once) so that every launch's loads and stores are checked. Returns
    whether the checks are on: on a Triton whose interpreter lacks what they hook, a warning says so and nothing is
    patched (the kernels still run, unchecked)."""
    if _INSTALLED[0]:
        return True
    import warnings

    import triton
    from triton.runtime import interpreter as ti

    missing = [f"{cls}.{attr}" for cls, attr in _HOOKS if not hasattr(getattr(ti, cls, None), attr)]
    if missing:
        warnings.warn(f"vision_rwkv: the interpreter checks (bounds, races) are off: Triton {triton.__version__}'s "
                      f"interpreter has no {', '.join(missing)}")
        return False
    builder_cls, executor = ti.InterpreterBuilder, ti.GridExecutor
    load, store = builder_cls.create_masked_load, builder_cls.create_masked_store
    init_args, call = executor._init_args_hst, executor.__call__

    def create_masked_load(self, ptrs, mask, *args, **kwargs):
        _access("load", ptrs, mask)
        return load(self, ptrs, mask, *args, **kwargs)

    def create_masked_store(self, ptrs, value, mask, *args, **kwargs):
        _access("store", ptrs, mask, value)
        return store(self, ptrs, value, mask, *args, **kwargs)

    def _init_args_hst(self, args_dev, kwargs):
        args_hst, kwargs_hst = init_args(self, args_dev, kwargs)
        names = list(self.arg_names[:len(args_hst)]) + list(kwargs_hst)
        ranges = _ranges(names, list(args_hst) + list(kwargs_hst.values()))
        _STATE.launch = _Launch(getattr(self.fn, "__name__", "kernel"), ranges, ti.interpreter_builder)
        return args_hst, kwargs_hst

    def __call__(self, *args, **kwargs):
        try:
            out = call(self, *args, **kwargs)
            launch = getattr(_STATE, "launch", None)
            if launch is not None:
                _check_races(launch)
            return out
        finally:
            _STATE.launch = None

    builder_cls.create_masked_load = create_masked_load
    builder_cls.create_masked_store = create_masked_store
    executor._init_args_hst = _init_args_hst
    executor.__call__ = __call__
    _INSTALLED[0] = True
    return True
