"""Triton's launch path on a machine WITHOUT a GPU: kernels compile for an H100 and each launch stops at the C call.

``tools/benchmark_host.py`` stubs every launch to time our host code; that leaves out what Triton itself spends per
launch (binding, specialization, cache lookup, its launcher's Python). Inside :func:`host_only_launches` the
kernels of the operator modules are real ``JITFunction`` s (imported with the interpreter off), the active Triton
driver is :class:`HostOnlyDriver`: compiles target ``sm_<arch>`` (ptxas ships with Triton), "loading" a binary
hands out a handle, and the launcher's final C call (``cuLaunchKernelEx``; a few us on a real host) only records
``(kernel name, grid, arguments)``. Everything before it - Triton's ``JITFunction.run`` or our
:class:`~vision_rwkv.ops.triton_jit.FastLaunchFunction`, and Triton's ``CudaLauncher`` - runs as on a GPU machine.
Kernel outputs stay unwritten: this is for host timing and for checking which compiled kernel gets which arguments.
"""
from __future__ import annotations

import contextlib
import importlib
import os
import pkgutil
from dataclasses import dataclass, field
from typing import Iterator, List

from ._triton_utils import _CPU_LAUNCHES

__all__ = ["HostOnlyDriver", "Launch", "host_only_launches", "import_kernel_modules"]

_SM90_PROPERTIES = {"max_shared_mem": 232448, "multiprocessor_count": 132, "max_num_regs": 65536, "warpSize": 32,
                    "sm_clock_rate": 1980000, "mem_clock_rate": 2619000, "mem_bus_width": 5120}


@dataclass
class Launch:
    """One launch that reached the C call: kernel name, the compiled binary's handle (one per specialization),
    grid (3 ints) and the arguments the launcher got."""
    name: str
    handle: int
    grid: tuple
    args: tuple


class _Utils:
    """The parts of Triton's ``CudaUtils`` (a compiled C module, which needs libcuda) the launch path touches."""

    def __init__(self, record: List[Launch], keep: bool):
        self.record, self.keep = record, keep
        self.names: dict = {}
        self.count = 0

    def load_binary(self, name, kernel, shared, device):
        handle = len(self.names) + 1
        self.names[handle] = name
        return handle, handle, 32, 0, 1024  # module, function, registers, spills, max threads per block

    def get_device_properties(self, device):
        return dict(_SM90_PROPERTIES)

    def build_signature_metadata(self, signature):
        return tuple(signature)

    def launch(self, grid_x, grid_y, grid_z, stream, function, cooperative, pdl, kernel_metadata, launch_metadata,
               enter_hook, exit_hook, *rest):
        """The C launcher's work without the GPU: the profiler hooks as it calls them, then the record."""
        if enter_hook is not None:
            enter_hook(launch_metadata)
        self.count += 1
        if exit_hook is not None:
            exit_hook(launch_metadata)
        if self.keep:
            name = self.names.get(function, "?")
            self.record.append(Launch(name, function, (grid_x, grid_y, grid_z), tuple(rest[-1])))


@dataclass
class HostOnlyDriver:
    """A stand-in for Triton's CUDA driver (see the module docstring). ``launches`` collects every launch when
    ``keep`` (holding its tensors), ``launch_count`` counts them either way."""
    arch: int = 90
    keep: bool = True
    launches: List[Launch] = field(default_factory=list)

    def __post_init__(self):
        from triton.backends.compiler import GPUTarget
        import triton.backends.nvidia.driver as nvd

        self.target = GPUTarget("cuda", self.arch, 32)
        self.utils = _Utils(self.launches, self.keep)
        # Triton >= 3.7: one shared C launch function behind Triton's Python launcher (used as is, its C call
        # recorded); before, a C launcher compiled per kernel against libcuda - replaced by a recorder
        self.launcher_cls = nvd.CudaLauncher if hasattr(nvd, "PyKernelArg") else self._recording_launcher

    def _recording_launcher(self, src, metadata):
        """A launcher for Triton < 3.7 (``launcher_cls(src, metadata)``): called as ``(grid x, y, z, stream,
        function, packed metadata, launch metadata, enter hook, exit hook, *kernel arguments)``."""
        utils = self.utils

        def launch(grid_x, grid_y, grid_z, stream, function, packed, launch_metadata, enter, exit, *args):
            utils.launch(grid_x, grid_y, grid_z, stream, function, False, False, packed, launch_metadata, enter, exit,
                         args)

        return launch

    @property
    def launch_count(self) -> int:
        return self.utils.count

    def is_active(self) -> bool:
        return True

    def get_current_device(self) -> int:
        return 0

    def get_current_stream(self, device=None) -> int:
        return 0

    def get_current_target(self):
        return self.target


def import_kernel_modules() -> list:
    """Import every ``vision_rwkv.ops`` module that defines Triton kernels with the interpreter off (their kernels
    become ``JITFunction`` s); the names imported. Raises if one was already imported under ``TRITON_INTERPRET=1``."""
    from triton.runtime.interpreter import InterpretedFunction

    from .. import ops

    names = []
    saved = os.environ.pop("TRITON_INTERPRET", None)
    try:
        for info in pkgutil.walk_packages(ops.__path__, "vision_rwkv.ops."):
            if "triton" in info.name.rsplit(".", 1)[-1] and info.name != "vision_rwkv.ops.triton_jit":
                mod = importlib.import_module(info.name)
                if any(isinstance(v, InterpretedFunction) for v in vars(mod).values()):
                    raise RuntimeError(f"{info.name} was imported with TRITON_INTERPRET=1: its kernels are "
                                       "interpreted; import it inside host_only_launches in a fresh process")
                names.append(info.name)
    finally:
        if saved is not None:
            os.environ["TRITON_INTERPRET"] = saved
    return names


@contextlib.contextmanager
def host_only_launches(arch: int = 90, keep: bool = True) -> Iterator[HostOnlyDriver]:
    """Within the block Triton's active driver is a :class:`HostOnlyDriver` (yielded; ``keep``: it records each
    launch's arguments - False for timing), the kernel modules are imported as compiled kernels
    (:func:`import_kernel_modules`) and CPU tensors may take them (``VRWKV_BACKEND=triton``, as under the
    interpreter; ``TRITON_INTERPRET`` must not be set while kernels compile: Triton 3.6 then compiles with the
    interpreter's semantics)."""
    import triton
    import triton.backends.nvidia.driver as nvd

    host = HostOnlyDriver(arch, keep)
    # the launcher annotates its arguments with types of the C module; without it, plain tuples do (the C call is
    # the recorder above)
    names = ("PyKernelArg", "ARG_CONSTEXPR", "ARG_KERNEL", "ARG_TUPLE")
    saved = {n: getattr(nvd, n) for n in names if hasattr(nvd, n)}
    if saved.get("PyKernelArg", False) is None:
        nvd.PyKernelArg = lambda nested_tuple, type: (nested_tuple, type)
        nvd.ARG_CONSTEXPR, nvd.ARG_KERNEL, nvd.ARG_TUPLE = 0, 1, 2
    previous = triton.runtime.driver._active
    triton.runtime.driver.set_active(host)
    _CPU_LAUNCHES[0] = True  # the dispatchers send CPU tensors to the Triton kernels (VRWKV_BACKEND=triton)
    try:
        import_kernel_modules()
        yield host
    finally:
        _CPU_LAUNCHES[0] = False
        triton.runtime.driver._active = previous
        for n, v in saved.items():
            setattr(nvd, n, v)
