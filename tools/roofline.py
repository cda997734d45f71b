#!/usr/bin/env python3
"""Roofline floor of one inference forward (or one training step) at a real size, computed on CPU (no GPU needed).

The fused GPU path of a model runs on CPU tensors of the real shape with every device launch stubbed out (Triton
kernels in interpreter mode, ``F.linear`` and ``F.scaled_dot_product_attention`` replaced by recording stubs, the
remaining aten ops run by PyTorch under a dispatch mode that records them). Each launch gets the bytes of its tensor
operands (each distinct tensor read or written once; GEMM operands in the compute dtype) and, for matrix products
(GEMMs, the GEMM-epilogue kernels, attention), its FLOPs; a stubbed ``F.linear`` also gets the casts autocast would
launch for its operands not in the compute dtype (fp32 weights, an fp32 input; in training their gradients' casts
back). Its floor is ``max(bytes / bandwidth, FLOPs / matrix rate)``; summed over the launches this is a lower bound on the GPU time of that sequence of kernels, as long as the
tensors do not fit in L2 (use a batch whose activation planes are well above 50 MB: 1024 px, batch 64). The
WKV / elementwise kernels' arithmetic is not counted (their FLOPs are small next to their bytes at these shapes).

The table compares the floor with the issue-3 target (``TARGETS``: 2x the images/s DeiT of the same size reached
in the anchors, ``benchmarks/anchors/backbones.json``, H100, bf16, at 1024 px; 0.5x at 224; 0.7x for a training
step at 224), and shows DeiT's own floor by the same method. ``--train``: forward + backward (stubbed GEMM
backward: d x and d W; flash attention's backward: 2.5x its forward FLOPs) + one fused AdamW step (28 bytes per
parameter). The last column estimates the peak memory of the same run (live tensor bytes, see :class:`LiveBytes`;
parameters and the input included, autocast's cached weight casts too, AdamW's moments in training): the 1024
target also asks for less memory than DeiT.

    python tools/roofline.py                                          # VRWKV-T, VRWKV6-T vs DeiT-T, 1024 px, batch 64
    python tools/roofline.py --model vrwkv_small_patch16_224 --res 1024 --batch 64 --out roofline.json
    VRWKV_FUSED_GEMM=1 python tools/roofline.py                       # with the GEMM-epilogue kernels
    python tools/roofline.py --train --res 224 --batch 128            # a training step, against 0.7x DeiT
    python tools/roofline.py --train --res 224 --batch 8 --holders 12  # who holds the memory at the peak
"""
from __future__ import annotations

import argparse
import collections
import inspect
import json
import sys
import weakref
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchmark_host import ALLOC_OPS, VIEW_OPS, _Stubs  # noqa: E402  (sets TRITON_INTERPRET=1 before triton is imported)

import timm  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402
from torch.utils._pytree import tree_flatten  # noqa: E402

import vision_rwkv  # noqa: E402,F401
from vision_rwkv import benchmark as bm  # noqa: E402
from vision_rwkv.profiling import GROUPS, classify  # noqa: E402

MODELS = ["vrwkv_tiny_patch16_224", "vrwkv6_tiny_patch16_224"]
BANDWIDTH = 3.0e12  # bytes/s: a device-to-device copy on the H100 of the device pool (KINDS.md), as the anchors use
MATRIX_RATE = {"bf16": 800e12, "fp16": 800e12, "fp32": 67e12}  # FLOP/s: measured bf16 GEMM; fp32 without TF32
# Triton GEMM kernels: FLOPs per M x N x K, the three arguments that follow the kernel's parameter ``M`` (the fused
# MLP: two products of M x C x HID)
_GEMM_KERNEL_FLOPS = {"_linear_act_kernel": 2, "_mix_linear_kernel": 2, "_norm_linear_kernel": 2, "_mix_mlp_kernel": 4}
_MATMUL_OPS = {"aten.mm", "aten.addmm", "aten.bmm", "aten.baddbmm", "aten.convolution"}
# Triton kernels that may write an input in place (input argument, output argument): the same tensor passed as both
# is read and written, where distinct tensors passed twice are dummy pointers of unused arguments (counted once)
_INPLACE_ARGS = {"_add_norm_fwd_kernel": ("X", "S")}


def _tensors(tree) -> list[torch.Tensor]:
    return [t for t in tree_flatten(tree)[0] if isinstance(t, torch.Tensor)]


def _unique_bytes(tensors, itemsize=None) -> int:
    """Bytes of the distinct tensors (by storage address and shape; ``itemsize`` overrides the dtype's size)."""
    seen, total = set(), 0
    for t in tensors:
        key = (t.data_ptr(), tuple(t.shape), t.dtype)
        if key not in seen and t.numel():
            seen.add(key)
            total += t.numel() * (itemsize or t.element_size())
    return total


_SITE_SKIP = ("/tools/", "_triton_utils.py", "/torch/", "/triton/")


def _call_site(depth: int = 2) -> str:
    """The ``depth`` innermost functions of the model / operator code on the current stack, innermost first, methods
    with their class and the innermost with its line (``ChannelMix._forward_fused:286 < ChannelMix.forward``): who
    allocated a tensor. Frames of this tool, torch and triton are skipped."""
    names, frame = [], sys._getframe(1)
    while frame is not None and len(names) < depth:
        path = frame.f_code.co_filename.replace("\\", "/")
        if ("/vision_rwkv/" in path or "/timm/" in path or "/clip/" in path) and not any(
                skip in path for skip in _SITE_SKIP):
            name = frame.f_code.co_qualname.replace(".<locals>", "")  # (not f_locals: it would keep the locals alive)
            names.append(f"{name}:{frame.f_lineno}" if not names else name)
        frame = frame.f_back
    return " < ".join(names) or NO_PYTHON_FRAME


NO_PYTHON_FRAME = "no model frame (the autograd engine: parameter gradients, ...)"


def _triton_group(fn) -> str:
    mod, name = fn.__module__, fn.__name__
    if ".bi_wkv" in mod:
        return "WKV"
    if "_tsm" in name:
        return "shift+lerp"
    if "_linear" in name or "_mlp" in name:
        return "GEMMs"
    if "_add_norm" in name or "_gn_" in name:
        return "norms"
    return "elementwise/other"


def _matmul_flops(op: str, args, out) -> float:
    if op == "aten.convolution":  # 2 x outputs x (in channels / groups x kernel area)
        return 2.0 * out.numel() * args[1][0].numel()
    a, b = (args[1], args[2]) if op in ("aten.addmm", "aten.baddbmm") else (args[0], args[1])
    return 2.0 * a.numel() * b.shape[-1]


class LiveBytes:
    """Bytes held by live tensors (per storage) and their peak: an estimate of what the CUDA caching allocator's
    ``max_memory_allocated`` reports for the same allocations (without its block rounding). A storage first seen as
    the output of a non-view op is an allocation; it is released when the last tensor seen on it dies. Storages that
    exist before (parameters, the input) are the ``base``; :meth:`hold` adds bytes kept to the end (autocast's
    cached weight casts). ``peak_holders`` says who held the bytes at the peak: each allocation is labelled with
    the innermost model / operator functions that made it (:func:`_call_site`)."""

    BASE, HELD = "parameters, buffers, input (+ AdamW moments)", "autocast's cached weight casts"

    def __init__(self, base: int, known_ptrs=()):
        self.live = self.peak = base
        self._known = set(known_ptrs)
        self._storages = {}  # data_ptr -> [tensors seen alive, nbytes, label]
        self._held = 0
        self._base = base
        self.peak_holders: dict = {self.BASE: base}

    def hold(self, nbytes: int) -> None:
        """Bytes kept to the end of the run (autocast's cached weight casts)."""
        self._held += nbytes
        self._grow(nbytes)

    def _grow(self, nbytes: int) -> None:
        self.live += nbytes
        if self.live > self.peak:
            self.peak = self.live
            self._snapshot()

    def _snapshot(self) -> None:
        holders = collections.Counter({self.BASE: self._base})
        if self._held:
            holders[self.HELD] = self._held
        for _, nbytes, label in self._storages.values():
            holders[label] += nbytes
        self.peak_holders = dict(holders)

    def track(self, t: torch.Tensor, allocates: bool) -> None:
        storage = t.untyped_storage()
        ptr, nbytes = storage.data_ptr(), storage.nbytes()
        if not nbytes or ptr in self._known:
            return
        entry = self._storages.get(ptr)
        if entry is None:
            if not allocates:  # a view of a storage allocated outside (e.g. of a parameter): not new memory
                return
            entry = self._storages[ptr] = [0, nbytes, _call_site()]
            self._grow(nbytes)
        entry[0] += 1
        weakref.finalize(t, self._release, ptr)

    def _release(self, ptr: int) -> None:
        entry = self._storages[ptr]
        entry[0] -= 1
        if not entry[0]:
            del self._storages[ptr]
            self.live -= entry[1]


class LaunchLog(TorchDispatchMode):
    """Records (group, name, bytes, FLOPs) per launch: aten ops through the dispatch mode, stubbed Triton kernels,
    GEMMs and attention through :meth:`record`; with ``memory`` (a :class:`LiveBytes`) also the live bytes of every
    op's outputs."""

    def __init__(self, compute_itemsize: int, memory: LiveBytes | None = None):
        super().__init__()
        self.rows = []
        self.itemsize = compute_itemsize
        self.memory = memory
        self._cached_casts = set()

    def add(self, group: str, name: str, nbytes: float, flops: float = 0.0) -> None:
        self.rows.append((group, name, float(nbytes), float(flops)))

    def _autocast_cast(self, t: torch.Tensor, dtype: torch.dtype) -> None:
        """The cast autocast does for a stubbed ``F.linear`` operand (or its gradient) not in the compute dtype."""
        if t is not None and t.dtype != dtype and t.is_floating_point():
            self.add("casts/copies", "autocast_cast",
                     t.numel() * (t.element_size() + dtype.itemsize))

    def record(self, kind, fn, args, out) -> None:
        if kind == "linear_bwd":  # d x = g @ W and d W = g^T @ x (compute dtype), and a bias gradient's reduction
            g, x, weight, gb = args
            flops = 2.0 * g.numel() * weight.shape[1]
            self.add("GEMMs", "linear_bwd", _unique_bytes([g, weight, out[0]], self.itemsize), flops)
            self.add("GEMMs", "linear_bwd", _unique_bytes([g, x, out[1]], self.itemsize), flops)
            if gb is not None:
                self.add("elementwise/other", "bias_grad", _unique_bytes([g, gb]))
            for grad in out:  # gradients of fp32 operands come back through autocast's casts
                self._autocast_cast(grad, g.dtype)
            return
        if kind == "triton":
            flops = 0.0
            if fn.__name__ in _GEMM_KERNEL_FLOPS:
                params = list(inspect.signature(fn).parameters)
                at = params.index("M")
                flops = float(_GEMM_KERNEL_FLOPS[fn.__name__]) * args[at] * args[at + 1] * args[at + 2]
                if "P" in params:  # projections per launch (mix_linear_group)
                    flops *= args[params.index("P")]
            nbytes = _unique_bytes(_tensors(args))
            if fn.__name__ in _INPLACE_ARGS:
                params = list(inspect.signature(fn).parameters)
                src, dst = (args[params.index(name)] for name in _INPLACE_ARGS[fn.__name__])
                if src.data_ptr() == dst.data_ptr():
                    nbytes += src.numel() * src.element_size()
            self.add(_triton_group(fn), fn.__name__, nbytes, flops)
        else:  # linear: x, weight (and bias) in the compute dtype, the output; autocast's casts of the operands
            # ('linear_grad': one GEMM a backward makes itself - a one-node mixer's d x or d W - counted as linear_bwd)
            x, weight, bias = args
            for t in args:
                self._autocast_cast(t, out.dtype)
            for t in (weight, bias):  # autocast keeps the cast of an fp32 leaf parameter until its context exits
                if (self.memory is not None and t is not None and t.dtype != out.dtype and t.requires_grad
                        and t.is_leaf and id(t) not in self._cached_casts):
                    self._cached_casts.add(id(t))
                    self.memory.hold(t.numel() * out.dtype.itemsize)
            self.add("GEMMs", "linear_bwd" if kind == "linear_grad" else "linear",
                     _unique_bytes([x, weight, out] + ([bias] if bias is not None else []), self.itemsize),
                     2.0 * x.numel() * weight.shape[0])

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        op = str(func.overloadpacket)
        if self.memory is not None:
            for t in _tensors(out):
                self.memory.track(t, allocates=op not in VIEW_OPS or op in ALLOC_OPS)
        if op not in VIEW_OPS:
            flops = _matmul_flops(op, args, out) if op in _MATMUL_OPS else 0.0
            self.add(classify(["aten::" + op[len("aten."):]]), op, _unique_bytes(_tensors((args, kwargs, out))),
                     flops)
        return out


class _AttentionStub(torch.autograd.Function):
    """Flash attention in training: the forward's record, and a backward that reads q, k, v, out, d out and writes
    d q, d k, d v with 2.5x the forward's FLOPs (QK^T recomputed, then d V, d P, d Q, d K)."""

    @staticmethod
    def forward(ctx, log, flops, q, k, v):
        out = q.new_empty(q.shape)
        log.add("attention", "scaled_dot_product_attention", _unique_bytes([q, k, v, out]), flops)
        ctx.log, ctx.flops = log, flops
        ctx.save_for_backward(q, k, v, out)
        return out

    @staticmethod
    def backward(ctx, g):
        q, k, v, out = ctx.saved_tensors
        grads = [t.new_empty(t.shape) for t in (q, k, v)]
        ctx.log.add("attention", "scaled_dot_product_attention_bwd", _unique_bytes([q, k, v, out, g, *grads]),
                    2.5 * ctx.flops)
        return (None, None, *grads)


def _sdpa_stub(log: LaunchLog):
    """Flash attention's compulsory traffic (q, k, v, out once) and FLOPs (QK^T and PV), no T x T matrix."""
    def sdpa(q, k, v, *args, **kwargs):
        flops = 4.0 * q.shape[:-2].numel() * q.shape[-2] * k.shape[-2] * q.shape[-1]
        if torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)):
            return _AttentionStub.apply(log, flops, q, k, v)
        out = q.new_empty(q.shape)
        log.add("attention", "scaled_dot_product_attention", _unique_bytes([q, k, v, out]), flops)
        return out
    return sdpa


# issue 3's targets: images/s as a multiple of DeiT of the same size, bf16 autocast, by (resolution, training)
TARGETS = {(1024, False): 2.0, (224, False): 0.5, (224, True): 0.7}
ADAMW_BYTES_PER_PARAM = 28  # one fused AdamW step in fp32: read p, grad, m, v; write p, m, v


def measure(name: str, res: int, batch: int, dtype: str, bandwidth: float, train: bool = False) -> dict:
    """Launch list and roofline floor of ``forward_features`` of ``name`` at ``res`` x ``res``, ``batch`` images;
    ``train``: one training step instead (train mode, forward + backward of the features' mean, then one fused AdamW
    step over the parameters, counted as ``ADAMW_BYTES_PER_PARAM`` bytes each)."""
    adt = bm.DTYPES[dtype]
    rate = MATRIX_RATE[dtype]
    model = timm.create_model(name, img_size=res, num_classes=0).train(train)
    x = torch.randn(batch, 3, res, res)
    state = [*model.parameters(), *model.buffers(), x]
    base = sum(t.untyped_storage().nbytes() for t in state)
    if train:  # AdamW's two fp32 moments exist from the first step on
        base += 8 * sum(p.numel() for p in model.parameters())
    memory = LiveBytes(base, (t.untyped_storage().data_ptr() for t in state))
    log = LaunchLog(torch.empty((), dtype=adt).element_size(), memory)
    saved = F.scaled_dot_product_attention
    F.scaled_dot_product_attention = _sdpa_stub(log)
    try:
        with torch.set_grad_enabled(train), _Stubs(record=log.record):
            with log:
                with torch.autocast("cpu", dtype=adt, enabled=dtype != "fp32"):
                    feats = model.forward_features(x)
                if train:
                    feats.float().mean().backward()
    finally:
        F.scaled_dot_product_attention = saved
    if train:
        log.add("elementwise/other", "adamw", ADAMW_BYTES_PER_PARAM * sum(p.numel() for p in model.parameters()))
    groups = collections.defaultdict(lambda: dict(launches=0, GB=0.0, GFLOP=0.0, floor_ms=0.0))
    for group, _, nbytes, flops in log.rows:
        g = groups[group]
        g["launches"] += 1
        g["GB"] += nbytes / 1e9
        g["GFLOP"] += flops / 1e9
        g["floor_ms"] += max(nbytes / bandwidth, flops / rate) * 1e3
    floor = sum(g["floor_ms"] for g in groups.values())
    by_name = collections.defaultdict(lambda: [0, 0.0])
    for group, op, nbytes, flops in log.rows:
        by_name[(group, op)][0] += 1
        by_name[(group, op)][1] += max(nbytes / bandwidth, flops / rate) * 1e3
    top = sorted(by_name.items(), key=lambda kv: -kv[1][1])
    row = dict(model=name, res=res, batch=batch, dtype=dtype, train=train, launches=len(log.rows),
               top=[dict(group=g, op=op, launches=n, floor_ms=ms) for (g, op), (n, ms) in top],
               GB=sum(g["GB"] for g in groups.values()), GFLOP=sum(g["GFLOP"] for g in groups.values()),
               floor_ms=floor, floor_img_per_s=batch / (floor * 1e-3), peak_GiB_est=memory.peak / 2 ** 30,
               peak_holders=[dict(site=k, GiB=v / 2 ** 30) for k, v in sorted(memory.peak_holders.items(),
                                                                               key=lambda kv: -kv[1])],
               groups={k: groups[k] for k in GROUPS if k in groups})
    if name in bm.BACKBONES:
        deit, label, deit_label = bm.BACKBONES[name]
    else:  # a DeiT (or another timm model): its own anchor only
        deit, deit_label = None, None
        label = {v[0]: v[2] for v in bm.BACKBONES.values()}.get(name)
    anchors = bm.load_anchors("backbones")
    ref = bm._anchor_backbone(anchors, label, res, dtype, batch, train) if label else None
    if ref:
        row["anchor_img_per_s"] = ref  # the original VRWKV / DeiT measured on an H100 (anchors)
    if deit:
        row["deit"] = deit
        deit_ips = bm._anchor_backbone(anchors, deit_label, res, dtype, batch, train)
        ratio = TARGETS.get((res, train))
        if deit_ips:
            row["deit_img_per_s"] = deit_ips
        if deit_ips and ratio:
            row["target_x_deit"] = ratio
            row["target_img_per_s"] = ratio * deit_ips
            row["target_ms"] = batch / (ratio * deit_ips) * 1e3
            row["floor_vs_target"] = floor / row["target_ms"]
    return row


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", action="append", help=f"repeatable; default {MODELS} and their DeiT")
    p.add_argument("--res", type=int, default=1024)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--dtype", default="bf16", choices=list(MATRIX_RATE))
    p.add_argument("--bandwidth", type=float, default=BANDWIDTH, help="bytes/s (default: measured H100 copy)")
    p.add_argument("--train", action="store_true", help="a training step (forward + backward + AdamW) per batch")
    p.add_argument("--holders", type=int, default=0, metavar="N",
                   help="also print the N largest holders of memory at the peak (by allocating call site)")
    p.add_argument("--out", type=Path, help="write the rows as JSON")
    args = p.parse_args(argv)
    for name in ("res", "batch"):  # (--batch 0 ran and reported a floor of 0 img/s)
        if getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    if not args.bandwidth > 0:
        p.error(f"--bandwidth must be > 0 bytes/s, got {args.bandwidth}")
    if args.holders < 0:
        p.error(f"--holders must be >= 0, got {args.holders}")
    torch.set_num_threads(max(1, torch.get_num_threads()))
    models = list(args.model or MODELS)
    for m in list(models):
        deit = bm.BACKBONES.get(m, (None,))[0]
        if deit and deit not in models:
            models.append(deit)
    rows = []
    for name in models:
        rows.append(measure(name, args.res, args.batch, args.dtype, args.bandwidth, args.train))
        print(json.dumps({k: v for k, v in rows[-1].items() if k not in ("groups", "top", "peak_holders")}),
              flush=True)
    what = "a training step" if args.train else "forward_features"
    print(f"\n## Roofline floor of {what}, {args.res}x{args.res}, batch {args.batch}, {args.dtype} "
          f"({args.bandwidth / 1e12:.2f} TB/s, {MATRIX_RATE[args.dtype] / 1e12:.0f} TFLOP/s)\n")
    ratio = TARGETS.get((args.res, args.train))
    target = f"{ratio}x DeiT target ms" if ratio else "target ms (none at this size)"
    print("| model | launches | GB moved | GEMM/attn GFLOP | floor ms | floor img/s | DeiT img/s (H100) | "
          f"{target} | floor / target | peak GiB (est.) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        tgt = f"{r['target_ms']:.2f}" if "target_ms" in r else ""
        vs = f"{r['floor_vs_target']:.2f}" if "floor_vs_target" in r else ""
        deit = f"{r['deit_img_per_s']:.0f}" if "deit_img_per_s" in r else ""
        print(f"| {r['model']} | {r['launches']} | {r['GB']:.2f} | {r['GFLOP']:.3g} | {r['floor_ms']:.2f} | "
              f"{r['floor_img_per_s']:.0f} | {deit} | {tgt} | {vs} | {r['peak_GiB_est']:.2f} |")
    print("\n| model | " + " | ".join(f"{g} ms (launches)" for g in GROUPS) + " |")
    print("|---|" + "---|" * len(GROUPS))
    for r in rows:
        cells = [f"{r['groups'][g]['floor_ms']:.2f} ({r['groups'][g]['launches']})" if g in r["groups"] else ""
                 for g in GROUPS]
        print(f"| {r['model']} | " + " | ".join(cells) + " |")
    if args.holders:
        for r in rows:
            print(f"\n{r['model']}: what is held at the peak ({r['peak_GiB_est']:.3f} GiB est.), allocated by\n")
            print("| site (innermost first) | GiB | share |\n|---|---|---|")
            for h in r["peak_holders"][:args.holders]:
                print(f"| {h['site']} | {h['GiB']:.3f} | {h['GiB'] / r['peak_GiB_est']:.1%} |")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(dict(torch=torch.__version__, meta=bm.run_metadata(), bandwidth=args.bandwidth,
                                            matrix_rate=MATRIX_RATE[args.dtype], rows=rows), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
