"""Which part of a training step breaks its CUDA-graph capture. On an H200 (round 6) the capture of VRWKV-T's bf16
training step (forward, cross-entropy backward, AdamW with ``capturable``) was invalidated ("operation failed due
to a previous error during capture") while inference forwards captured fine - and so did the 2-block, 64-px training
steps of the CUDA test ``test_train_graph_capture_cuda`` (16 tokens: single-chunk WKV kernels; 196 tokens take the
chunked ones). Each variant below changes one thing and runs in its own process (a failed capture leaves the
process's CUDA state suspect); three are controls (DeiT-T, 64-px images, VRWKV6-T):

    python benchmarks/capture_bisect.py [--model M] [--batch B] [--variant NAME ...] [--out F.json]
    python benchmarks/capture_bisect.py --device cpu      # the same steps eagerly, no capture: checks the plumbing
    TRITON_INTERPRET=1 VRWKV_BACKEND=triton python benchmarks/capture_bisect.py --device cpu \
        --model-kw '{"embed_dim": 64, "depth": 1, "img_size": 32}'   # ... through the Triton kernels (interpreted)

A variant: three eager steps on a side stream (what ``torch.cuda.graph`` asks for), the capture of one step, two
replays; ``ok`` when the capture and the replays ran, with the replayed loss next to an eager step's (the same step
on the same weights would give the same loss; AdamW has moved them, so the two agree only roughly). Where a step
fails, each row also says where: ``sync_op`` - one eager step under ``torch.cuda.set_sync_debug_mode("error")``
(before the capture), the frames of the first operation that synchronises with the host (a capture cannot contain
one), or None; ``frames`` - the frames the capture's exception came through (our code, timm's and torch.optim's);
``host_syncs`` - every op of one eager step that would make the host wait for a GPU (``.item()``, ``nonzero``,
boolean indexing, ``torch.tensor(data)``, ...; see :class:`HostSyncScan`), with their frames. The last needs no
device: on CPU (where the optimizer's step count, read by a non-capturable AdamW, is left out) it finds such an op
before a device run does.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import time
import traceback

import torch
from torch.utils._python_dispatch import TorchDispatchMode

# name -> (environment, model kwargs, step options); one change from "default" each
VARIANTS: dict[str, tuple[dict, dict, dict]] = {  # (in run order: the most telling first, a deadline cuts the rest)
    "default": ({}, {}, {}),
    # controls: DeiT-T in the same harness (does any model's step capture here?); VRWKV-T on 64-px images (16
    # tokens: the single-chunk WKV kernels, as in the small CUDA test that captured on the H200); VRWKV6-T
    "deit_control": ({}, {}, {"model": "deit_tiny_patch16_224"}),
    "img64_single_chunk": ({}, {"img_size": 64}, {}),
    "relaxed_capture": ({}, {}, {"capture_error_mode": "relaxed"}),  # unsafe API calls allowed: which kind of error
    "per_op_mixers": ({"VRWKV_FUSED_STEP": "0"}, {}, {}),  # one autograd node per fused op, not per mixer
    "plain_path": ({"VRWKV_FUSED": "0"}, {}, {}),  # no fused elementwise kernels (WKV still Triton)
    "reference_wkv": ({"VRWKV_BACKEND": "reference"}, {}, {}),  # no Triton WKV either
    "no_optimizer": ({}, {}, {"optimizer": False}),  # forward + backward only
    "forward_only_train_mode": ({}, {}, {"backward": False, "optimizer": False}),
    "no_drop_path": ({}, {"drop_path_rate": 0.0}, {}),  # no random draws in the step
    "fp32": ({}, {}, {"amp": False}),  # no autocast
    "triton_launch": ({"VRWKV_TRITON_FAST_LAUNCH": "0"}, {}, {}),  # Triton's own launch path
    "thread_local_capture": ({}, {}, {"capture_error_mode": "thread_local"}),
    "vrwkv6": ({}, {}, {"model": "vrwkv6_tiny_patch16_224"}),
}


def _step_fn(model, x, target, amp: bool, backward: bool, optimizer: bool):
    """One training step as a closure (gradients set to None first: each replay writes them anew)."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, capturable=x.is_cuda) if optimizer else None
    dev = x.device.type
    dtype = torch.bfloat16

    def step():
        model.zero_grad(set_to_none=True)
        with torch.autocast(dev, dtype=dtype, enabled=amp, cache_enabled=False):
            loss = torch.nn.functional.cross_entropy(model(x), target)
        if backward:
            loss.backward()
        if opt is not None:
            opt.step()
        return loss

    return step


_OURS = ("vision_rwkv/", "timm/", "torch/optim/", "benchmarks/")


def where(exc: BaseException, limit: int = 8) -> list[str]:
    """``file:line function`` of the last ``limit`` frames an exception came through that are ours, timm's or
    torch.optim's (the library frames below them say little about which step of the model it was)."""
    return _ours(traceback.extract_tb(exc.__traceback__), limit)


def _ours(frames, limit: int) -> list[str]:
    keep = []
    for fr in frames:
        key = next((k for k in _OURS if k in fr.filename), None)
        if key is not None:
            keep.append(f"{fr.filename[fr.filename.rindex(key):]}:{fr.lineno} {fr.name}")
    return keep[-limit:]


# aten ops whose CUDA implementation waits for the GPU: a value read back to the host (``.item()``, ``float(t)``,
# ``if t:``) or an output size that depends on the data
SYNC_OPS = frozenset({"_local_scalar_dense", "equal", "nonzero", "masked_select", "unique", "_unique",
                      "_unique2", "unique_dim", "unique_consecutive", "bincount"})
_MASK_INDEXING = frozenset({"index", "index_put", "index_put_", "_index_put_impl_"})  # with a boolean index
_FROM_DATA = ("tensor", "as_tensor", "from_numpy")  # Python / numpy data copied in: a host-to-device copy


def _bool_index(args) -> bool:
    indices = args[1] if len(args) > 1 and isinstance(args[1], (list, tuple)) else ()
    return any(isinstance(t, torch.Tensor) and t.dtype == torch.bool for t in indices)


class HostSyncScan(TorchDispatchMode):
    """Records what would synchronise a CUDA stream with the host, run on any device: the aten ops of ``SYNC_OPS``,
    boolean-mask indexing, ``repeat_interleave`` without ``output_size``, and tensors made from Python or numpy data
    (``torch.tensor`` / ``as_tensor`` / ``from_numpy`` calls: a copy from host memory). ``found`` counts them by
    (op, frames), the frames being ours, timm's and torch.optim's (:func:`where`'s choice), innermost last. On CPU
    this finds, without a GPU, what ``torch.cuda.set_sync_debug_mode("error")`` would stop at - every such op, not
    only the first. (A Python scalar assigned into a tensor, ``x[i] = 1.0``, is not one: CUDA fills it.)"""

    def __init__(self, limit: int = 6):
        super().__init__()
        self.limit = limit
        self.found: collections.Counter = collections.Counter()
        self._saved: list = []

    def _record(self, name: str) -> None:
        self.found[(name, tuple(_ours(traceback.extract_stack()[:-2], self.limit)))] += 1

    def __enter__(self):
        for name in _FROM_DATA:
            real = getattr(torch, name)

            def wrapper(*args, _real=real, _name=name, **kwargs):
                self._record(_name)
                return _real(*args, **kwargs)
            self._saved.append((name, real))
            setattr(torch, name, wrapper)
        return super().__enter__()

    def __exit__(self, *exc):
        for name, real in self._saved:
            setattr(torch, name, real)
        self._saved.clear()
        return super().__exit__(*exc)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func.overloadpacket.__name__
        if (name in SYNC_OPS or (name in _MASK_INDEXING and _bool_index(args))
                or (name == "repeat_interleave" and func._overloadname in ("Tensor", "self_Tensor")
                    and kwargs.get("output_size") is None)):
            self._record(name)
        return func(*args, **kwargs)

    def rows(self) -> list[dict]:
        """The ops found: ``{"op", "count", "frames"}`` each, in the order first seen."""
        return [dict(op=op, count=n, frames=list(frames)) for (op, frames), n in self.found.items()]


def host_syncs(step, skip_optimizer: bool = False) -> list[dict]:
    """One ``step()`` under :class:`HostSyncScan`: the host-synchronising ops it ran. ``skip_optimizer``: leave out
    the ops found only in ``torch.optim`` (a non-capturable optimizer reads its step count with ``.item()``; the
    device runs use ``capturable=True``, which does not, but is CUDA-only)."""
    with HostSyncScan() as scan:
        step()
    rows = scan.rows()
    if skip_optimizer:
        rows = [r for r in rows if not r["frames"] or "torch/optim/" not in r["frames"][-1]]
    return rows


def first_sync(step) -> list[str] | None:
    """One eager ``step()`` with synchronising CUDA operations made errors: the frames of the first one (see
    :func:`where`), or None when the step never waits for the GPU."""
    torch.cuda.set_sync_debug_mode("error")
    try:
        step()
    except RuntimeError as e:
        return where(e) + [str(e).splitlines()[0][:200]]
    finally:
        torch.cuda.set_sync_debug_mode(0)
    return None


def run_variant(name: str, model_name: str, batch: int, device: str, model_kw: dict | None = None) -> dict:
    """Build the model, warm up, capture one step (CUDA) or run it eagerly (CPU); a result row."""
    import timm

    import vision_rwkv  # noqa: F401  (registers the models)

    env, kw, opts = VARIANTS[name]
    os.environ.update(env)
    torch.manual_seed(0)
    kw = {**(model_kw or {}), **kw}
    if "model" in opts:
        model_name = opts["model"]
        if not model_name.startswith("vrwkv"):  # (a control model: the CLI's model kwargs are for ours)
            kw = {k: v for k, v in kw.items() if k == "img_size"}
    model = timm.create_model(model_name, pretrained=False, **kw).to(device).train()
    size = kw.get("img_size", 224)
    x = torch.randn(batch, 3, size, size, device=device)
    target = torch.randint(0, model.num_classes, (batch,), device=device)
    step = _step_fn(model, x, target, opts.get("amp", True), opts.get("backward", True), opts.get("optimizer", True))
    row = {"variant": name, "model": model_name, "env": env, "model_kw": VARIANTS[name][1], "opts": opts}
    t0 = time.perf_counter()
    if device == "cpu":
        row["eager_loss"] = [float(step()) for _ in range(2)]
        row["host_syncs"] = host_syncs(step, skip_optimizer=True)
        row["ok"] = True
        row["seconds"] = time.perf_counter() - t0
        return row
    from vision_rwkv.benchmark import capture_graph, warm_on_side_stream

    warm_on_side_stream(step, 3)
    row["sync_op"] = first_sync(step)
    row["host_syncs"] = host_syncs(step)
    captured = {}
    try:
        graph = capture_graph(lambda: captured.update(loss=step()),
                              torch.cuda.default_generators[torch.cuda.current_device()],
                              opts.get("capture_error_mode", "global"))
        for _ in range(2):
            graph.replay()
        torch.cuda.synchronize()
        row.update(ok=True, graph_loss=float(captured["loss"]), eager_loss=float(step()))
    except Exception as e:  # the point of the run: which variants fail, and how
        row.update(ok=False, error=f"{type(e).__name__}: {e}"[:400], frames=where(e))
    row["seconds"] = time.perf_counter() - t0
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="vrwkv_tiny_patch16_224")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--variant", action="append", choices=sorted(VARIANTS), help="repeatable; default all")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--model-kw", default=None, help="JSON model kwargs (small models for a quick check)")
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds per variant")
    ap.add_argument("--out", default=None)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    model_kw = json.loads(args.model_kw) if args.model_kw else None
    if args.child:
        print(json.dumps(run_variant(args.child, args.model, args.batch, args.device, model_kw)))
        return 0
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("no CUDA device: use --device cpu to check the steps eagerly")
    rows = []
    for name in args.variant or list(VARIANTS):
        cmd = [sys.executable, os.path.abspath(__file__), "--child", name, "--model", args.model,
               "--batch", str(args.batch), "--device", args.device]
        if args.model_kw:
            cmd += ["--model-kw", args.model_kw]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
            lines = proc.stdout.strip().splitlines()
            row = json.loads(lines[-1]) if proc.returncode == 0 and lines else {
                "variant": name, "ok": False, "error": f"process rc={proc.returncode}: {proc.stderr[-400:]}"}
        except subprocess.TimeoutExpired:
            row = {"variant": name, "ok": False, "error": f"timed out after {args.timeout:.0f} s"}
        rows.append(row)
        print(f"{name:24s} {'ok' if row['ok'] else 'FAILED'}  {row.get('error', '')[:160]}", flush=True)
        for label in ("sync_op", "frames"):
            if row.get(label):
                print(f"{'':24s} {label}: " + " <- ".join(reversed(row[label][-4:])), flush=True)
        for sync in row.get("host_syncs") or ():
            print(f"{'':24s} host sync {sync['op']} x{sync['count']}: " + " <- ".join(reversed(sync["frames"][-4:])),
                  flush=True)
        if args.out:  # after every variant (atomically): a run stopped by its caller's deadline keeps what it did
            tmp = args.out + ".tmp"
            with open(tmp, "w") as f:
                json.dump({"model": args.model, "batch": args.batch, "device": args.device, "rows": rows}, f,
                          indent=1)
            os.replace(tmp, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
