#!/usr/bin/env python3
"""Host-side cost of one inference forward, measured on CPU with every device launch stubbed out.

Eager inference at 224 on a GPU is launch-bound: the GPU waits for Python (H100, VRWKV-T, batch 256: 12.1k img/s
eager vs 27.4k replaying a CUDA graph). This tool measures that host work without a GPU: the fused path runs on
CPU tensors with ``TRITON_INTERPRET=1`` and ``VRWKV_BACKEND=triton``, but every Triton launch and every matrix
product - ``F.linear``, ``torch.mm``, ``torch.bmm`` - is replaced by a stub that only records it (and allocates its
output), so what is timed is our Python (wrappers, checks, dispatch, autograd bookkeeping, allocations) plus
PyTorch's per-op overhead - the part a real launch adds on top is Triton's launcher and cuBLAS's, per launch. DeiT
runs under the same stubs. (A product computed for real would put CPU arithmetic into the host time - in bf16 ~50-90
us per tiny product on this kind of CPU, 10x an fp32 one - which a GPU does not spend on the host.)

Per model and path it prints: host time per forward or training step (thread CPU time, best of the repeats; a
training step's forward and backward parts too, from the same repeat; tiny input: 2x2 tokens,
models 64 channels wide by default, ``--dim``) and its ratio to DeiT-T's measured in the same run (the absolute
numbers drift by +-30% between runs on a shared VM; the ratio much less: the models and paths are timed in turns,
one round of ``--calls`` each per repeat, with Python's garbage collector paused), Triton launches, GEMMs (the stubbed
products and any other aten matrix product), and other (non-view) aten ops per forward - each of those is a kernel
launch on a GPU.

    python tools/benchmark_host.py                                  # VRWKV-T, VRWKV6-T, DeiT-T
    python tools/benchmark_host.py --model vrwkv_small_patch16_224 --out host.json
    python tools/benchmark_host.py --train                          # a training step (forward + backward)
    python tools/benchmark_host.py --train --autocast               # the same under bf16 autocast
    python tools/benchmark_host.py --train --per-op                 # + one autograd node per op (not per mixer)
    python tools/benchmark_host.py --per-op                         # inference: + each op through its wrapper
    python tools/benchmark_host.py --train --launches triton        # + Triton's own launch path, see below

``--launches triton``: instead of stubbing the Triton launches, the kernels are compiled for sm_90 and launched through
Triton's real host path up to its final C call (``vision_rwkv.ops.host_driver``): what Triton's binding,
specialization and launcher cost per launch is then part of the timing (DeiT has no Triton launch). Our models run
twice: with the short launch path of ``vision_rwkv.ops.triton_jit`` (the default, path "fused") and with Triton's
``JITFunction.run`` (``VRWKV_TRITON_FAST_LAUNCH=0``, path "..., Triton's launch").
"""
from __future__ import annotations

import os
import sys

# before anything imports triton: with stubbed launches the kernels become interpretable functions; with
# --launches triton triton must be imported with the interpreter off (its own library functions are then compiled
# ones), the dispatchers taking CPU tensors inside vision_rwkv.ops.host_driver.host_only_launches instead
_TRITON_LAUNCHES = any(a == "--launches=triton" or (a == "--launches" and sys.argv[i + 1:i + 2] == ["triton"])
                       for i, a in enumerate(sys.argv))
if _TRITON_LAUNCHES:
    os.environ.pop("TRITON_INTERPRET", None)
else:
    os.environ["TRITON_INTERPRET"] = "1"
os.environ.setdefault("VRWKV_BACKEND", "triton")

import argparse  # noqa: E402
import collections  # noqa: E402
import contextlib  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import timm  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import vision_rwkv  # noqa: E402,F401
from vision_rwkv.benchmark import run_metadata  # noqa: E402
from vision_rwkv.ops.fused import fused_gemm_enabled  # noqa: E402

MODELS = ["vrwkv_tiny_patch16_224", "vrwkv6_tiny_patch16_224", "deit_tiny_patch16_224"]
ALLOC_OPS = {"aten.empty", "aten.new_empty", "aten.empty_like", "aten.empty_strided", "aten.new_empty_strided"}
# ops that launch no kernel: views, metadata, and the uninitialised allocations
VIEW_OPS = {"aten.view", "aten._unsafe_view", "aten.select", "aten.unbind", "aten.permute", "aten.transpose",
            "aten.t", "aten.expand", "aten.slice", "aten.split", "aten.as_strided", "aten.reshape",
            "aten.promote_types", "aten.detach", "aten.alias"} | ALLOC_OPS
MATMUL_OPS = {"aten.mm", "aten.bmm", "aten.addmm", "aten.baddbmm"}  # counted with the stubbed GEMMs


class _LinearStub(torch.autograd.Function):
    """A stubbed ``F.linear`` inside autograd (training mode): the forward records one GEMM, the backward two (d x
    and d weight; a bias gradient is counted as one more launch) and returns unwritten gradients."""

    @staticmethod
    def forward(ctx, stubs, x, weight, bias, shape, dtype):
        ctx.stubs, ctx.shapes, ctx.has_bias = stubs, (x, weight), bias is not None
        return x.new_empty(shape, dtype=dtype)

    @staticmethod
    def backward(ctx, g):
        x, weight = ctx.shapes
        ctx.stubs.gemm += 2 + ctx.has_bias
        gb = g.new_empty(weight.shape[:1]) if ctx.has_bias else None
        gx, gw = g.new_empty(x.shape, dtype=x.dtype), g.new_empty(weight.shape, dtype=weight.dtype)
        if ctx.stubs.record is not None:
            ctx.stubs.record("linear_bwd", None, (g, x, weight, gb), (gx, gw))
        return None, gx, gw, gb, None, None


class _ProductStub(torch.autograd.Function):
    """A stubbed ``torch.mm`` / ``torch.bmm`` inside autograd: the backward records one GEMM per input gradient
    autograd asks for (as aten's own backward of the product computes) and returns them unwritten."""

    @staticmethod
    def forward(ctx, stubs, a, b, shape, dtype):
        ctx.stubs, ctx.shapes = stubs, (a, b)
        return a.new_empty(shape, dtype=dtype)

    @staticmethod
    def backward(ctx, g):
        grads = tuple(g.new_empty(t.shape, dtype=t.dtype) if need else None
                      for t, need in zip(ctx.shapes, ctx.needs_input_grad[1:3]))
        ctx.stubs.gemm += sum(gr is not None for gr in grads)
        return None, *grads, None, None


def _product_shape(name: str, a, b):
    """The output shape of ``torch.<name>(a, b)`` (mm: 2-d, bmm: 3-d operands), or None if the real op would raise."""
    if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)):
        return None
    nd = 2 if name == "mm" else 3
    if a.dim() != nd or b.dim() != nd or a.shape[-1] != b.shape[-2] or a.shape[:-2] != b.shape[:-2]:
        return None
    return (*a.shape[:-1], b.shape[-1])


class _Stubs:
    """Replace Triton launches and ``F.linear`` by recording stubs while active. ``record(kind, fn, args, out)``, if
    given, also sees every stubbed call: kind 'triton' (fn = the kernel's Python function, args = its launch
    arguments), 'linear' (args = (x, weight, bias), out = the stub's output) or, in training, 'linear_bwd' (args =
    (grad_out, x, weight, grad_bias or None), out = (grad_x, grad_weight)) for the backward of a recorded Linear, and
    'linear_grad' (as 'linear') for an ``F.linear`` call a backward makes itself (the one-node mixers' d x, d W).

    ``products``: ``torch.mm`` and ``torch.bmm`` (what the one-node mixers call in their forwards and backwards, and
    the batched projections) are stubbed too - allocated, not computed, counted in ``gemm`` and per op in
    ``by_product`` - and not passed to ``record`` (leave it off where the products must reach a dispatch mode). A call
    the real op would reject (mismatched shapes or dtypes) runs the real op, which raises.

    ``autocast_casts``: under autocast the stubbed ``F.linear`` does the casts autocast would do for the real one, as
    real ops (host work and launches): operands not in the autocast dtype are cast, a leaf weight that requires grad
    once per autocast region (autocast's cast cache; :meth:`new_region` clears it), and in training autograd casts
    their gradients back."""

    def __init__(self, record=None, autocast_casts: bool = False, products: bool = False):
        self.triton = collections.Counter()
        self.by_product = collections.Counter()
        self.gemm = 0
        self.record = record
        self.autocast_casts = autocast_casts
        self.products = products
        self._cast_cache: dict = {}

    def new_region(self) -> None:
        """A new autocast region began: autocast's cached weight casts are gone."""
        self._cast_cache.clear()

    def _autocast(self, t, dtype):
        if t is None or t.dtype == dtype or not t.is_floating_point():
            return t
        if t.is_leaf and t.requires_grad:  # (autocast caches the casts of leaf tensors that require grad)
            if id(t) not in self._cast_cache:
                self._cast_cache[id(t)] = (t, t.to(dtype))
            return self._cast_cache[id(t)][1]
        return t.to(dtype)

    def __enter__(self):
        from triton.runtime import interpreter

        stubs = self

        def run(fn_self, *args, grid, warmup, **kwargs):
            stubs.triton[fn_self.fn.__name__] += 1
            if stubs.record is not None:
                stubs.record("triton", fn_self.fn, args, None)

        def linear(x, weight, bias=None):
            stubs.gemm += 1
            dev = x.device.type  # the output dtype F.linear would give (the autocast dtype inside autocast)
            dtype = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else x.dtype
            if stubs.autocast_casts and torch.is_autocast_enabled(dev):
                x, weight, bias = (stubs._autocast(t, dtype) for t in (x, weight, bias))
            shape = (*x.shape[:-1], weight.shape[0])
            if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, weight, bias)):
                out = _LinearStub.apply(stubs, x, weight, bias, shape, dtype)
            else:
                out = x.new_empty(shape, dtype=dtype)
            if stubs.record is not None:  # (inside the autograd engine: a backward's GEMM, e.g. of a one-node mixer)
                kind = "linear" if torch._C._current_graph_task_id() == -1 else "linear_grad"
                stubs.record(kind, None, (x, weight, bias), out)
            return out

        def product(name, real):
            def stub(a, b, *, out=None):
                dev = a.device.type if isinstance(a, torch.Tensor) else "cpu"
                autocast = torch.is_autocast_enabled(dev)
                dtype = torch.get_autocast_dtype(dev) if autocast else getattr(a, "dtype", None)
                if stubs.autocast_casts and autocast:
                    a, b = stubs._autocast(a, dtype), stubs._autocast(b, dtype)
                shape = _product_shape(name, a, b)
                if shape is None or (not autocast and a.dtype != b.dtype):
                    return real(a, b) if out is None else real(a, b, out=out)  # (raises as the real op does)
                stubs.gemm += 1
                stubs.by_product[name] += 1
                if out is not None:
                    return out
                if torch.is_grad_enabled() and (a.requires_grad or b.requires_grad):
                    return _ProductStub.apply(stubs, a, b, shape, dtype)
                return a.new_empty(shape, dtype=dtype)
            return stub

        self._saved = [(interpreter.InterpretedFunction, "run", interpreter.InterpretedFunction.run),
                       (F, "linear", F.linear), (torch.nn.modules.linear.F, "linear", F.linear)]
        interpreter.InterpretedFunction.run = run
        F.linear = linear
        torch.nn.modules.linear.F.linear = linear
        if self.products:
            for name in ("mm", "bmm"):
                self._saved.append((torch, name, getattr(torch, name)))
                setattr(torch, name, product(name, getattr(torch, name)))
        return self

    def __exit__(self, *exc):
        for owner, name, value in self._saved:
            setattr(owner, name, value)


class _AtenCount(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[str(func.overloadpacket)] += 1
        return func(*args, **(kwargs or {}))


def narrow_kwargs(name: str, dim: int | None) -> dict:
    """timm kwargs for a model of width ``dim`` (None: the registered width): one head of ``dim`` channels for
    DeiT / ViT and RWKV-6 (whose head size must divide the width), the same blocks and launches otherwise."""
    if dim is None:
        return {}
    if name.startswith(("deit", "vit")):
        return dict(embed_dim=dim, num_heads=1)
    if "vrwkv6" in name:
        return dict(embed_dim=dim, head_size=dim)
    return dict(embed_dim=dim)


class _Case:
    """One model and path under the stubs: its environment switches and one step (an inference forward, or a
    training step: train mode, forward + backward of the features' sum, gradients cleared between steps; no
    optimizer step). ``dim``: the models' width (see :func:`narrow_kwargs`). ``autocast``: each step's forward under
    bf16 autocast, with autocast's casts for the stubbed ``F.linear`` done for real. ``one_node``: each fused mixer runs
    as one step - one autograd node in training, one call in inference (the default; False: ``VRWKV_FUSED_STEP=0``,
    op by op)."""

    def __init__(self, name: str, fused: bool = True, train: bool = False, dim: int | None = None,
                 autocast: bool = False, one_node: bool = True, fast_launch: bool = True):
        self.name, self.fused, self.train, self.autocast, self.one_node = name, fused, train, autocast, one_node
        self.fast_launch = fast_launch
        self.env = {"VRWKV_FUSED": "1" if fused else "0", "VRWKV_FUSED_STEP": "1" if one_node else "0",
                    "VRWKV_TRITON_FAST_LAUNCH": "1" if fast_launch else "0"}
        self.activate()
        self.model = timm.create_model(name, img_size=32, num_classes=0, **narrow_kwargs(name, dim)).train(train)
        self.x = torch.randn(1, 3, 32, 32)
        self.best = float("inf")
        self.best_split = (None, None)  # (forward, backward) host seconds per step in the best repeat (training)
        self.split = [0.0, 0.0]  # the current repeat's sums

    def activate(self) -> None:
        os.environ.update(self.env)

    def step(self, stubs: "_Stubs") -> None:
        stubs.new_region()
        if self.train:
            self.model.zero_grad(set_to_none=True)
        t0 = time.thread_time() if self.train else 0.0  # (the split's clock: training only)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.autocast):
            y = self.model.forward_features(self.x)
        if self.train:
            t1 = time.thread_time()
            y.float().sum().backward()
            self.split[0] += t1 - t0
            self.split[1] += time.thread_time() - t1

    def row(self, stubs: "_Stubs", host=None) -> dict:
        """Launch counts of one step (recorded now) and the best time, as a result row. ``host``: the
        :class:`~vision_rwkv.ops.host_driver.HostOnlyDriver` the Triton launches go through, if any."""
        self.activate()
        stubs.triton.clear()
        stubs.by_product.clear()
        stubs.gemm = 0
        before = host.launch_count if host is not None else 0
        with _AtenCount() as aten:
            self.step(stubs)
        if host is not None:
            stubs.triton["(compiled kernels)"] = host.launch_count - before
        matmuls = sum(n for op, n in aten.ops.items() if op in MATMUL_OPS)  # products not stubbed (``x @ w``)
        other = sum(n for op, n in aten.ops.items() if op not in VIEW_OPS and op not in MATMUL_OPS)
        gemms = stubs.gemm + matmuls
        path = ("fused" if self.one_node else "fused, per-op") if self.fused else "plain"
        if host is not None and self.fused and not self.fast_launch:
            path += ", Triton's launch"
        return dict(model=self.name, path=path, fused_gemm="1" if fused_gemm_enabled() else "0",
                    mode="train" if self.train else "inference",
                    dtype="bf16 autocast" if self.autocast else "fp32", host_ms=self.best * 1e3,
                    **({} if self.best_split[0] is None else dict(host_ms_forward=self.best_split[0] * 1e3,
                                                                  host_ms_backward=self.best_split[1] * 1e3)),
                    triton_launches=sum(stubs.triton.values()), gemms=gemms, other_aten_ops=other,
                    launches=sum(stubs.triton.values()) + gemms + other, triton_by_kernel=dict(stubs.triton),
                    stubbed_products=dict(stubs.by_product),
                    aten_by_op={op: n for op, n in sorted(aten.ops.items()) if op not in VIEW_OPS})


def measure_all(cases: list, repeats: int = 5, calls: int = 20, host=None) -> list:
    """Host ms per step of each case (thread CPU time, best of ``repeats`` means over ``calls``) and its launches
    per step. The cases are timed in turns - each repeat one round of ``calls`` steps per case - with the garbage
    collector paused, so that a slow spell of a shared VM or a collection falls on all of them alike."""
    train = any(c.train for c in cases)
    with torch.set_grad_enabled(train), _Stubs(autocast_casts=True, products=True) as stubs:
        for case in cases:
            case.activate()
            for _ in range(3):
                case.step(stubs)
        gc.collect()
        gc.disable()
        try:
            for _ in range(repeats):
                for case in cases:
                    case.activate()
                    case.split = [0.0, 0.0]
                    t0 = time.thread_time()
                    for _ in range(calls):
                        case.step(stubs)
                    took = (time.thread_time() - t0) / calls
                    if took < case.best:  # (training: the forward / backward split of the same repeat)
                        case.best = took
                        if case.train:
                            case.best_split = (case.split[0] / calls, case.split[1] / calls)
        finally:
            gc.enable()
        return [case.row(stubs, host) for case in cases]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", action="append", help=f"repeatable; default {MODELS}")
    p.add_argument("--plain", action="store_true", help="also the plain path (VRWKV_FUSED=0) of our models")
    p.add_argument("--per-op", action="store_true",
                   help="also our fused path op by op (VRWKV_FUSED_STEP=0): in training one autograd node per fused "
                        "op instead of one per mixer, in inference each op through its wrapper")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--calls", type=int, default=20)
    p.add_argument("--train", action="store_true", help="a training step (forward + backward) instead of a forward")
    p.add_argument("--autocast", action="store_true",
                   help="forwards under bf16 autocast (the benchmarks' setting), autocast's weight casts included")
    p.add_argument("--dim", type=int, default=64,
                   help="the models' width (default 64; 0: as registered). The host work per launch does not depend "
                        "on it, while the aten ops that run for real on CPU - the batched projections, the LoRA "
                        "products, weight stacks and casts - cost milliseconds of compute at width 192, which a GPU "
                        "does not spend on the host")
    p.add_argument("--launches", choices=("stub", "triton"), default="stub",
                   help="stub: Triton launches only counted (default); triton: compiled for sm_90 and launched "
                        "through Triton's host path up to the C call, with and without our short launch path")
    p.add_argument("--out", type=Path, help="write the rows as JSON")
    args = p.parse_args(argv)
    for name in ("repeats", "calls"):  # (--repeats 0 printed "inf" and wrote Infinity, not JSON, to --out)
        if getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.dim < 0:
        p.error(f"--dim must be >= 0 (0: the registered width), got {args.dim}")
    torch.set_num_threads(1)
    with contextlib.ExitStack() as stack:
        host = None
        if args.launches == "triton":
            from vision_rwkv.ops.host_driver import host_only_launches

            if not _TRITON_LAUNCHES:
                raise SystemExit("--launches triton must be given on the command line (triton is imported first)")
            host = stack.enter_context(host_only_launches(keep=False))
        cases = []
        for name in args.model or MODELS:
            ours = not name.startswith(("deit", "vit"))
            variants = [(True, True)] + ([(True, False)] if ours and args.per_op else [])
            for fused, one_node in variants + ([(False, True)] if ours and args.plain else []):
                cases.append(_Case(name, fused, args.train, args.dim or None, args.autocast, one_node))
                if host is not None and ours and fused:
                    cases.append(_Case(name, fused, args.train, args.dim or None, args.autocast, one_node, False))
        rows = measure_all(cases, args.repeats, args.calls, host)
    for r in rows:
        r["dim"] = args.dim or None
        r["launches_via"] = args.launches
        listed = ("triton_by_kernel", "aten_by_op", "stubbed_products")
        print(json.dumps({k: v for k, v in r.items() if k not in listed}), flush=True)
    deit = next((r["host_ms"] for r in rows if r["model"].startswith("deit")), None)
    unit = "training step" if args.train else "forward"
    split = " forward / backward ms |" if args.train else ""
    print(f"\n| model | path | host ms / {unit} | x DeiT |{split} Triton launches | GEMMs | other aten ops | launches |")
    print("|---|---|---|---|" + ("---|" if args.train else "") + "---|---|---|---|")
    for r in rows:
        path = r["path"] + (" + fused GEMMs" if r["fused_gemm"] == "1" and r["path"] == "fused" else "")
        if deit:
            r["vs_deit"] = r["host_ms"] / deit
        ratio = f"{r['vs_deit']:.2f}" if deit else ""
        parts = f" {r['host_ms_forward']:.2f} / {r['host_ms_backward']:.2f} |" if args.train else ""
        print(f"| {r['model']} | {path} | {r['host_ms']:.2f} | {ratio} |{parts} {r['triton_launches']} | "
              f"{r['gemms']} | {r['other_aten_ops']} | {r['launches']} |")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(dict(torch=torch.__version__, meta=run_metadata(), rows=rows), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
