"""Host time per launch: a PyTorch op against a Triton kernel with our kernels' argument mix, by launch path.

DeiT's eager 224-px training step is bound by host work, and ours largely (round 40 of benchmarks/results/README.md),
but ~14 ms of VRWKV-T's 46 ms step was not accounted for by ``tools/benchmark_host.py`` run on the same machine: the
launches' real cost on a GPU host (beyond the Python the harness sees), or GPU time. This times, per launch, with the
device idle at the start (the launch queue is not filled):

- ``aten``: ``torch.add(a, b, out=c)`` on small tensors (a PyTorch op: dispatch + its CUDA launch);
- ``fast``: a Triton kernel taking 8 tensors and 16 integers (the mean mix of a VRWKV-T training step's launches:
  1488 tensor and 3072 other arguments over 192 launches) through ``vision_rwkv.ops.triton_jit``'s short path,
  which hands the launcher each tensor as its address (the default);
- ``launcher_tensors`` / ``launcher_addresses``: the compiled kernel's launcher called directly with the tensors
  (Triton's C launcher then calls each one's ``data_ptr`` and ``cuPointerGetAttribute``) or with their addresses -
  the difference is that per-tensor driver work, which the short path no longer does;
- ``triton``: Triton's own ``JITFunction.run`` (``VRWKV_TRITON_FAST_LAUNCH=0``).

    python benchmarks/launch_cost.py [--launches 2000] [--repeats 5] [--out launch_cost.json]
    python benchmarks/launch_cost.py --device cpu   # no GPU: kernels compiled for sm_90, the final C call recorded

On CPU (``vision_rwkv.ops.host_driver``) the C launch is stubbed: the two ``launcher_*`` rows then differ only by what
Triton's Python launcher does with either, not by the driver calls.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from pathlib import Path

os.environ.pop("TRITON_INTERPRET", None)  # (compiled kernels: on CPU through host_driver, never interpreted)
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import triton.language as tl  # noqa: E402

from vision_rwkv.ops import triton_jit  # noqa: E402

N_TENSORS, N_INTS = 8, 16
MODES = ("aten", "fast", "launcher_tensors", "launcher_addresses", "triton")


@triton_jit.jit
def _touch_kernel(p0, p1, p2, p3, p4, p5, p6, p7, i0, i1, i2, i3, i4, i5, i6, i7, i8, i9, i10, i11, i12, i13, i14,
                  i15, BLOCK: tl.constexpr):
    """p7[:n] = p0[:n] + (sum of the other integers, 0 by construction) for n = i0: one tiny program, every argument
    passed as a real kernel's would be."""
    offs = tl.arange(0, BLOCK)
    mask = offs < i0
    extra = i1 + i2 + i3 + i4 + i5 + i6 + i7 + i8 + i9 + i10 + i11 + i12 + i13 + i14 + i15
    tl.store(p7 + offs, tl.load(p0 + offs, mask=mask) + (extra - extra), mask=mask)


def _ints() -> list[int]:
    """16 distinct integers none of which Triton specializes as a constant (1) - sizes and strides as kernels get."""
    return [64] + [17 + 3 * i for i in range(N_INTS - 1)]


def _launchers(tensors: list[torch.Tensor], ints: list[int]) -> dict:
    """Mode -> a zero-argument callable making one launch (the short path's dict filled first). Without the
    ``launcher_*`` modes on a Triton the short path does not support (its kernels then take Triton's path)."""
    a, b, c = tensors[0], tensors[1], tensors[7]
    grid = (1,)

    def fast():
        _touch_kernel[grid](*tensors, *ints, BLOCK=64)

    def triton_path():
        os.environ["VRWKV_TRITON_FAST_LAUNCH"] = "0"
        try:
            fast()
        finally:
            os.environ["VRWKV_TRITON_FAST_LAUNCH"] = "1"

    os.environ["VRWKV_TRITON_FAST_LAUNCH"] = "1"
    fast()
    fast()  # (the second launch is served by the short path; the first recorded its kernel and binding)
    calls = {"aten": lambda: torch.add(a, b, out=c), "fast": fast, "triton": triton_path}
    recorded = list(getattr(_touch_kernel, "_fast_kernels", {}).values())
    if len(recorded) != 1:
        print(f"the short path recorded {len(recorded)} kernels (not 1): no launcher_* rows", file=sys.stderr)
        return calls
    (kernel, tail), = recorded
    from triton.runtime.driver import driver

    def direct(args):
        def launch():
            stream = driver.active.get_current_stream(driver.active.get_current_device())
            triton_jit.launch_compiled(kernel, grid, stream, *args, *tail)
        return launch

    return dict(calls, launcher_tensors=direct(tensors + ints),
                launcher_addresses=direct([t.data_ptr() for t in tensors] + ints))


def measure(device: torch.device, launches: int = 2000, repeats: int = 5) -> list[dict]:
    """Host us per launch for each mode (the best of ``repeats`` rounds of ``launches`` launches, the modes in
    turns; the device synchronized before each round, the clock stopped before the synchronize after it)."""
    tensors = [torch.randn(64, device=device) for _ in range(N_TENSORS)]
    calls = _launchers(tensors, _ints())
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    modes = [m for m in MODES if m in calls]
    best = {m: float("inf") for m in modes}
    for _ in range(repeats):
        for mode in modes:
            fn = calls[mode]
            fn()
            sync()
            t0 = time.perf_counter()
            for _ in range(launches):
                fn()
            best[mode] = min(best[mode], (time.perf_counter() - t0) / launches * 1e6)
            sync()
    base = best["aten"]
    return [dict(mode=m, us_per_launch=best[m], x_aten=best[m] / base if base > 0 else None, tensors=N_TENSORS,
                 ints=N_INTS) for m in modes]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--launches", type=int, default=2000)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", type=Path, help="write the rows as JSON")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type not in ("cuda", "cpu"):
        p.error(f"--device must be cuda or cpu, got {args.device!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no GPU here (use --device cpu: kernels compiled for sm_90, launches recorded)")
    with contextlib.ExitStack() as stack:
        if device.type == "cpu":
            from vision_rwkv.ops.host_driver import host_only_launches

            stack.enter_context(host_only_launches(keep=False))
        rows = measure(device, args.launches, args.repeats)
    print(f"host time per launch ({device.type}; {N_TENSORS} tensors + {N_INTS} integers per Triton launch)\n")
    print("| mode | us / launch | x aten |\n|---|---|---|")
    for r in rows:
        print(f"| {r['mode']} | {r['us_per_launch']:.2f} | {r['x_aten']:.2f} |")
    if args.out:
        from vision_rwkv.benchmark import run_metadata

        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(dict(meta=run_metadata(device), rows=rows), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
