"""Run by ``test_triton_jit.py`` in a fresh process (no ``TRITON_INTERPRET``): the short launch path of
``vision_rwkv.ops.triton_jit`` against Triton's ``JITFunction.run``, with kernels compiled for sm_90 on CPU and each
launch's final C call recorded (``vision_rwkv.ops.host_driver``). Prints one JSON dict of findings."""
import json
import os
import sys

import torch
import triton
import triton.language as tl
from triton import knobs
from triton.runtime import jit as tjit

from vision_rwkv.ops import triton_jit
from vision_rwkv.ops.host_driver import host_only_launches


@triton_jit.jit
def _scale_kernel(x_ptr, out_ptr, a, n, BLOCK: tl.constexpr):
    """out = x * a over n elements (``a`` an int, a bool or a float: each its own specialization)."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    tl.store(out_ptr + offs, tl.load(x_ptr + offs, mask=mask) * a, mask=mask)


def _describe(launches) -> list:
    """Each launch as (kernel, compiled binary, grid, arguments: scalars as is, pointers - a tensor, or an address as
    the short path passes it: an int >= 2**32, which no scalar of the workload is - by their address mod 16, the
    binary being the dtype's; ``_paired`` checks the addresses themselves)."""
    def arg(a):
        if isinstance(a, torch.Tensor):
            return ["ptr", a.data_ptr() % 16]
        if type(a) is int and a >= 2 ** 32:
            return ["ptr", a % 16]
        return [type(a).__name__, a if isinstance(a, (int, float, str, bool)) or a is None else repr(a)]
    return [[l.name, l.handle, list(l.grid), [arg(a) for a in l.args]] for l in launches]


def _paired(host, w6, ft) -> dict:
    """The workload with every launch made twice on the same arguments, through Triton's path and then the short
    path: mismatches (binary, grid, or an argument: a tensor must arrive as its address, anything else as is) and how
    many tensors the short path handed over as addresses."""
    original = triton_jit.FastLaunchFunction.run
    pairs = []

    def both(self, *args, grid, warmup, **kwargs):
        start = len(host.launches)
        for fast in ("0", "1"):
            os.environ["VRWKV_TRITON_FAST_LAUNCH"] = fast
            original(self, *args, grid=grid, warmup=warmup, **kwargs)
        pairs.append(host.launches[start:])

    def same(a, b):
        if isinstance(a, torch.Tensor):
            return type(b) is int and b == a.data_ptr()
        return type(a) is type(b) and a == b

    triton_jit.FastLaunchFunction.run = both
    try:
        _workload(w6, ft)
    finally:
        triton_jit.FastLaunchFunction.run = original
    bad, addresses = [], 0
    for recs in pairs:
        ok = len(recs) == 2 and recs[0].handle == recs[1].handle and recs[0].grid == recs[1].grid
        ok = ok and len(recs[0].args) == len(recs[1].args) and all(map(same, recs[0].args, recs[1].args))
        if not ok:
            bad.append(recs[0].name if recs else "(no launch)")
        else:  # (``same`` holds: each of Triton's tensors reached the launcher as an address on the short path)
            addresses += sum(isinstance(a, torch.Tensor) for a in recs[0].args)
    return dict(launches=len(pairs), mismatches=bad, addresses=addresses)


def _workload(w6, ft):
    """Launches of real kernels over several specializations: dtypes, T = 1 (an integer 1), a misaligned pointer
    (a view at an element offset), and the test kernel with an int / bool / float scalar that compare equal."""
    torch.manual_seed(0)
    w6.CONFIG["algo"] = "walk"  # (one kernel per direction pass: the launches this checks are the walk kernels')
    for dtype, T in ((torch.float32, 7), (torch.bfloat16, 1), (torch.float32, 33)):
        B, H, N = 2, 2, 16
        r, k, v = (torch.randn(B, T, H, N, dtype=dtype) for _ in range(3))
        logd, u = -torch.rand(B, T, H, N), torch.randn(H, N)
        w6._fwd(r, k, v, logd, u)
        misaligned = torch.randn(r.numel() + 1, dtype=dtype)[1:].view(r.shape)
        w6._fwd(misaligned, k, v, logd, u)
        w6._bwd(r, k, v, logd, u, torch.randn(B, T, H, N, dtype=dtype))
        x = torch.randn(B, 4 * 3, H * N, dtype=dtype)
        ft._tsm_fwd(x, 4, 3, N, torch.rand(1, H * N), None, dtype)
    x, out = torch.randn(100), torch.empty(100)
    for a in (1, True, 1.0, 3, 3.0):
        _scale_kernel[(4,)](x, out, a, 100, BLOCK=32)
    _scale_kernel[(4,)](x, out, 3.0, 100, BLOCK=32, maxnreg=64)  # a launch option: its own binary, no argument


def main() -> int:
    found = {}
    with host_only_launches() as host:
        from vision_rwkv.ops.bi_wkv6 import triton as w6
        from vision_rwkv.ops.fused import shift_triton as ft

        found["kernel_class"] = type(w6._v6_fwd_kernel).__name__
        slow = {"calls": 0}
        original = tjit.JITFunction.run

        def counted(self, *args, **kwargs):
            slow["calls"] += 1
            return original(self, *args, **kwargs)

        tjit.JITFunction.run = counted

        def run(fast: str):
            os.environ["VRWKV_TRITON_FAST_LAUNCH"] = fast
            host.launches.clear()
            slow["calls"] = 0
            _workload(w6, ft)
            return _describe(host.launches), slow["calls"]

        found["triton"], found["triton_run_calls"] = run("0")
        found["fast_first"], found["fast_first_run_calls"] = run("1")  # fills the short path's dicts
        found["fast"], found["fast_run_calls"] = run("1")
        scalars = [d for d in found["fast"] if d[0] == "_scale_kernel"]
        found["scalar_handles"] = [d[1] for d in scalars]
        found["paired"] = _paired(host, w6, ft)

        seen = []
        knobs.runtime.launch_enter_hook.add(seen.append)  # a profiler's hook: launches go through Triton's path
        try:
            _, found["hooked_run_calls"] = run("1")
        finally:
            knobs.runtime.launch_enter_hook.remove(seen.append)
        found["hook_calls"] = len(seen)

        saved = triton_jit._MAX_KEYS
        triton_jit._MAX_KEYS = 2  # the per-kernel dict is cleared when full; launches stay Triton's
        for kernel in (w6._v6_fwd_kernel, _scale_kernel):
            kernel._fast_kernels.clear()
        try:
            found["small_dict"], _ = run("1")
            found["small_dict_sizes"] = max(len(k.__dict__.get("_fast_kernels", {}))
                                           for k in (w6._v6_fwd_kernel, _scale_kernel))
        finally:
            triton_jit._MAX_KEYS = saved

        # a tensor passed by keyword would be keyed by identity: launched, never remembered (nothing kept alive)
        x, out = torch.randn(100), torch.empty(100)
        host.launches.clear()
        before = len(_scale_kernel._fast_kernels)
        for _ in range(3):
            _scale_kernel[(4,)](x, out_ptr=out, a=2, n=100, BLOCK=32)
        found["kw_tensor_dict_growth"] = len(_scale_kernel._fast_kernels) - before
        found["kw_tensor_launches"] = len(host.launches)
        tjit.JITFunction.run = original
    found["driver_restored"] = not isinstance(triton.runtime.driver._active, type(host))
    print(json.dumps(found))
    return 0


if __name__ == "__main__":
    sys.exit(main())
