"""Profiling and benchmarking of whole backbones: per-op share-of-time tables and images/s vs timm's DeiT.

* :func:`profile_backbone` - run a model under ``torch.profiler`` and group every device kernel (CPU ops on a CPU
  run) into :data:`GROUPS`: WKV, shift+lerp, GEMMs, attention, norms, casts/copies, elementwise/other. A kernel is
  attributed through the chain of CPU ops that launched it: labels this module adds around the models' token-shift,
  lerp and WKV calls (it patches the names inside ``vision_rwkv.models`` while profiling), then the fused / WKV
  custom ops (``vision_rwkv::*``), then the innermost aten op (``aten::mm`` = GEMM, ``aten::_to_copy`` = cast...),
  then the kernel name.
* :func:`format_profile` - a markdown table of a profile.
* :func:`time_inference` / :func:`time_train_step` - median CUDA-event timings (images/s, ms, peak memory).
* :func:`benchmark_backbones` / :func:`format_benchmark` - our backbones vs DeiT of the same size in one run
  (eager / torch.compile, fp32 / bf16, inference at several resolutions, training step), ratios to DeiT.

Used by ``tools/profile_backbone.py`` and ``tools/benchmark_backbones.py``.
"""
from __future__ import annotations

import contextlib
import functools
import os
import statistics
import time
import warnings
from collections import Counter, defaultdict
from typing import Callable, Dict, Iterator, List, Optional

import torch

__all__ = ["GROUPS", "BACKBONES", "BATCH", "classify", "profile_backbone", "format_profile", "time_inference",
           "train_step", "time_train_step", "label_model_calls", "build_backbone", "benchmark_backbones",
           "format_benchmark"]

GROUPS = ("WKV", "shift+lerp", "GEMMs", "attention", "norms", "casts/copies", "elementwise/other")
LABEL_PREFIX = "vrwkv::"

_GEMM_OPS = {"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::matmul", "aten::linear",
             "aten::convolution", "aten::_convolution", "aten::cudnn_convolution", "aten::conv2d",
             "aten::addmm_", "aten::_addmm_activation", "aten::mkldnn_convolution"}
_COPY_OPS = {"aten::copy_", "aten::_to_copy", "aten::to", "aten::clone", "aten::contiguous", "aten::cat",
             "aten::stack", "aten::_foreach_copy_"}
_NORM_OPS = {"aten::layer_norm", "aten::native_layer_norm", "aten::group_norm", "aten::native_group_norm",
             "aten::native_layer_norm_backward", "aten::native_group_norm_backward"}
# the backward nodes of our autograd Functions (a training step's backward runs no labelled model call and no
# custom op: everything such a node launches - Triton kernels, aten ops - is its op's cost)
_BACKWARD_GROUPS = {
    "_BiWKV": "WKV", "_BiWKV6": "WKV", "_TokenShiftMix": "shift+lerp", "_TokenShiftMixLora": "shift+lerp",
    "_AddNorm": "norms", "_GroupNormMul": "norms", "_SigmoidMul": "elementwise/other",
    "_ReluSquare": "elementwise/other", "_ReluSquareInplace": "elementwise/other", "_DecayLogd": "elementwise/other",
    "_DivPair": "WKV", "_MixLinear": "GEMMs", "_GroupNormMulLinear": "GEMMs", "_MixMLP": "GEMMs",
    "_MixLinearGroup": "GEMMs", "_LinearSigmoidMul": "GEMMs", "_LinearDecay": "GEMMs", "_BatchedLinear": "GEMMs",
    "_CastWeights": "casts/copies"}
_EVALUATE = "autograd::engine::evaluate_function: "


def _backward_group(name: str) -> Optional[str]:
    """Group of one of our autograd Functions' backward nodes (``_BiWKV6Backward``, possibly under the engine's
    ``evaluate_function`` prefix), else None."""
    if name.startswith(_EVALUATE):
        name = name[len(_EVALUATE):]
    stem = name.rstrip("0123456789")
    if not stem.endswith("Backward"):
        return None
    return _BACKWARD_GROUPS.get(stem[:-len("Backward")])


def classify(chain: List[str], kernel: str = "") -> str:
    """Group of a kernel launched under the CPU op names ``chain`` (innermost first), see the module docstring."""
    for name in chain:  # labels added by label_model_calls win (the q_shift copies are shift work, not casts)
        if name.startswith(LABEL_PREFIX):
            return name[len(LABEL_PREFIX):]
    for name in chain:  # custom ops next: everything a fused / WKV op launches is that op's cost
        low = name.lower()
        if low.startswith("vision_rwkv::"):
            low = low[len("vision_rwkv::"):]
            if "wkv" in low:
                return "WKV"
            if "token_shift_mix" in low:
                return "shift+lerp"
            if "linear" in low or "mlp" in low:  # the Triton GEMMs (epilogues, mixed / normalised operands, MLP)
                return "GEMMs"
            if "group_norm" in low:
                return "norms"
            return "elementwise/other"
    for name in chain:  # then the backward nodes of our autograd Functions
        group = _backward_group(name)
        if group is not None:
            return group
    for name in chain:
        if "attention" in name and name.startswith("aten::"):
            return "attention"
        if name in _GEMM_OPS:
            return "GEMMs"
        if name in _NORM_OPS:
            return "norms"
        if name in _COPY_OPS:
            return "casts/copies"
        if name.startswith("aten::") and name not in ("aten::empty", "aten::empty_strided", "aten::view"):
            break  # the innermost real aten op decides
    low = kernel.lower()
    if "_tsm" in low:
        return "shift+lerp"
    if "_add_norm" in low or "_gn_mul" in low:
        return "norms"
    if any(s in low for s in ("gemm", "nvjet", "cutlass", "xmma", "wgmma", "cublas", "sm90_", "conv", "_linear_act",
                              "_mix_linear", "_norm_linear", "_mix_mlp")):
        return "GEMMs"
    if any(s in low for s in ("flash", "fmha", "attention", "attn")):
        return "attention"
    if "norm" in low:
        return "norms"
    if "copy" in low or "memcpy" in low or "memset" in low:
        return "casts/copies"
    return "elementwise/other"


@contextlib.contextmanager
def label_model_calls() -> Iterator[None]:
    """While active, the models' ``q_shift`` / ``bi_shift_1d`` / ``lerp_mix`` calls run inside ``vrwkv::shift+lerp`` and their
    ``bi_wkv`` / ``bi_wkv6`` calls inside ``vrwkv::WKV`` profiler ranges, and the fused ops inside the range of
    their group (shift+lerp; norms for the residual+LayerNorm and GroupNorm*gate kernels; elementwise/other for
    the gates) - module attributes patched, then restored. The mixers run op by op meanwhile (``VRWKV_FUSED_STEP=0``,
    restored after): their one-step form (:func:`vision_rwkv.ops.fused.mixer_steps`) launches the same kernels from
    one call, which no label could split into groups."""
    from vision_rwkv.models import _layers, mixing, vrwkv, vrwkv6

    def wrap(fn: Callable, group: str) -> Callable:
        def labelled(*args, **kwargs):
            with torch.profiler.record_function(LABEL_PREFIX + group):
                return fn(*args, **kwargs)
        return labelled

    from vision_rwkv.ops import fused

    patches = [(mod, name, group) for mod in (_layers, mixing, vrwkv, vrwkv6)
               for name, group in (("q_shift", "shift+lerp"), ("bi_shift_1d", "shift+lerp"),
                                   ("lerp_mix", "shift+lerp"), ("bi_wkv", "WKV"),
                                   ("bi_wkv6", "WKV")) if hasattr(mod, name)]
    patches += [(fused, name, group) for name, group in (
        ("shift_lerp", "shift+lerp"), ("token_shift_mix", "shift+lerp"), ("token_shift_mix_lora", "shift+lerp"),
        ("add_norm", "norms"), ("group_norm_mul", "norms"), ("sigmoid_mul", "elementwise/other"),
        ("relu_square", "elementwise/other"), ("decay_logd", "elementwise/other"))]
    saved = [(mod, name, getattr(mod, name)) for mod, name, _ in patches]
    step_env = os.environ.get("VRWKV_FUSED_STEP")
    try:
        os.environ["VRWKV_FUSED_STEP"] = "0"
        for mod, name, group in patches:
            setattr(mod, name, wrap(getattr(mod, name), group))
        yield
    finally:
        for mod, name, fn in saved:
            setattr(mod, name, fn)
        if step_env is None:
            os.environ.pop("VRWKV_FUSED_STEP", None)
        else:
            os.environ["VRWKV_FUSED_STEP"] = step_env


def _chain(evt) -> List[str]:
    names = []
    while evt is not None:
        names.append(evt.name)
        evt = getattr(evt, "cpu_parent", None)
    return names


def profile_backbone(fn: Callable[[], object], steps: int = 3, warmup: int = 2, device: str = "cuda") -> Dict:
    """Profile ``fn()`` (e.g. a model's forward on a fixed batch) and return the time per group.

    Returns ``{"total_ms": per-step device time, "groups": {group: {"ms", "share"}}, "top": [the 25 most
    expensive kernels with group, ms per step, calls per step]}``. With ``device='cpu'`` the self CPU time of
    every op is used instead of kernels (a smoke-test mode).
    """
    from torch.profiler import ProfilerActivity, profile

    with label_model_calls():
        for _ in range(warmup):
            fn()
        if device == "cuda":
            torch.cuda.synchronize()
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
        with profile(activities=activities) as prof:
            for _ in range(steps):
                fn()
            if device == "cuda":
                torch.cuda.synchronize()
    events = prof.events()
    per_group: Dict[str, float] = defaultdict(float)
    per_kernel: Dict[tuple, List[float]] = defaultdict(lambda: [0.0, 0])
    if device == "cuda":
        attributed: Counter = Counter()
        for evt in events:
            kernels = getattr(evt, "kernels", None) or []
            if not kernels or getattr(evt, "device_type", None) != torch.autograd.DeviceType.CPU:
                continue
            chain = _chain(evt)
            for k in kernels:
                group = classify(chain, k.name)
                per_group[group] += k.duration
                per_kernel[(k.name, group)][0] += k.duration
                per_kernel[(k.name, group)][1] += 1
                attributed[(k.name, round(k.duration, 3))] += 1
        # device kernels no CPU op claimed (a launch path the profiler did not correlate): classify by name
        for evt in events:
            if getattr(evt, "device_type", None) != torch.autograd.DeviceType.CUDA or \
                    getattr(evt, "is_user_annotation", False):
                continue
            dur = evt.time_range.end - evt.time_range.start
            key = (evt.name, round(dur, 3))
            if attributed[key] > 0:
                attributed[key] -= 1
                continue
            group = classify([], evt.name)
            per_group[group] += dur
            per_kernel[(evt.name, group)][0] += dur
            per_kernel[(evt.name, group)][1] += 1
    else:
        for evt in events:  # self times partition the total
            chain = _chain(evt)
            if chain[0].startswith(LABEL_PREFIX) or getattr(evt, "device_type", None) != \
                    torch.autograd.DeviceType.CPU:
                continue
            dur = evt.self_cpu_time_total
            group = classify(chain, evt.name)
            per_group[group] += dur
            per_kernel[(evt.name, group)][0] += dur
            per_kernel[(evt.name, group)][1] += 1
    total = sum(per_group.values())
    groups = {g: {"ms": per_group.get(g, 0.0) / 1000 / steps,
                  "share": per_group.get(g, 0.0) / total if total else 0.0} for g in GROUPS}
    top = sorted(per_kernel.items(), key=lambda kv: -kv[1][0])[:25]
    return {
        "total_ms": total / 1000 / steps,
        "groups": groups,
        "top": [{"kernel": name[:120], "group": group, "ms": t / 1000 / steps, "calls": n / steps}
                for (name, group), (t, n) in top],
    }


def format_profile(results: Dict[str, Dict]) -> str:
    """Markdown table: one column per profiled configuration, one row per group (share of device time, ms)."""
    names = list(results)
    lines = ["| group | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for g in GROUPS:
        cells = [f"{results[n]['groups'][g]['share'] * 100:.1f}% ({results[n]['groups'][g]['ms']:.2f} ms)"
                 for n in names]
        lines.append(f"| {g} | " + " | ".join(cells) + " |")
    lines.append("| **total** | " + " | ".join(f"{results[n]['total_ms']:.2f} ms" for n in names) + " |")
    return "\n".join(lines)


def _cuda_times(step: Callable[[], object], iters: int) -> List[float]:
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        step()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return times


def _adaptive_iters(step: Callable[[], object], target_s: float, max_iters: int) -> int:
    t0 = time.perf_counter()
    step()
    torch.cuda.synchronize()
    one = time.perf_counter() - t0
    return int(max(3, min(max_iters, target_s / max(one, 1e-6))))


def time_inference(fn: Callable[[torch.Tensor], object], x: torch.Tensor, dtype: Optional[torch.dtype],
                   warmup: int = 2, target_s: float = 0.6, max_iters: int = 25, graph: bool = False) -> Dict:
    """Median CUDA-event time of ``fn(x)`` under ``torch.inference_mode`` (and bf16/fp16 autocast when ``dtype``).

    ``graph=True`` captures one call in a CUDA graph and times its replays (no host launch overhead; autocast's
    weight cache off, as graph capture requires). Returns ``{"ms", "img_per_s", "peak_mem_GiB", "iters"}``; peak
    memory is the allocator peak during the timed calls (weights included).
    """
    def step():
        with torch.autocast("cuda", dtype=dtype or torch.float32, enabled=dtype is not None,
                            cache_enabled=not graph):
            return fn(x)

    with torch.inference_mode():
        if graph:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(warmup):
                    step()
            torch.cuda.current_stream().wait_stream(side)
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            cuda_graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(cuda_graph):
                step()
            step = cuda_graph.replay  # noqa: F811
        for _ in range(warmup):
            step()
        torch.cuda.synchronize()
        iters = _adaptive_iters(step, target_s, max_iters)
        if not graph:  # a graph's memory is allocated at capture (counted from there)
            torch.cuda.reset_peak_memory_stats()
        times = _cuda_times(step, iters)
    ms = statistics.median(times)
    return {"ms": ms, "img_per_s": x.shape[0] / ms * 1000, "peak_mem_GiB": torch.cuda.max_memory_allocated() / 2 ** 30,
            "iters": iters}


def train_step(model: torch.nn.Module, x: torch.Tensor, target: torch.Tensor, dtype: Optional[torch.dtype],
               forward: Optional[Callable] = None) -> Callable[[], None]:
    """One training step as a closure on ``x``'s device: ``model`` (or ``forward``) in train mode, cross-entropy
    backward under bf16/fp16 autocast when ``dtype``, an AdamW step (fused on CUDA), gradients set to None."""
    forward = forward or model
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=x.is_cuda)
    model.train()
    dev = x.device.type

    def step():
        with torch.autocast(dev, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = torch.nn.functional.cross_entropy(forward(x).float(), target)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def time_train_step(model: torch.nn.Module, x: torch.Tensor, target: torch.Tensor, dtype: Optional[torch.dtype],
                    forward: Optional[Callable] = None, warmup: int = 2, target_s: float = 0.6,
                    max_iters: int = 20) -> Dict:
    """Median time of one forward + cross-entropy backward + AdamW step (bf16/fp16 autocast when ``dtype``)."""
    step = train_step(model, x, target, dtype, forward)
    for _ in range(warmup):
        step()
    torch.cuda.synchronize()
    iters = _adaptive_iters(step, target_s, max_iters)
    torch.cuda.reset_peak_memory_stats()
    times = _cuda_times(step, iters)
    ms = statistics.median(times)
    return {"ms": ms, "img_per_s": x.shape[0] / ms * 1000, "peak_mem_GiB": torch.cuda.max_memory_allocated() / 2 ** 30,
            "iters": iters}


# ---------------------------------------------------------------------------------------------- backbone benchmark
BACKBONES = {
    "VRWKV-T": "vrwkv_tiny_patch16_224", "VRWKV-S": "vrwkv_small_patch16_224", "VRWKV-B": "vrwkv_base_patch16_224",
    "VRWKV6-T": "vrwkv6_tiny_patch16_224", "VRWKV6-S": "vrwkv6_small_patch16_224",
    "VRWKV6-B": "vrwkv6_base_patch16_224",
    "DeiT-T": "deit_tiny_patch16_224", "DeiT-S": "deit_small_patch16_224", "DeiT-B": "deit_base_patch16_224",
}
BATCH = {224: 256, 512: 128, 1024: 64, 2048: 8}
_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def deit_of(label: str) -> str:
    """The DeiT of the same size as a VRWKV label ('VRWKV6-S' -> 'DeiT-S')."""
    return "DeiT-" + label.split("-")[-1]


def build_backbone(label: str, img_size: int, num_classes: int = 0, device: str = "cuda") -> torch.nn.Module:
    """A model of :data:`BACKBONES` built for ``img_size`` (position embedding at that grid, random init)."""
    import timm

    import vision_rwkv  # noqa: F401  (registers the models)

    with torch.device(device):  # parameters created and initialised on the device (fast for the large models)
        return timm.create_model(BACKBONES[label], img_size=img_size, num_classes=num_classes)


def benchmark_backbones(configs: List[Dict], deadline_s: float = float("inf"),
                        on_result: Optional[Callable[[Dict], None]] = None) -> List[Dict]:
    """Run benchmark ``configs`` in order until ``deadline_s`` (seconds from now) passes.

    A config: ``{"model": label, "res": int, "dtype": "fp32"|"bf16", "mode": "eager"|"compile"|"eager-unfused"|
    "compile-plain", "kind": "inference"|"train", "batch": optional}``. "eager-unfused" sets ``VRWKV_FUSED=0``
    (the models' plain path with the Triton WKV); "eager-graph" times CUDA-graph replays of the eager forward (no
    host launch overhead); "compile-plain" compiles the plain elementwise code (inductor
    generates the fusions; the WKV stays a custom op) instead of the fused custom ops. Results carry the config, ``img_per_s``, ``ms``, ``peak_mem_GiB`` or ``error``;
    configs left when the deadline passes are returned with ``skipped``.
    """
    import gc
    import os

    start = time.perf_counter()
    out = []
    for cfg in configs:
        res = dict(cfg)
        res.setdefault("batch", BATCH[cfg["res"]] if cfg.get("kind", "inference") == "inference" else 128)
        if time.perf_counter() - start > deadline_s:
            res["skipped"] = "deadline"
            out.append(res)
            continue
        old = os.environ.get("VRWKV_FUSED")
        if cfg.get("mode") == "eager-unfused":
            os.environ["VRWKV_FUSED"] = "0"
        from vision_rwkv.ops import fused
        old_under_compile = fused.FUSED_UNDER_COMPILE
        fused.FUSED_UNDER_COMPILE = cfg.get("mode") != "compile-plain"
        try:
            torch.manual_seed(0)
            train = cfg.get("kind", "inference") == "train"
            model = build_backbone(cfg["model"], cfg["res"], num_classes=1000 if train else 0)
            x = torch.randn(res["batch"], 3, cfg["res"], cfg["res"], device="cuda")
            dtype = _DTYPES[cfg["dtype"]]
            t0 = time.perf_counter()
            if train:
                fwd = torch.compile(model, fullgraph=True) if cfg.get("mode", "").startswith("compile") else model
                target = torch.randint(0, 1000, (res["batch"],), device="cuda")
                res.update(time_train_step(model, x, target, dtype, forward=fwd))
            else:
                model.eval()
                fwd = model.forward_features
                if cfg.get("mode", "").startswith("compile"):
                    torch._dynamo.reset()
                    fwd = torch.compile(fwd, fullgraph=True)
                res.update(time_inference(fwd, x, dtype, graph=cfg.get("mode") == "eager-graph"))
            res["wall_s"] = time.perf_counter() - t0
            res["params_M"] = sum(p.numel() for p in model.parameters()) / 1e6
        except Exception as e:  # recorded, the run goes on
            res["error"] = f"{type(e).__name__}: {str(e)[:500]}"
        finally:
            fused.FUSED_UNDER_COMPILE = old_under_compile
            if old is None:
                os.environ.pop("VRWKV_FUSED", None)
            else:
                os.environ["VRWKV_FUSED"] = old
            model = fwd = x = None
            gc.collect()
            torch.cuda.empty_cache()
        out.append(res)
        if on_result is not None:
            on_result(res)
    return out


@functools.lru_cache(maxsize=None)
def forward_macs(label: str, res: int) -> int:
    """MACs of one image's ``forward_features`` of the :data:`BACKBONES` model ``label`` at ``res`` px
    (:func:`vision_rwkv.complexity.count_complexity`)."""
    from .complexity import count_complexity
    return count_complexity(BACKBONES[label], res).total


def achieved_tflops(row: Dict) -> Optional[float]:
    """The arithmetic rate a benchmark row's images/s mean: 2 FLOPs a MAC of the forward, x3 for a training step
    (forward + both backward products), in TFLOP/s; None for a row without images/s or of another model."""
    if "img_per_s" not in row or row["model"] not in BACKBONES:
        return None
    passes = 3 if row.get("kind") == "train" else 1
    try:
        macs = forward_macs(row["model"], int(row["res"]))
    except Exception as err:  # (a display column: a device run's table must not be lost to it)
        warnings.warn(f"no MAC count for {row['model']} at {row['res']} px: {type(err).__name__}: {err}")
        return None
    return row["img_per_s"] * 2 * passes * macs / 1e12


def format_benchmark(results: List[Dict], anchors: Optional[Dict] = None) -> str:
    """Markdown tables: images/s and peak memory per (kind, mode, dtype, res), ratio to the same-size DeiT of the
    same run and mode, the original implementation's images/s from ``anchors`` (backbones.json) when given, and
    both models' arithmetic rates (:func:`achieved_tflops`)."""
    ok = {(r["model"], r.get("kind", "inference"), r.get("mode", "eager"), r["dtype"], r["res"]): r
          for r in results if "img_per_s" in r}
    anchor = {}
    for kind in ("inference", "train"):
        for a in (anchors or {}).get(kind, []):
            if "img_per_s" in a:
                anchor[(a["model"], kind, a["dtype"], a["res"])] = a["img_per_s"]
    lines = ["| kind | mode | dtype | res | model | batch | img/s | peak GiB | DeiT img/s | x DeiT | DeiT GiB | "
             "original img/s | TFLOP/s | DeiT TFLOP/s |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        key = (r["model"], r.get("kind", "inference"), r.get("mode", "eager"), r["dtype"], r["res"])
        if r["model"].startswith("DeiT"):
            continue
        if "img_per_s" not in r:
            why = r.get("error") or r.get("skipped") or "?"
            lines.append(f"| {key[1]} | {key[2]} | {key[3]} | {key[4]} | {key[0]} | {r.get('batch')} | "
                         f"{why[:60]} | | | | | | | |")
            continue
        mode = {"eager-unfused": "eager", "compile-plain": "compile"}.get(key[2], key[2])  # DeiT has no plain path
        d = ok.get((deit_of(r["model"]), key[1], mode, key[3], key[4]))
        orig = anchor.get((r["model"], key[1], key[3], key[4]))
        deit_cells = (f"{d['img_per_s']:.0f} | {r['img_per_s'] / d['img_per_s']:.2f} | {d['peak_mem_GiB']:.2f}"
                      if d else "- | - | -")
        rates = [achieved_tflops(row) if row else None for row in (r, d)]
        rate_cells = " | ".join("-" if v is None else f"{v:.0f}" for v in rates)
        lines.append(f"| {key[1]} | {key[2]} | {key[3]} | {key[4]} | {key[0]} | {r['batch']} | "
                     f"{r['img_per_s']:.0f} | {r['peak_mem_GiB']:.2f} | {deit_cells} | "
                     f"{f'{orig:.0f}' if orig else '-'} | {rate_cells} |")
    return "\n".join(lines)
