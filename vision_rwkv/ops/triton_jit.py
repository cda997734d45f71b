"""``jit``: ``triton.jit`` for our kernels, with a shorter host path for launches of already-compiled kernels.

A Triton launch (``kernel[grid](...)``) costs far more host time than a PyTorch op: ``JITFunction.run`` binds and
specializes every argument (one native call each), builds its cache key, checks the kernel's globals, builds launch
metadata for the profiler hooks, and its launcher calls the (empty) hook chains - measured without a GPU
(``tools/benchmark_host.py --launches triton``: compiled kernels, only the final C call stubbed) ~25-30 us per launch
of a 30-argument kernel on our CI VM, ~5-7 ms of a VRWKV-T / VRWKV6-T training step (192 / 228 launches).

Kernels defined with :func:`jit` launch through :meth:`FastLaunchFunction.run`: a key is formed from the arguments -
each tensor's dtype, whether it is on a GPU and whether its address is 16-byte aligned (what Triton specializes a
pointer on), every other argument by type and value (finer than Triton's integer specialization: a new value is a new
key, never a wrong kernel), the keyword arguments (constexprs, ``num_warps``...) and Triton's debug / instrumentation
settings - and looked up in a per-kernel dict. A hit calls the compiled kernel's launcher directly with the
positional arguments, each tensor as its address (``data_ptr()``, read once for the key and the launch), plus the
tail Triton bound for that key (constexprs, defaults); a miss goes through ``JITFunction.run`` (compile, checks,
launch) and records its kernel and binding. (Handed a tensor, Triton's launcher calls its ``data_ptr`` and then
``cuPointerGetAttribute`` - a driver call, to reject a CPU tensor - for every tensor argument of every launch, ~1500
per VRWKV-T training step; handed an address, neither. A CPU tensor has a key of its own, which Triton's path serves
with its "cpu tensor?" error.) Triton's own path is taken whenever something could make the
two differ: ``warmup``, a callable grid, pre-run hooks, launch hooks (profilers such as proton), a stages-inspection
hook, ``VRWKV_TRITON_FAST_LAUNCH=0``; and for good on a Triton whose internals differ from what this was written
against (3.6 - 3.8; before 3.4, without ``triton.knobs``, :func:`jit` is plain ``triton.jit``). The dict is cleared
when it reaches ``_MAX_KEYS`` entries (integer arguments such as sequence lengths are part of the key).

Under ``TRITON_INTERPRET=1`` (tests on CPU) :func:`jit` is ``triton.jit`` and the interpreter computes as a GPU does
where it did not (bf16 dots, float32 -> bf16 rounding, TF32 dots: :mod:`vision_rwkv.ops.interpret_fixes`); with
``VRWKV_TRITON_DEBUG=1`` too, every
interpreted load and store is checked against the launch's tensor arguments, and every launch for races between its
programs (:mod:`vision_rwkv.ops.interpret_checks`; ``VRWKV_TRITON_CHECKS=0`` turns the checks off).
``tests/ops/test_triton_jit.py`` checks on CPU, with kernels compiled for sm_90 and the launcher's C call recorded
(:mod:`vision_rwkv.ops.host_driver`), that both paths hand the launcher the same compiled kernel, grid and
arguments across specializations.
"""
from __future__ import annotations

from typing import Callable, Optional

import triton
from torch import Tensor
from triton.runtime.driver import driver
from triton.runtime.jit import JITFunction

try:
    from triton import knobs
except ImportError:  # Triton < 3.4: every launch takes Triton's path (jit is triton.jit)
    knobs = None

from ._triton_utils import KERNELS_INTERPRETED, debug_poison, env_flag, triton_interpret
from .interpret_checks import install as _install_interpreter_checks
from .interpret_fixes import install as _install_interpreter_fixes

__all__ = ["jit", "FastLaunchFunction", "fast_launch_enabled", "launch_compiled"]

KERNELS_INTERPRETED[0] = triton_interpret()  # (our kernels are all defined after this module is imported)
if triton_interpret():
    _install_interpreter_fixes()  # (bf16 and TF32 dots, bf16 rounding: see interpret_fixes)
    # (the CPU tests: every kernel's accesses checked; VRWKV_TRITON_CHECKS=0 leaves them unchecked)
    if debug_poison() and env_flag("VRWKV_TRITON_CHECKS", True):
        _install_interpreter_checks()


def fast_launch_enabled() -> bool:
    """Whether :func:`jit` kernels take the short launch path (``VRWKV_TRITON_FAST_LAUNCH``, on by default)."""
    return env_flag("VRWKV_TRITON_FAST_LAUNCH", True)


def _hooks_active() -> bool:
    """Whether anything observes launches: then Triton's path (hooks, launch metadata) runs."""
    for hook in (knobs.runtime.launch_enter_hook, knobs.runtime.launch_exit_hook):
        if hook is not None and getattr(hook, "calls", True):
            return True
    return knobs.runtime.add_stages_inspection_hook is not None


_UNSUPPORTED: dict = {}  # (a sentinel: this kernel always launches through Triton's path)


class FastLaunchFunction(JITFunction):
    """A ``JITFunction`` whose launches of compiled specializations skip Triton's per-launch bookkeeping (see the
    module docstring). Compiles, errors, ``warmup`` and every observed launch are Triton's."""

    def run(self, *args, grid, warmup, **kwargs):
        fast = self.__dict__.get("_fast_kernels")
        if fast is None:
            fast = self._fast_kernels = {}
        if (warmup or fast is _UNSUPPORTED or callable(grid) or getattr(self, "pre_run_hooks", None)
                or not fast_launch_enabled() or _hooks_active()):
            return super().run(*args, grid=grid, warmup=warmup, **kwargs)
        device = driver.active.get_current_device()
        key = [device, self.debug, knobs.runtime.debug, knobs.compilation.instrumentation_mode]
        call = []  # the launcher's arguments: each tensor as its address (see the module docstring)
        for a in args:
            if type(a) is int:
                key.append(a)
                call.append(a)
            elif isinstance(a, Tensor):
                ptr = a.data_ptr()
                key.append((a.dtype, a.is_cuda, not ptr & 15))
                call.append(ptr)
            else:
                key.append((type(a), a))
                call.append(a)
        key.extend(kwargs.items())
        try:
            key = tuple(key)
            hit = fast.get(key)
        except TypeError:  # an argument that cannot be part of a key: Triton's path
            return super().run(*args, grid=grid, warmup=warmup, **kwargs)
        if hit is None:  # first launch with this key: Triton's path (compile, checks, launch), then remember it
            return self._first_launch(fast, key, args, kwargs, grid, device)
        kernel, tail = hit
        launch_compiled(kernel, grid, driver.active.get_current_stream(device), *call, *tail)
        return kernel

    def _first_launch(self, fast: dict, key: tuple, args: tuple, kwargs: dict, grid, device):
        """Launch through ``JITFunction.run`` and record ``key -> (compiled kernel, the launch arguments after the
        positional ones)`` - Triton's own binding of these arguments, so later launches pass exactly what it does."""
        kernel = super().run(*args, grid=grid, warmup=False, **kwargs)
        caches = getattr(self, "device_caches", {}).get(device)
        if kernel is None or not hasattr(kernel, "packed_metadata") or caches is None or len(caches) != 5:
            self._fast_kernels = _UNSUPPORTED  # not the Triton this was written against: always Triton's path
            return kernel
        if not _keyable(args, kwargs):  # (objects keyed by identity would be held by the dict: not remembered)
            return kernel
        bound, _, _ = caches[4](*args, **dict(kwargs, debug=kwargs.get("debug", self.debug) or knobs.runtime.debug,
                                              instrumentation_mode=knobs.compilation.instrumentation_mode))
        if len(fast) >= _MAX_KEYS:  # (integer arguments are part of the key: bound the dict for varying shapes)
            fast.clear()
        fast[key] = (kernel, tuple(bound.values())[len(args):])
        return kernel


def launch_compiled(kernel, grid, stream: int, *args) -> None:
    """Call a compiled kernel's launcher as ``JITFunction.run`` does when nothing observes launches (no launch
    metadata, no hooks): ``grid`` of 1 to 3 ints, ``args`` the launch arguments after Triton's binding (positional,
    then the bound tail; tensors may be passed as their addresses)."""
    n = len(grid)
    kernel.run(grid[0], grid[1] if n > 1 else 1, grid[2] if n > 2 else 1, stream, kernel.function,
               kernel.packed_metadata, None, None, None, *args)


_MAX_KEYS = 512
_SCALARS = (int, float, bool, str, type(None))


def _keyable(args: tuple, kwargs: dict) -> bool:
    """Whether a launch's key holds only values (tensors by dtype and alignment, plain scalars; keyword arguments
    not tensors): the keys a later launch can hit, and nothing the dict would keep alive."""
    return (all(isinstance(a, (Tensor,) + _SCALARS) for a in args)
            and not any(isinstance(v, Tensor) or hasattr(v, "data_ptr") for v in kwargs.values()))


def jit(fn: Optional[Callable] = None, **kwargs):
    """``triton.jit(fn, **kwargs)`` (also as ``@jit`` / ``@jit(...)``); outside the interpreter the result is a
    :class:`FastLaunchFunction`. Use it for every kernel launched from the host (device helpers may use either)."""
    if fn is None:
        return lambda f: jit(f, **kwargs)
    kernel = triton.jit(fn, **kwargs)
    if knobs is not None and type(kernel) is JITFunction:  # (the interpreter's InterpretedFunction stays as it is)
        kernel.__class__ = FastLaunchFunction
    return kernel
