"""Static reports of the Triton kernels as compiled for a GPU, without a GPU.

``capture_kernels()`` turns every Triton launch into an ahead-of-time compile for a chosen target (sm_90 by default,
with the ptxas that ships with Triton) and records the kernel instead of running it, so the operators' host code can
be called on CPU tensors of real shapes. ``kernel_rows`` then reads each cubin with ``cuobjdump``: registers, stack
and local memory (spills), shared memory, and the SASS instruction mix (loads by width, shuffles, barriers,
special-function ops, tensor-core and fp64 instructions, conversions to and from fp64 included). Static counts, not
a profile: they answer "are the loads 16 bytes wide", "did anything spill", "how many instructions per element"
before any device time is spent.
"""
from __future__ import annotations

import collections
import contextlib
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from typing import Iterator

__all__ = ["CompiledLaunch", "CuobjdumpError", "capture_kernels", "cuobjdump_path", "kernel_rows", "format_rows",
           "sass_counts", "loop_instructions"]

_SASS_OP = re.compile(r"^\s+/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P[T\d]+\s+)?([A-Z][A-Z0-9_.]*)", re.M)
_RES = re.compile(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)")


@dataclass
class CompiledLaunch:
    """One captured launch: kernel name, grid, the compiled kernel (``.asm['cubin']``, ``.metadata``) and a tag."""
    name: str
    grid: tuple
    kernel: object
    tag: str = ""
    extra: dict = field(default_factory=dict)


def cuobjdump_path() -> str | None:
    """The ``cuobjdump`` shipped with Triton's NVIDIA backend (or on PATH); None when there is none."""
    try:
        import triton

        cand = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
        if os.access(cand, os.X_OK):
            return cand
    except ImportError:
        return None
    return shutil.which("cuobjdump")


@contextlib.contextmanager
def capture_kernels(arch: int = 90, tag: str = "") -> Iterator[list[CompiledLaunch]]:
    """Within the block, Triton launches compile for ``sm_<arch>`` and are recorded (not run) into the yielded list.

    The arguments are specialized exactly as a real launch would be (pointer alignment, integers equal to 1), from
    whatever tensors the host code passes (CPU tensors work). Kernel outputs are left unwritten.
    """
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend
    from triton.runtime import jit as tjit

    target = GPUTarget("cuda", arch, 32)
    backend = make_backend(target)
    records: list[CompiledLaunch] = []
    cache: dict = {}
    from .ops.triton_jit import FastLaunchFunction

    patched = (tjit.JITFunction, FastLaunchFunction)  # (our kernels' class overrides run: patch it too)
    originals = [cls.__dict__["run"] for cls in patched]

    def fake_run(self, *args, grid, warmup, **kwargs):
        binder = tjit.create_function_from_signature(self.signature, self.params, backend)
        bound, spec, options = binder(*args, **kwargs)
        options, signature, constexprs, attrs = self._pack_args(backend, kwargs, bound, spec, options)
        key = (id(self), repr(signature), repr(constexprs), repr(attrs), repr(sorted(options.__dict__.items())))
        if key not in cache:
            cache[key] = triton.compile(ASTSource(self, signature, constexprs, attrs), target=target,
                                        options=options.__dict__)
        g = grid(bound) if callable(grid) else grid
        records.append(CompiledLaunch(self.fn.__name__, tuple(int(x) for x in g), cache[key], tag,
                                      dict(module=self.fn.__module__)))
        return None

    from .ops._triton_utils import _CPU_LAUNCHES
    was_cpu = _CPU_LAUNCHES[0]
    _CPU_LAUNCHES[0] = True  # CPU tensors may take the kernels: their launches compile, nothing runs
    for cls in patched:
        cls.run = fake_run
    try:
        yield records
    finally:
        _CPU_LAUNCHES[0] = was_cpu
        for cls, run in zip(patched, originals):
            cls.run = run


_SASS_ADDR_OP = re.compile(r"^\s+/\*([0-9a-f]{4,})\*/\s+(?:@!?U?P[T\d]+\s+)?([A-Z][A-Z0-9_.]*)\s*([^;]*);", re.M)


def loop_instructions(sass: str) -> int:
    """Instructions of the longest loop in a ``cuobjdump -sass`` listing (from a backward branch's target to the
    branch), 0 for a loop-free kernel: with the trip count, the loop's share of the dynamic instruction count."""
    longest = 0
    for addr, op, args in _SASS_ADDR_OP.findall(sass):
        target = re.match(r"\s*0x([0-9a-f]+)", args)
        if op == "BRA" and target and int(target.group(1), 16) < int(addr, 16):
            longest = max(longest, (int(addr, 16) - int(target.group(1), 16)) // 16 + 1)
    return longest


def sass_counts(sass: str) -> collections.Counter:
    """Opcode (with modifiers, e.g. ``LDG.E.128``) -> static count in a ``cuobjdump -sass`` listing."""
    return collections.Counter(_SASS_OP.findall(sass))


def _group(ops: collections.Counter) -> dict:
    def tot(*prefixes):
        return sum(n for op, n in ops.items() if op.startswith(prefixes))

    loads = {op: n for op, n in ops.items() if op.startswith(("LDG", "LDGSTS"))}
    # fp64 arithmetic and conversions to / from fp64 (F2F.F32.F64, F2F.F64.BF16, I2F.F64, ...): the conversions run at
    # a fraction of the fp32 rate on every GPU, so they count as fp64 work
    cvt64 = sum(n for op, n in ops.items() if op.startswith(("F2F", "I2F", "F2I")) and ".F64" in op)
    return dict(
        instr=sum(ops.values()),
        ldg=tot("LDG"), ldg_128=sum(n for op, n in loads.items() if ".128" in op),
        ldg_16bit=sum(n for op, n in loads.items() if ".U16" in op or ".S16" in op),
        stg=tot("STG"), shfl=tot("SHFL"), bar=tot("BAR"), mufu=tot("MUFU"),
        mma=tot("HMMA", "HGMMA", "IMMA", "QGMMA"), fp64=tot("DADD", "DMUL", "DFMA", "DSETP", "DMNMX") + cvt64,
        local=tot("LDL", "STL"),
    )


def kernel_rows(records: list[CompiledLaunch], cuobjdump: str | None = None) -> list[dict]:
    """One dict per distinct (tag, kernel, grid): resources from ``cuobjdump --dump-resource-usage`` and grouped
    SASS counts (see ``_group``). Raises FileNotFoundError when no cuobjdump is available and
    :class:`CuobjdumpError` (with the tool's message) when it cannot read a kernel."""
    tool = cuobjdump or cuobjdump_path()
    if tool is None:
        raise FileNotFoundError("cuobjdump not found (it ships with triton's NVIDIA backend)")
    rows, seen = [], set()
    with tempfile.TemporaryDirectory() as tmp:
        for i, rec in enumerate(records):
            key = (rec.tag, rec.name, rec.grid, id(rec.kernel))
            if key in seen:
                continue
            seen.add(key)
            path = os.path.join(tmp, f"k{i}.cubin")
            with open(path, "wb") as f:
                f.write(rec.kernel.asm["cubin"])
            res = _cuobjdump(tool, "--dump-resource-usage", path, rec)
            sass = _cuobjdump(tool, "-sass", path, rec).stdout
            m = _RES.search(res.stdout)
            if m is None:
                raise RuntimeError(f"unexpected cuobjdump output for {rec.name}: {res.stdout[-500:]}")
            reg, stack, shared, local = (int(x) for x in m.groups())
            programs = 1
            for g in rec.grid:
                programs *= g
            row = dict(tag=rec.tag, kernel=rec.name, grid=list(rec.grid), programs=programs,
                       warps=rec.kernel.metadata.num_warps, regs=reg, stack=stack, local_bytes=local,
                       shared=max(shared, rec.kernel.metadata.shared), **_group(sass_counts(sass)),
                       loop_instr=loop_instructions(sass), **rec.extra)
            rows.append(row)
    return rows


class CuobjdumpError(RuntimeError):
    """``cuobjdump`` could not read a compiled kernel (e.g. a target its CUDA version no longer disassembles)."""


def _cuobjdump(tool: str, flag: str, path: str, rec: CompiledLaunch) -> subprocess.CompletedProcess:
    """``cuobjdump FLAG cubin``; a :class:`CuobjdumpError` with the tool's own message when it fails."""
    proc = subprocess.run([tool, flag, path], capture_output=True, text=True)
    if proc.returncode != 0:
        target = getattr(getattr(rec.kernel, "metadata", None), "target", None)
        arch = getattr(target, "arch", None)
        why = (proc.stderr or proc.stdout).strip()[-500:] or f"exit status {proc.returncode}"
        raise CuobjdumpError(f"{os.path.basename(tool)} {flag} failed on {rec.name}"
                             f"{f' compiled for sm_{arch}' if arch else ''}: {why} (the cuobjdump at {tool} may not "
                             "read this target: --arch 80 and 90 are known to work)")
    return proc


_COLUMNS = ("tag", "kernel", "grid", "warps", "regs", "stack", "shared", "instr", "loop_instr", "ldg", "ldg_128",
            "ldg_16bit", "stg", "shfl", "bar", "mufu", "mma", "fp64", "local")


def format_rows(rows: list[dict]) -> str:
    """Markdown table of ``kernel_rows`` output (static SASS counts per kernel)."""
    head = "| " + " | ".join(_COLUMNS) + " |\n|" + "---|" * len(_COLUMNS) + "\n"
    body = ""
    for r in rows:
        cells = ["x".join(str(g) for g in r[c]) if c == "grid" else str(r[c]) for c in _COLUMNS]
        body += "| " + " | ".join(cells) + " |\n"
    return head + body
