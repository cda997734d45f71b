"""Compile, for sm_90, every Triton kernel that whole models launch on their fused path (forward and backward), on a
machine without a GPU; print one JSON object {case: "ok N" | error, "kernels": ["module:kernel", ...],
"max_shared_bytes": {"module:kernel": bytes}}.

The Triton interpreter (the CPU tests' way of running the kernels) accepts programs that the GPU compiler rejects
(e.g. a ``@triton.jit`` helper returning tensors of different shapes from two branches), so interpreter tests alone
can pass while every CUDA launch would fail. Here the kernel modules are imported as compiled JIT functions first;
then ``TRITON_INTERPRET=1`` / ``VRWKV_BACKEND=triton`` switch the models' fused path on for CPU tensors, and
:func:`vision_rwkv.kernel_report.capture_kernels` turns every launch into an ahead-of-time compile (outputs stay
unwritten: only the compile is checked). Run as a script in a fresh process:
``python _compile_models.py '<json list of [name, kwargs, env]>'`` (env: the kernel opt-ins of the case).
"""
from __future__ import annotations

import json
import os
import sys
import traceback

os.environ.pop("TRITON_INTERPRET", None)  # the kernel modules must be JIT functions, not interpreted ones

import torch  # noqa: E402

from vision_rwkv.ops._triton_utils import config_from_env  # noqa: E402
from vision_rwkv.ops.bi_wkv import triton as v4  # noqa: E402
from vision_rwkv.ops.bi_wkv import triton_seq  # noqa: E402,F401
from vision_rwkv.ops.bi_wkv6 import triton as v6  # noqa: E402
from vision_rwkv.ops.bi_wkv6 import triton_chunk  # noqa: E402,F401
from vision_rwkv.ops.bi_wkv6 import triton_pairs  # noqa: E402,F401
from vision_rwkv.ops.fused import linear_triton  # noqa: E402,F401
from vision_rwkv.ops.fused import lora_triton  # noqa: E402,F401
from vision_rwkv.ops.fused import mix_linear_triton  # noqa: E402,F401
from vision_rwkv.ops.fused import mix_mlp_triton  # noqa: E402,F401
from vision_rwkv.ops.fused import norm_linear_triton  # noqa: E402,F401
from vision_rwkv.ops.fused import triton as fused_triton  # noqa: E402,F401

TEXT_TOWER = "rwkv_clip.TextRWKV"
OPT_INS = ("VRWKV_TRITON_V4", "VRWKV_TRITON_V6", "VRWKV_FUSED_GEMM", "VRWKV_FUSED_MIX", "VRWKV_FUSED_MLP")


def _configure(env: dict) -> None:
    """Kernel settings of one case: the defaults plus the case's opt-ins (env variables, as a user sets them)."""
    for key in OPT_INS:
        os.environ.pop(key, None)
    os.environ.update(env)
    for mod, var in ((v4, "VRWKV_TRITON_V4"), (v6, "VRWKV_TRITON_V6")):
        if not hasattr(mod, "_DEFAULT_CONFIG"):
            mod._DEFAULT_CONFIG = dict(mod.CONFIG)
        mod.CONFIG.clear()
        mod.CONFIG.update(mod._DEFAULT_CONFIG)
        config_from_env(mod.CONFIG, var)


def run_case(name: str, kwargs: dict, env: dict, records: list) -> str:
    """Forward + backward of one model (train mode, optional bf16 autocast; ``infer``: forward only, without
    autograd) with launches captured."""
    kw = dict(kwargs)
    amp, train, infer = kw.pop("amp", False), kw.pop("train", False), kw.pop("infer", False)
    _configure(env)
    torch.manual_seed(0)
    if name == TEXT_TOWER:
        from rwkv_clip.text_model import TextRWKV

        tokens = kw.pop("tokens")
        model = TextRWKV(**kw)
        x = torch.randint(0, kw["vocab_size"], (2, tokens))
    else:
        import timm

        import vision_rwkv  # noqa: F401

        model = timm.create_model(name, num_classes=5, **kw)
        x = torch.randn(2, 3, 100, 120)
    model.train(train)
    before = len(records)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp), torch.set_grad_enabled(not infer):
        out = model(x)
    if not infer:
        out.float().sum().backward()
    return f"ok {len(records) - before}"


def run_ops(records: list) -> str:
    """The fused ops' variants no model launches (out-of-place relu^2, GroupNorm with an identity gate), fwd + bwd."""
    from vision_rwkv.ops import fused

    before = len(records)
    for dtype in (torch.float32, torch.bfloat16):
        x, g = (torch.randn(2, 12, 32).to(dtype).requires_grad_() for _ in range(2))
        w, b = torch.randn(32, requires_grad=True), torch.randn(32, requires_grad=True)
        for out in (fused.relu_square(x), fused.group_norm_mul(x, g, 4, w, b, gate_act=None)):
            out.float().sum().backward()
    return f"ok {len(records) - before}"


def _attempt(fn, *args) -> str:
    """``fn(*args)``, or the error with the compiler's message (reported to the test)."""
    try:
        return fn(*args)
    except Exception as e:
        return f"{type(e).__name__}: {e}"[-3000:] + "\n" + traceback.format_exc()[-2000:]


def main(cases: list) -> dict:
    from vision_rwkv.kernel_report import capture_kernels

    os.environ["TRITON_INTERPRET"] = "1"  # read at call time by the dispatch: the fused path for CPU tensors
    os.environ["VRWKV_BACKEND"] = "triton"
    results = {}
    with capture_kernels() as records:
        for name, kwargs, env in cases:
            key = f"{name}|{json.dumps(kwargs, sort_keys=True)}|{json.dumps(env, sort_keys=True)}"
            results[key] = _attempt(run_case, name, kwargs, env, records)
        results["ops"] = _attempt(run_ops, records)
    results["kernels"] = sorted({f"{r.extra['module']}:{r.name}" for r in records})
    shared = {}
    for r in records:  # the most shared memory each kernel asked for (launch fails above the device's limit)
        key = f"{r.extra['module']}:{r.name}"
        shared[key] = max(shared.get(key, 0), int(r.kernel.metadata.shared))
    results["max_shared_bytes"] = shared
    return results

if __name__ == "__main__":
    torch.set_num_threads(1)
    print(json.dumps(main(json.loads(sys.argv[1]))))
