"""Benchmarks of the Bi-WKV operators and of whole backbones (library behind ``tools/benchmark.py``).

* :func:`bench_ops` - ms of forward and forward+backward of ``bi_wkv`` (v4, both modes) and ``bi_wkv6`` per backend,
  achieved GB/s, % of the memory floor (bytes that must move once / 3.0 TB/s, the anchors' convention) and the
  speed-up over the best original kernel of ``benchmarks/anchors/kernels.json``; for the Triton v6 rows, where
  flash-linear-attention is installed, the same call through its causal kernels (``algo=fla``: the issue's
  comparison point) and our speed-up over it.
* :func:`bench_backbones` - images/s and peak memory of our VRWKV / VRWKV6 and timm's DeiT (fused attention),
  inference at several resolutions and a training step, fp32 and bf16 autocast, with ratios to DeiT measured in the
  same run and to the original numbers of ``benchmarks/anchors/backbones.json``.

GPU timings: CUDA events around each call, median of ``iters`` after ``warmup`` calls (TF32 off, like the anchors);
ops also get ``graph_ms``, the same call captured in a CUDA graph and replayed (GPU time without Python and kernel
launch overhead, which is large for Triton launches on small problems).
CPU timings: wall clock (perf_counter), median. Every function returns a list of plain dicts (JSON-ready).
"""
from __future__ import annotations

import functools
import gc
import json
import math
import os
import statistics
import time
from pathlib import Path
from typing import Callable, Iterable, Optional

import torch

from .resources import anchors_dir

__all__ = ["OP_SHAPES", "BACKBONES", "load_anchors", "time_fn", "bench_ops", "fla_available", "bench_backbones",
           "format_table", "DRAM_BPS", "apply_kernel_config", "kernel_configs", "run_metadata"]

DRAM_BPS = 3.0e12  # bytes/s used for the memory floor (anchors' convention, H100 HBM3 as measured)
OP_SHAPES = [(64, 196, 192), (64, 196, 768), (16, 1024, 384), (4, 4096, 384), (1, 16384, 192)]
BACKBONES = {  # ours -> timm reference of the same size, and the anchors' names
    "vrwkv_tiny_patch16_224": ("deit_tiny_patch16_224", "VRWKV-T", "DeiT-T"),
    "vrwkv_small_patch16_224": ("deit_small_patch16_224", "VRWKV-S", "DeiT-S"),
    "vrwkv_base_patch16_224": ("deit_base_patch16_224", "VRWKV-B", "DeiT-B"),
    "vrwkv6_tiny_patch16_224": ("deit_tiny_patch16_224", "VRWKV6-T", "DeiT-T"),
    "vrwkv6_small_patch16_224": ("deit_small_patch16_224", "VRWKV6-S", "DeiT-S"),
    "vrwkv6_base_patch16_224": ("deit_base_patch16_224", "VRWKV6-B", "DeiT-B"),
}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
_ANCHOR_DIR = anchors_dir()


def kernel_configs() -> dict[str, dict]:
    """The live launch-setting dicts of the Triton operators: {"v4": ..., "v6": ..., "gemm": ..., "mix": ...,
    "norm": ..., "mlp": ...} (imports Triton)."""
    from .ops.bi_wkv import triton as v4
    from .ops.bi_wkv6 import triton as v6
    from .ops.fused import linear_triton as gemm
    from .ops.fused import mix_linear_triton as mix
    from .ops.fused import mix_mlp_triton as mlp
    from .ops.fused import norm_linear_triton as norm

    return {"v4": v4.CONFIG, "v6": v6.CONFIG, "gemm": gemm.CONFIG, "mix": mix.CONFIG, "norm": norm.CONFIG,
            "mlp": mlp.CONFIG}


def run_metadata(device: str | torch.device | None = None) -> dict:
    """What a measurement ran with, for the JSON a benchmark writes: versions (python, torch, CUDA, Triton, timm),
    the GPU's name (``device`` a CUDA device), the git commit of a checkout (``"+dirty"`` when it has uncommitted
    changes), every ``VRWKV_*`` / ``TRITON_*`` variable set, and the Triton operators' live launch settings
    (``kernel_configs()``, with ``--kernel-config`` items applied) - so that numbers read later say which kernels and
    switches produced them."""
    import platform
    import subprocess

    meta: dict = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda}
    for name in ("triton", "timm"):
        try:
            meta[name] = __import__(name).__version__
        except Exception:  # not installed, or a broken install: the other fields still describe the run
            meta[name] = None
    if device is not None and torch.device(device).type == "cuda" and torch.cuda.is_available():
        meta["gpu"] = torch.cuda.get_device_name(torch.device(device))
    root = Path(__file__).resolve().parents[1]
    if (root / ".git").exists():  # a checkout (an installed wheel has none; neither may a device's copy)
        try:
            git = dict(cwd=root, capture_output=True, text=True, timeout=10)
            commit = subprocess.run(["git", "rev-parse", "HEAD"], **git)
            dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], **git)
            if commit.returncode == 0:
                meta["commit"] = commit.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
        except (OSError, subprocess.SubprocessError):  # no git executable
            pass
    meta["env"] = {k: v for k, v in sorted(os.environ.items()) if k.startswith(("VRWKV_", "TRITON_"))}
    try:
        meta["kernel_configs"] = {op: dict(cfg) for op, cfg in kernel_configs().items()}
    except Exception as err:  # no usable Triton: the references ran
        meta["kernel_configs"] = f"unavailable ({type(err).__name__})"
    return meta


def apply_kernel_config(items: Iterable[str] | None) -> None:
    """Set Triton launch settings from "OP.KEY=VAL" items, OP one of :func:`kernel_configs`' (v4, v6, gemm, mix, norm,
    mlp) (values cast to the entry's type); ValueError naming the problem for an unknown op or key."""
    configs = kernel_configs() if items else {}
    for item in items or []:
        key, sep, val = item.partition("=")
        op, dot, name = key.partition(".")
        if not sep or not dot:
            raise ValueError(f"expected OP.KEY=VALUE, got {item!r}")
        if op not in configs:
            raise ValueError(f"unknown op {op!r} in {item!r} (one of {sorted(configs)})")
        if name not in configs[op]:
            raise ValueError(f"unknown key {name!r} in {item!r}; known: {sorted(configs[op])}")
        configs[op][name] = type(configs[op][name])(val)


def load_anchors(name: str, directory: str | os.PathLike | None = None) -> dict | None:
    """``kernels`` or ``backbones`` anchors (None when the file is missing). Directory: argument, else
    ``$VRWKV_ANCHORS``, else ``benchmarks/anchors`` of the repository (the copy a wheel installs)."""
    d = Path(directory or os.environ.get("VRWKV_ANCHORS", _ANCHOR_DIR))
    path = d / f"{name}.json"
    if not path.is_file():
        return None
    with open(path) as f:
        return json.load(f)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_fn(fn: Callable[[], object], device: torch.device, iters: int = 20, warmup: int = 3,
            host_calls: Optional[int] = None) -> dict:
    """Median / min / max milliseconds of ``fn()`` (CUDA events on GPU, perf_counter on CPU), and ``host_ms``: the
    median host time of ``host_calls`` calls (default 3 on a GPU, none on CPU, where it is ``ms``) made each on an
    idle device (synchronized before and after, the clock stopped when ``fn`` returns). On a GPU that is the time
    to enqueue ``fn``'s work - a step of up to ~1000 launches does not fill the launch queue - so ``host_ms`` close
    to ``ms`` says the calls are host-bound (or wait on the device inside), well below it that they are GPU-bound."""
    if host_calls is None:
        host_calls = 3 if device.type == "cuda" else 0
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    if device.type == "cuda":
        evs = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(iters)]
        for a, b in evs:
            a.record()
            fn()
            b.record()
        torch.cuda.synchronize(device)
        times = [a.elapsed_time(b) for a, b in evs]
    else:
        for _ in range(iters):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    out = {"ms": statistics.median(times), "ms_min": min(times), "ms_max": max(times), "iters": iters}
    host = []
    for _ in range(host_calls):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        host.append((time.perf_counter() - t0) * 1e3)
        _sync(device)
    if host:
        out["host_ms"] = statistics.median(host)
    return out


def time_graph(fn: Callable[[], object], iters: int = 20, capture_error_mode: str = "global") -> float:
    """Median ms of replaying ``fn`` captured in a CUDA graph (GPU time without Python / launch overhead)."""
    fn()
    warm_on_side_stream(fn, 1)
    graph = capture_graph(fn, torch.cuda.default_generators[torch.cuda.current_device()], capture_error_mode)
    return time_fn(graph.replay, torch.device("cuda"), iters, 2, host_calls=0)["ms"]


# the backbone rows' capture modes, in order: CUDA's strict default, then "relaxed" (CUDA API calls the driver deems
# potentially unsafe during a capture - from any thread - no longer invalidate it; what is captured is the same)
GRAPH_CAPTURE_MODES = ("global", "relaxed")


def graph_fields(timer: Callable[[str], float], modes: Iterable[str] = GRAPH_CAPTURE_MODES) -> dict:
    """A row's CUDA-graph fields from ``timer(capture_error_mode) -> ms``, trying ``modes`` in order until a capture
    succeeds: ``graph_ms`` and ``graph_capture_mode`` (the mode that captured), ``graph_error`` (the first mode's
    failure, also when a later mode captured) and, when more than one mode failed, ``graph_errors`` (mode ->
    message). Round 6's VRWKV-T training step failed its capture in the default mode with no cause named: the
    relaxed mode's number then still reaches the table, and the error says what the strict mode refused."""
    out: dict = {}
    errors: dict = {}
    for mode in modes:
        try:
            out["graph_ms"] = timer(mode)
        except Exception as e:  # a capture failure is reported in the row, the eager numbers stay
            errors[mode] = f"{type(e).__name__}: {e}"[:300]
            continue
        out["graph_capture_mode"] = mode
        break
    if errors:
        out["graph_error"] = next(iter(errors.values()))
    if len(errors) > 1:
        out["graph_errors"] = errors
    return out


def warm_on_side_stream(fn: Callable[[], object], calls: int) -> None:
    """``calls`` calls of ``fn`` on a side stream, then a synchronize: the warm-up ``torch.cuda.graph`` asks for."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(calls):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()


def capture_graph(fn: Callable[[], object], gen: torch.Generator,
                  capture_error_mode: str = "global") -> "torch.cuda.CUDAGraph":
    """``fn`` captured in a new CUDA graph. A capture that fails leaves the CUDA generator ``gen`` mid-capture, after
    which every random op of the process raises "Offset increment outside graph capture" (an H200 run lost all its
    later rows to that): its state from before the capture is put back, then the error raised."""
    clean = gen.clone_state()
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph, capture_error_mode=capture_error_mode):
            fn()
    except Exception:
        gen.graphsafe_set_state(clean)
        raise
    return graph


def time_train_graph(model: torch.nn.Module, x: torch.Tensor, target: torch.Tensor, dtype: torch.dtype, amp: bool,
                     iters: int = 20, capture_error_mode: str = "global") -> float:
    """Median ms of replaying one whole training step (forward, cross-entropy backward, AdamW with ``capturable``)
    captured in a CUDA graph: the step's GPU time without Python / launch overhead (eager 224-px training is
    launch-bound). Gradients are None at capture, so each replay's backward writes them anew (no accumulation);
    the warm-up calls of :func:`time_graph` create AdamW's state before the capture."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, capturable=True)

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=dtype, enabled=amp, cache_enabled=False):
            loss = torch.nn.functional.cross_entropy(model(x), target)
        loss.backward()
        opt.step()

    return time_graph(step, iters, capture_error_mode)


# ----------------------------------------------------------------------------------------------------------- ops
def saved_activation_bytes(fn: Callable[[], object], exclude: Iterable[torch.Tensor] = ()) -> tuple[int, object]:
    """(bytes autograd keeps for the backward while ``fn()`` runs, its result): the distinct storages of the tensors
    the recorded ops save, those of ``exclude`` (e.g. the parameters) not counted. Activation memory of a training
    step, on any device."""
    skip = {t.untyped_storage().data_ptr() for t in exclude}
    kept: dict = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in skip:
            kept[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return sum(kept.values()), out


def _op_inputs(op: str, shape, dtype, device, seed=0):
    g = torch.Generator(device="cpu").manual_seed(seed)
    if op == "v4_biwkv":
        B, T, C = shape
        k = torch.randn(B, T, C, generator=g)
        v = torch.randn(B, T, C, generator=g)
        w = (-5 + 8 * torch.rand(C, generator=g)) / T
        u = torch.randn(C, generator=g) / T
        ins = [w.to(device), u.to(device), k.to(dtype).to(device), v.to(dtype).to(device)]
    else:
        B, T, H, N = shape
        r, k, v = (torch.randn(B, T, H, N, generator=g) for _ in range(3))
        logd = -torch.exp(-6 + 5 * torch.rand(B, T, H, N, generator=g))
        u = torch.randn(H, N, generator=g) * 0.1
        ins = [x.to(dtype).to(device) for x in (r, k, v, logd)] + [u.to(device)]
    return ins


def op_shape(op: str, shape3) -> tuple:
    """The tensor shape timed for ``op`` at ``shape3`` = (B, T, C): v4 (B, T, C), v6 (B, T, C // 64, 64) heads of 64.
    A ValueError unless it is three ints >= 1 and, for v6, C a multiple of 64 (the shape timed is the one asked
    for, never a truncated or empty one)."""
    if (len(shape3) != 3 or not all(isinstance(n, int) and not isinstance(n, bool) for n in shape3)
            or min(shape3) < 1):
        raise ValueError(f"op shapes are B,T,C with each >= 1, got {tuple(shape3)}")
    B, T, C = shape3
    if op == "v4_biwkv":
        return (B, T, C)
    if C % 64:
        raise ValueError(f"v6_biwkv runs heads of 64 channels: C must be a multiple of 64, got {tuple(shape3)}")
    return (B, T, C // 64, 64)


def backbone_batches(device: str | torch.device, resolutions: Iterable[int], batches: dict | None = None) -> dict:
    """Resolution -> batch of the backbone rows: ``batches`` over the device's defaults (CUDA 224: 256, 512: 64,
    1024: 16; CPU 224: 2, else 1); a ValueError naming a resolution that none of them covers."""
    dev = torch.device(device)
    out = {224: 256, 512: 64, 1024: 16} if dev.type == "cuda" else {224: 2, 512: 1, 1024: 1}
    out.update(batches or {})
    missing = [r for r in resolutions if r not in out]
    if missing:
        raise ValueError(f"no batch for resolution(s) {missing}: give one as RES=BATCH (e.g. {missing[0]}=8)")
    return out


def _op_bytes(op: str, shape, dtype) -> tuple[int, int]:
    """(forward, forward+backward) bytes that must move once: each big input read once, each output written once."""
    n = math.prod(shape)
    es = torch.empty((), dtype=dtype).element_size()
    if op == "v4_biwkv":  # fwd: k, v -> y; bwd: k, v, gy -> gk, gv
        return 3 * n * es, 8 * n * es
    return 5 * n * es, 14 * n * es  # fwd: r, k, v, logd -> y; bwd: r, k, v, logd, gy -> 4 grads


def _best_anchor(kern: dict | None, op: str, shape, mode: str) -> tuple[float | None, str | None]:
    """Fastest original kernel (not the naive torch versions) for this op/shape/mode ('fwd' or 'fwd+bwd')."""
    if kern is None:
        return None, None
    best = (None, None)
    for row in kern["rows"]:
        if row["op"] != op or row["mode"] != mode or "ms" not in row or row["impl"].startswith("naive"):
            continue
        rshape = (row["B"], row["T"], row["H"], row["C"] // row["H"]) if op == "v6_biwkv" else (row["B"], row["T"],
                                                                                                 row["C"])
        if tuple(rshape) != tuple(shape):
            continue
        if best[0] is None or row["ms"] < best[0]:
            best = (row["ms"], row["impl"])
    return best


def _op_callable(op: str, mode: str, backend: str, ins: list, grad: bool, wkv_mode: str = "exact", chunks: int = 32):
    from vision_rwkv.ops import bi_wkv, bi_wkv6

    if op == "v4_biwkv":
        f = lambda *a: bi_wkv(*a, mode=wkv_mode, chunks=chunks, backend=backend)  # noqa: E731
    else:
        f = lambda *a: bi_wkv6(*a, backend=backend)  # noqa: E731
    if not grad:
        def run():
            with torch.no_grad():
                return f(*ins)
        return run
    leaves = [x.detach().clone().requires_grad_() for x in ins]
    gy = torch.randn_like(f(*leaves).detach())

    def run():
        torch.autograd.grad(f(*leaves), leaves, gy)
    return run


def bench_ops(device: str = "cuda", dtypes: Iterable[str] = ("fp32", "bf16"), shapes: Iterable | None = None,
              ops: Iterable[str] = ("v4_biwkv", "v6_biwkv"), backends: Iterable[str] | None = None,
              v4_modes: Iterable[str] = ("exact", "original"), iters: int = 20, warmup: int = 3,
              anchors_dir=None, progress: Callable[[dict], None] | None = None) -> list[dict]:
    """Time the operators; one row per (op, mode, backend, dtype, shape, fwd | fwd+bwd)."""
    dev = torch.device(device)
    if backends is None:
        backends = ("triton",) if dev.type == "cuda" else ("reference",)
    kern = load_anchors("kernels", anchors_dir)
    shapes = list(shapes or OP_SHAPES)
    op_shapes = {(op, tuple(s)): op_shape(op, tuple(s)) for op in ops for s in shapes}  # (checked before any timing)
    fla = "v6_biwkv" in ops and "triton" in backends and fla_available()
    rows = []
    for op in ops:
        for shape3 in shapes:
            B, T, C = shape3
            shape = op_shapes[op, tuple(shape3)]
            for wkv_mode in (v4_modes if op == "v4_biwkv" else ("-",)):
                for backend in backends:
                    for dname in dtypes:
                        dtype = DTYPES[dname]
                        fb, fbb = _op_bytes(op, shape, dtype)
                        for mode, grad, nbytes in (("fwd", False, fb), ("fwd+bwd", True, fbb)):
                            row = dict(op=op, wkv_mode=wkv_mode, backend=backend, dtype=dname, B=B, T=T, C=C,
                                       shape=list(shape), mode=mode, device=str(dev))
                            try:
                                ins = _op_inputs(op, shape, dtype, dev)
                                fn = _op_callable(op, mode, backend, ins, grad, wkv_mode=wkv_mode if op == "v4_biwkv"
                                                  else "exact")
                                if dev.type == "cuda":
                                    torch.cuda.reset_peak_memory_stats(dev)
                                row.update(time_fn(fn, dev, iters, warmup))
                                if dev.type == "cuda":
                                    row["peak_mem_GiB"] = torch.cuda.max_memory_allocated(dev) / 2 ** 30
                                    try:
                                        row["graph_ms"] = time_graph(fn, iters)
                                    except Exception as e:  # capture can fail for non-capturable backends
                                        row["graph_error"] = f"{type(e).__name__}: {e}"[:200]
                                row["bytes"] = nbytes
                                row["GBps"] = nbytes / (row["ms"] * 1e-3) / 1e9
                                row["floor_ms"] = nbytes / DRAM_BPS * 1e3
                                row["pct_floor"] = 100.0 * row["floor_ms"] / row["ms"]
                                if "graph_ms" in row:
                                    row["graph_pct_floor"] = 100.0 * row["floor_ms"] / row["graph_ms"]
                                if op == "v6_biwkv" and backend == "triton" and fla:
                                    row.update(_fla_comparison(fn, row, dev, iters, warmup))
                                if wkv_mode != "original":
                                    ams, aimpl = _best_anchor(kern, op, shape, mode)
                                    if ams is not None:
                                        row["anchor_ms"] = ams
                                        row["anchor_impl"] = aimpl
                                        row["speedup_vs_original"] = ams / row["ms"]
                                        if "graph_ms" in row:
                                            row["graph_speedup_vs_original"] = ams / row["graph_ms"]
                            except Exception as e:  # keep going: a failing row is reported, not fatal
                                row["error"] = f"{type(e).__name__}: {e}"[:300]
                            finally:
                                if dev.type == "cuda":
                                    torch.cuda.empty_cache()
                            rows.append(row)
                            if progress:
                                progress(row)
    return rows


def fla_available() -> bool:
    """Whether flash-linear-attention (the v6 WKV's comparison point, ``VRWKV_TRITON_V6=algo=fla``) imports here."""
    from .ops.bi_wkv6.fla_route import fla_chunk_module

    try:
        fla_chunk_module()
    except RuntimeError:
        return False
    return True


def _fla_comparison(fn: Callable[[], object], row: dict, dev: torch.device, iters: int, warmup: int) -> dict:
    """The same v6 call through flash-linear-attention's causal kernels (``algo=fla``, both directions): its ms
    (and graph ms) and our speed-up over it (> 1: ours faster)."""
    from .ops.bi_wkv6 import triton as v6

    saved = dict(v6.CONFIG)
    v6.CONFIG.update(algo="fla", bwd_algo="")
    out: dict = {}
    try:
        out["fla_ms"] = time_fn(fn, dev, iters, warmup)["ms"]
        out["speedup_vs_fla"] = out["fla_ms"] / row["ms"]
        if "graph_ms" in row:
            out["fla_graph_ms"] = time_graph(fn, iters)
            out["graph_speedup_vs_fla"] = out["fla_graph_ms"] / row["graph_ms"]
    except Exception as e:  # (a failing comparison is reported in the row; ours stays)
        out["fla_error"] = f"{type(e).__name__}: {e}"[:200]
    finally:
        v6.CONFIG.clear()
        v6.CONFIG.update(saved)
    return out


# -------------------------------------------------------------------------------------------- GEMM epilogues
# (M, K, N, epilogue): the channel-mix key (C -> 4C, relu^2) and a receptance gate (C -> C, sigmoid * y) of
# VRWKV-T / S / B at 1024x1024, batch 16 (M = 16 x 4096 tokens)
GEMM_SHAPES = [(65536, c, n, epi) for c in (192, 384, 768) for n, epi in ((4 * c, "relu_square"),
                                                                          (c, "sigmoid_mul"))]
# the RWKV-6 LoRA stages at VRWKV6-T / B sizes: x (C) -> 5 x 32 with tanh; 64 -> C with the log decay
GEMM_SHAPES += [(65536, c, 160, "tanh") for c in (192, 768)] + [(65536, 64, c, "decay") for c in (192, 768)]


def _gemm_callable(epi: str, impl: str, backend: str, x, w, y, grad: bool):
    """``impl`` 'fused': the GEMM-epilogue op; 'unfused': F.linear (cuBLAS) + the elementwise op (what the fused
    path runs without VRWKV_FUSED_GEMM)."""
    import torch.nn.functional as F

    from vision_rwkv.ops import fused

    if epi == "relu_square":
        if impl == "fused":
            f = lambda x, w, y: fused.linear_relu_square(x, w, backend=backend)  # noqa: E731
        else:
            f = lambda x, w, y: fused.relu_square(F.linear(x, w), backend=backend, inplace=True)  # noqa: E731
    elif epi == "tanh":  # y unused
        if impl == "fused":
            f = lambda x, w, y: fused.linear_tanh(x, w, backend=backend)  # noqa: E731
        else:
            f = lambda x, w, y: torch.tanh(F.linear(x, w))  # noqa: E731
    elif epi == "decay":  # y holds w0 (N,)
        if impl == "fused":
            f = lambda x, w, y: fused.linear_decay(x, w, y, backend=backend)  # noqa: E731
        else:
            f = lambda x, w, y: fused.decay_logd(y, F.linear(x, w), backend=backend)  # noqa: E731
    elif impl == "fused":
        f = lambda x, w, y: fused.linear_sigmoid_mul(x, w, y, backend=backend)  # noqa: E731
    else:
        f = lambda x, w, y: fused.sigmoid_mul(F.linear(x, w), y, backend=backend)  # noqa: E731
    if not grad:
        def run():
            with torch.no_grad():
                return f(x, w, y)
        return run
    leaves = [t.detach().clone().requires_grad_() for t in (x, w, y) if t is not None]
    args = leaves + [None] * (3 - len(leaves))
    gy = torch.randn_like(f(*args).detach())

    def run():
        torch.autograd.grad(f(*args), leaves, gy)
    return run


def _time_pair_row(row: dict, fn: Callable[[], object], dev: torch.device, iters: int, warmup: int, flops: float,
                   io: Optional[float], base: Optional[float]) -> Optional[float]:
    """Time ``fn`` into ``row`` (ms, CUDA-graph ms, TFLOP/s, % of the memory floor when ``io`` bytes are given) for
    the unfused / fused pairs of the GEMM table: the unfused row returns its ms as the ``base`` of the fused one,
    which gets ``vs_unfused`` = base / ms."""
    row.update(time_fn(fn, dev, iters, warmup))
    if dev.type == "cuda":
        row["graph_ms"] = time_graph(fn, iters)
    row["TFLOPs"] = flops / (row["ms"] * 1e-3) / 1e12
    if io is not None:
        row["pct_floor"] = 100.0 * io / DRAM_BPS * 1e3 / row["ms"]
    if row["impl"] == "unfused":
        return row["ms"]
    if base is not None:
        row["vs_unfused"] = base / row["ms"]
    return base


def bench_gemm_epilogues(device: str = "cuda", dtypes: Iterable[str] = ("bf16",), shapes: Iterable | None = None,
                         iters: int = 20, warmup: int = 3,
                         progress: Callable[[dict], None] | None = None) -> list[dict]:
    """Time the GEMM-epilogue ops against cuBLAS + the elementwise kernel; one row per (epilogue, dtype, shape,
    pass, impl). ``vs_unfused`` = unfused ms / fused ms of the same (epilogue, dtype, shape, pass)."""
    dev = torch.device(device)
    backend = "triton" if dev.type == "cuda" else "reference"
    rows = []
    for dname in dtypes:
        dtype = DTYPES[dname]
        es = torch.empty((), dtype=dtype).element_size()
        for M, K, N, epi in (shapes or GEMM_SHAPES):
            g = torch.Generator().manual_seed(0)
            x = torch.randn(M, K, generator=g).to(dtype).to(dev)
            w = (torch.randn(N, K, generator=g) * K ** -0.5).to(dtype).to(dev)
            y = None
            if epi == "sigmoid_mul":  # the gated tensor
                y = torch.randn(M, N, generator=g).to(dtype).to(dev)
            elif epi == "decay":  # w0, the decay's per-channel offset (the output is fp32)
                y = (torch.randn(N, generator=g) * 0.5 - 1.0).to(dev)
            # the fused forward's compulsory traffic: x, w, the output (+ the gated tensor)
            io = (M * K + N * K) * es + M * N * (4 if epi == "decay" else es) * (1 + (epi == "sigmoid_mul"))
            for mode, grad in (("fwd", False), ("fwd+bwd", True)):
                base = None
                for impl in ("unfused", "fused"):
                    row = dict(epilogue=epi, impl=impl, backend=backend, dtype=dname, M=M, K=K, N=N, mode=mode,
                               device=str(dev))
                    try:
                        fn = _gemm_callable(epi, impl, backend, x, w, y, grad)
                        base = _time_pair_row(row, fn, dev, iters, warmup, 2 * M * K * N * (3 if grad else 1),
                                              None if grad else io, base)
                    except Exception as e:  # a failing row is reported, not fatal
                        row["error"] = f"{type(e).__name__}: {e}"[:300]
                    rows.append(row)
                    if progress:
                        progress(row)
            del x, w, y
            if dev.type == "cuda":
                torch.cuda.empty_cache()
    return rows


# ------------------------------------------------------------------------------------- mixed-operand GEMMs
# (batch, grid rows, grid cols, C, variant): the projections of one token mix at 1024x1024, batch 16, VRWKV-T / S / B
# widths. 'v4x3': the k, v, r lerps + projections; 'v6x5': the five ddlerp interpolations (LoRA offsets) + C -> C
# projections (the decay's C -> 64 one stands in as a fifth C -> C: same operand traffic); 'v6gn': the output
# projection of GroupNorm(y) * silu(gate) (heads of 64); 'mlp': the channel mix's key (relu^2) and value projections
# with the hidden on chip (VRWKV_FUSED_MLP, C <= 256); 'res': the channel mix's receptance GEMM (sigmoid gate on y)
# with the block's residual add + LayerNorm (pre-norm) in its epilogue, against the GEMM + add_norm
MIX_SHAPES = [(16, 64, 64, c, v) for v in ("v4x3", "v6x5", "v6gn") for c in (192, 384, 768)]
MIX_SHAPES += [(16, 64, 64, 192, "mlp")] + [(16, 64, 64, c, "res") for c in (192, 384)]


def _mix_callables(variant: str, backend: str, x, grid, a, ws, h, w2, head_size):
    """(unfused, fused[, fused_each]) inference callables of one token mix's projections: the default path - the
    interpolation pass writing every mixed input (``shift_lerp`` / ``token_shift_mix_lora``) + the projections as
    the models run them (one cuBLAS batched GEMM of the stacked weights, stacked once as eager inference keeps them;
    v6: the first, the decay input's, as its own GEMM) - against
    ``mix_linear_group`` (the mixed inputs never written, x read once per output tile for all projections) and, as
    ``fused_each``, one ``mix_linear`` launch per projection; 'v6gn': the ``group_norm_mul`` pass + cuBLAS against
    ``group_norm_mul_linear``."""
    import torch.nn.functional as F

    from vision_rwkv.ops import fused

    n = len(ws)
    if variant == "res":  # h: the gated tensor y; a[1:]: the residual stream's LayerNorm (weight, bias)
        x_res = x.float()

        def unfused():
            out = fused.mix_linear(x, grid, a[0], ws[0], one_minus=True, act="sigmoid_mul", y=h, backend=backend)
            return fused.add_norm(x_res, out, None, a[1], a[2], 1e-5, False, x.dtype, backend)

        def fused_run():
            spec = fused.ResidualNorm(x_res, None, a[1], a[2], 1e-5, False, x.dtype)
            return fused.mix_linear(x, grid, a[0], ws[0], one_minus=True, act="sigmoid_mul", y=h, backend=backend,
                                    residual=spec)
    elif variant == "mlp":  # ws: the key (4C x C) and value (C x 4C) weights
        def unfused():
            return F.linear(fused.mix_linear(x, grid, a[0], ws[0], one_minus=True, act="relu_square",
                                             backend=backend), ws[1])

        def fused_run():
            return fused.mix_mlp(x, grid, a[0], ws[0], ws[1], one_minus=True, backend=backend)
    elif variant == "v6gn":  # x: the WKV output, h: the gate, a: the GroupNorm affine (weight, bias)
        def unfused():
            gated = fused.group_norm_mul(x, h, x.shape[-1] // head_size, a[0], a[1], 1e-5, "silu", x.dtype, backend)
            return F.linear(gated, ws[0])

        def fused_run():
            return fused.group_norm_mul_linear(x, h, x.shape[-1] // head_size, a[0], a[1], ws[0], 1e-5, "silu",
                                               backend)
    elif variant.startswith("v4"):
        w_stack = torch.stack(ws).transpose(1, 2)

        def unfused():
            mixed = fused.shift_lerp(x, grid, a, None, x.dtype, backend)
            return torch.bmm(mixed.reshape(n, -1, x.shape[-1]), w_stack)

        def fused_run():
            return fused.mix_linear_group(x, grid, a, ws, one_minus=True, backend=backend)

        def fused_each():
            return [fused.mix_linear(x, grid, a[i], ws[i], one_minus=True, backend=backend) for i in range(n)]
        return unfused, fused_run, fused_each
    else:
        rank = w2.shape[1]
        w_stack = torch.stack(ws[1:]).transpose(1, 2)

        def unfused():
            mixed = fused.token_shift_mix_lora(x, grid, a, h, w2, head_size, x.dtype, backend)
            return F.linear(mixed[0], ws[0]), torch.bmm(mixed[1:].reshape(n - 1, -1, x.shape[-1]), w_stack)

        def fused_run():
            return fused.mix_linear_group(x, grid, a, ws, head_size, h, w2, backend=backend)

        def fused_each():
            return [fused.mix_linear(x, grid, a[i], ws[i], head_size, h[..., i * rank:(i + 1) * rank], w2[i],
                                     backend=backend) for i in range(n)]
        return unfused, fused_run, fused_each
    return unfused, fused_run


def bench_mix_gemms(device: str = "cuda", dtypes: Iterable[str] = ("bf16",), shapes: Iterable | None = None,
                    iters: int = 20, warmup: int = 3, progress: Callable[[dict], None] | None = None) -> list[dict]:
    """Time a token mix's projections with their Q-Shift interpolations inside the GEMMs (:func:`fused.mix_linear`)
    against the interpolation pass + cuBLAS, and the RWKV-6 output projection with GroupNorm * gate inside its GEMM
    (:func:`fused.group_norm_mul_linear`) against the pass + cuBLAS, inference forward (the ops of
    ``VRWKV_FUSED_MIX=1``), and the key-value MLP in one kernel (:func:`fused.mix_mlp`, ``VRWKV_FUSED_MLP=1``)
    against the relu^2 GEMM + cuBLAS; rows in the GEMM table's layout (``epilogue`` = ``mix_<variant>`` or ``mlp``,
    M tokens, K = N = C, ``vs_unfused``)."""
    dev = torch.device(device)
    backend = "triton" if dev.type == "cuda" else "reference"
    rows = []
    for dname in dtypes:
        dtype = DTYPES[dname]
        es = torch.empty((), dtype=dtype).element_size()
        for B, H, W, C, variant in (shapes or MIX_SHAPES):
            n = {"v4x3": 3, "v6x5": 5, "v6gn": 1, "mlp": 1, "res": 1}[variant]
            g = torch.Generator(device=dev).manual_seed(0)  # (inputs made on the device: no host-side RNG)
            randn = functools.partial(torch.randn, generator=g, device=dev)
            rand = functools.partial(torch.rand, generator=g, device=dev)
            x = randn(B, H * W, C).to(dtype)
            a = rand(n, C)
            if variant == "mlp":
                ws = [(randn(4 * C, C) * C ** -0.5).to(dtype), (randn(C, 4 * C) * (4 * C) ** -0.5).to(dtype)]
            else:
                ws = [(randn(C, C) * C ** -0.5).to(dtype) for _ in range(n)]
            h = w2 = None
            if variant == "v6x5":
                h = (randn(B, H * W, n * 32) * 0.5).to(dtype)
                w2 = randn(n, 32, C) * 0.1
            elif variant == "v6gn":  # the gate (a full plane) and the GroupNorm affine parameters
                h = randn(B, H * W, C).to(dtype)
                a = torch.stack((rand(C) + 0.5, randn(C) * 0.1))
            elif variant == "res":  # the gated tensor; the mix weights and the LayerNorm affine parameters
                h = randn(B, H * W, C).to(dtype)
                a = torch.stack((rand(C), rand(C) + 0.5, randn(C) * 0.1))
            io = (B * H * W * C * (1 + n) + sum(w.numel() for w in ws)) * es + (h.numel() * es if h is not None else 0)
            base = None
            for impl, fn in zip(("unfused", "fused", "fused_each"),
                                _mix_callables(variant, backend, x, (H, W), a, ws, h, w2, 64)):
                row = dict(epilogue=variant if variant in ("mlp", "res") else f"mix_{variant}", impl=impl,
                           backend=backend,
                           dtype=dname, M=B * H * W, K=C, N=C, mode="fwd", device=str(dev))
                try:
                    def run(fn=fn):
                        with torch.no_grad():
                            return fn()
                    base = _time_pair_row(row, run, dev, iters, warmup, 2 * B * H * W * sum(w.numel() for w in ws),
                                          io, base)
                except Exception as e:  # a failing row is reported, not fatal
                    row["error"] = f"{type(e).__name__}: {e}"[:300]
                rows.append(row)
                if progress:
                    progress(row)
            del x, ws, h, w2
            if dev.type == "cuda":
                torch.cuda.empty_cache()
    return rows


# ----------------------------------------------------------------------------------------------------- backbones
def _anchor_backbone(bb: dict | None, name: str, res: int, dtype: str, batch: int, train: bool) -> float | None:
    if bb is None:
        return None
    rows = bb["train" if train else "inference"]
    cands = [r for r in rows if r.get("model") == name and r.get("dtype") == dtype and "img_per_s" in r
             and r.get("res", 224 if train else None) == res]
    same = [r for r in cands if r.get("batch") == batch]
    pick = same or cands
    return max(r["img_per_s"] for r in pick) if pick else None


def _make_model(name: str, res: int, device, **kw):
    import timm

    import vision_rwkv  # noqa: F401  (registers our models)

    model = timm.create_model(name, pretrained=False, img_size=res, num_classes=1000, **kw)
    return model.to(device)


def _time_per_op(step: Callable[[], object], dev: torch.device, iters: int) -> float:
    """Median ms of the eager ``step`` with the mixers op by op (``VRWKV_FUSED_STEP=0``: in training one autograd node
    per fused op, in inference each op through its wrapper) instead of one step per mixer
    (:func:`vision_rwkv.ops.fused.mixer_steps`): the same kernels, more host work per launch."""
    old = os.environ.get("VRWKV_FUSED_STEP")
    os.environ["VRWKV_FUSED_STEP"] = "0"
    try:
        return time_fn(step, dev, iters, 1, host_calls=0)["ms"]
    finally:
        if old is None:
            os.environ.pop("VRWKV_FUSED_STEP")
        else:
            os.environ["VRWKV_FUSED_STEP"] = old


def _bench_one_backbone(name: str, res: int, batch: int, dtype: str, train: bool, dev: torch.device, iters: int,
                        warmup: int, graph: bool = False) -> dict:
    if dev.type == "cuda":  # what earlier rows left (reference cycles) is not this row's memory
        gc.collect()
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated(dev)
    model = _make_model(name, res, dev)
    params = sum(p.numel() for p in model.parameters()) / 1e6
    x = torch.randn(batch, 3, res, res, device=dev)
    amp = dtype != "fp32"
    adt = DTYPES[dtype]
    if train:
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        target = torch.randint(0, 1000, (batch,), device=dev)

        def step():
            with torch.autocast(dev.type, dtype=adt, enabled=amp):
                loss = torch.nn.functional.cross_entropy(model(x), target)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
    else:
        model.eval()

        def step(cache: bool = True):
            with torch.inference_mode(), torch.autocast(dev.type, dtype=adt, enabled=amp, cache_enabled=cache):
                model.forward_features(x)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    t = time_fn(step, dev, iters, warmup)
    row = dict(params_M=params, **t, img_per_s=batch / (t["ms"] * 1e-3))
    if train:  # the activations the step's forward keeps for its backward
        with torch.autocast(dev.type, dtype=adt, enabled=amp):
            saved, _ = saved_activation_bytes(lambda: model(x), model.parameters())
        model.zero_grad(set_to_none=True)
        row["saved_GiB"] = saved / 2 ** 30
    if dev.type == "cuda":
        row["peak_mem_GiB"] = (torch.cuda.max_memory_allocated(dev) - base) / 2 ** 30
        # (inference only at the host-bound small sizes: at 1024 px the GPU time hides the difference)
        if (train or res <= 256) and not name.startswith(("deit", "vit")):
            row["per_op_img_per_s"] = batch / (_time_per_op(step, dev, iters) * 1e-3)
        if graph:  # autocast's weight-cast cache must be off while a graph is captured
            row.update(graph_fields(lambda mode: time_train_graph(model, x, target, adt, amp, iters, mode) if train
                                    else time_graph(lambda: step(cache=False), iters, mode)))
            if "graph_ms" in row:
                row["graph_img_per_s"] = batch / (row["graph_ms"] * 1e-3)
    return row


def bench_backbones(device: str = "cuda", models: Iterable[str] | None = None, resolutions: Iterable[int] = (224, 512,
                    1024), batches: dict | None = None, dtypes: Iterable[str] = ("fp32", "bf16"), train: bool = True,
                    train_batch: int = 128, iters: int = 20, warmup: int = 3, with_deit: bool = True,
                    anchors_dir=None, progress: Callable[[dict], None] | None = None,
                    graph: bool = False) -> list[dict]:
    """Inference (forward_features) images/s + peak memory per (model, resolution, dtype; ``peak_mem_GiB``: the most
    allocated above what the process held before the row's model was built, on CUDA), DeiT of the same size in
    the same run, and a training step (forward + backward + AdamW) at 224. ``graph``: inference and the training
    step are also timed as CUDA-graph replays (``graph_img_per_s``: GPU time without the Python / launch overhead of
    eager calls; CUDA only)."""
    dev = torch.device(device)
    bb = load_anchors("backbones", anchors_dir)
    resolutions = list(resolutions)
    batches = backbone_batches(dev, resolutions, batches)
    models = list(models or BACKBONES)
    rows = []
    deit_cache: dict = {}

    def run(name, label, res, batch, dtype, is_train):
        key = (name, res, batch, dtype, is_train)
        if key in deit_cache:
            return deit_cache[key]
        row = dict(model=name, label=label, res=res, batch=batch, dtype=dtype, train=is_train, device=str(dev))
        try:
            row.update(_bench_one_backbone(name, res, batch, dtype, is_train, dev, iters, warmup, graph))
        except Exception as e:
            row["error"] = f"{type(e).__name__}: {e}"[:300]
        finally:
            if dev.type == "cuda":
                torch.cuda.empty_cache()
        anchor = _anchor_backbone(bb, label, res, dtype, batch, is_train) if dev.type == "cuda" else None  # (H100)
        if anchor is not None:
            row["anchor_img_per_s"] = anchor
            if "img_per_s" in row:
                row["ratio_vs_original"] = row["img_per_s"] / anchor
        deit_cache[key] = row
        return row

    cases = [(r, batches[r], d, False) for r in resolutions for d in dtypes]
    if train:
        cases += [(224, train_batch, d, True) for d in dtypes]
    for name in models:
        deit, label, deit_label = BACKBONES.get(name, (None, name, None))
        for res, batch, dtype, is_train in cases:
            ours = dict(run(name, label, res, batch, dtype, is_train))
            if with_deit and deit is not None:
                ref = run(deit, deit_label, res, batch, dtype, is_train)
                if "img_per_s" in ref and "img_per_s" in ours:
                    ours["deit"] = deit
                    ours["deit_img_per_s"] = ref["img_per_s"]
                    ours["ratio_vs_deit"] = ours["img_per_s"] / ref["img_per_s"]
                    for key in ("peak_mem_GiB", "saved_GiB", "ms", "host_ms"):
                        if key in ref and key in ours:
                            ours[f"deit_{key}"] = ref[key]
                    if "graph_img_per_s" in ref and "graph_img_per_s" in ours:
                        ours["deit_graph_img_per_s"] = ref["graph_img_per_s"]
                        ours["graph_ratio_vs_deit"] = ours["graph_img_per_s"] / ref["graph_img_per_s"]
                rows.append(ours)
            else:
                rows.append(ours)
            if progress:
                progress(ours)
    if with_deit:
        rows += [dict(r) for k, r in deit_cache.items() if k[0].startswith("deit")]
    return rows


# ----------------------------------------------------------------------------------------------------------- print
def format_table(rows: list[dict], columns: list[tuple[str, str, str]]) -> str:
    """Markdown table; columns = (header, key, format)."""
    head = "| " + " | ".join(h for h, _, _ in columns) + " |"
    sep = "|" + "|".join("---" for _ in columns) + "|"
    lines = [head, sep]
    for r in rows:
        cells = []
        for _, key, fmt in columns:
            val = r.get(key)
            if val is None:
                cells.append("error" if key in ("ms", "img_per_s") and "error" in r else "")
            elif isinstance(val, (int, float)) and fmt:
                cells.append(format(val, fmt))
            else:
                cells.append(str(val))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


OPS_COLUMNS = [("op", "op", ""), ("mode", "wkv_mode", ""), ("backend", "backend", ""), ("dtype", "dtype", ""),
               ("B,T,C", "shape", ""), ("pass", "mode", ""), ("ms", "ms", ".4f"), ("GB/s", "GBps", ".0f"),
               ("% floor", "pct_floor", ".1f"), ("original ms", "anchor_ms", ".4f"),
               ("x original", "speedup_vs_original", ".2f"), ("graph ms", "graph_ms", ".4f"),
               ("graph % floor", "graph_pct_floor", ".1f"), ("graph x original", "graph_speedup_vs_original", ".2f"),
               ("fla ms", "fla_ms", ".4f"), ("x fla", "speedup_vs_fla", ".2f"),
               ("graph x fla", "graph_speedup_vs_fla", ".2f")]
GEMM_COLUMNS = [("epilogue", "epilogue", ""), ("impl", "impl", ""), ("dtype", "dtype", ""), ("M", "M", ""),
                ("K", "K", ""), ("N", "N", ""), ("pass", "mode", ""), ("ms", "ms", ".4f"),
                ("graph ms", "graph_ms", ".4f"), ("TFLOP/s", "TFLOPs", ".0f"), ("% floor (fwd)", "pct_floor", ".1f"),
                ("x unfused", "vs_unfused", ".2f")]
BACKBONE_COLUMNS = [("model", "model", ""), ("res", "res", ""), ("batch", "batch", ""), ("dtype", "dtype", ""),
                    ("train", "train", ""), ("img/s", "img_per_s", ".1f"), ("peak GiB", "peak_mem_GiB", ".2f"),
                    ("DeiT img/s", "deit_img_per_s", ".1f"), ("x DeiT", "ratio_vs_deit", ".2f"),
                    ("DeiT GiB", "deit_peak_mem_GiB", ".2f"), ("saved GiB", "saved_GiB", ".2f"),
                    ("DeiT saved GiB", "deit_saved_GiB", ".2f"), ("original img/s", "anchor_img_per_s", ".1f"),
                    ("x original", "ratio_vs_original", ".2f"), ("graph img/s", "graph_img_per_s", ".1f"),
                    ("graph x DeiT", "graph_ratio_vs_deit", ".2f"), ("per-op img/s", "per_op_img_per_s", ".1f"),
                    ("ms", "ms", ".2f"), ("host ms", "host_ms", ".2f"), ("DeiT ms", "deit_ms", ".2f"),
                    ("DeiT host ms", "deit_host_ms", ".2f")]
