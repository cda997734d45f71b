"""Training steps of tiny models with the fused mixers' step matrices cast per mixer (``step_cast_blocks=None``: each
one-node mixer casts its own), once for the whole model (0) and per group of blocks (1, 2), and print JSON: the
largest difference of the logits and of every parameter gradient from the per-mixer run (the same casts and kernels:
expected 0), the ``_foreach_copy_`` launches of the forward and of the backward, and the one-node mixers that ran.

Run by ``test_step_casts.py`` under ``TRITON_INTERPRET=1`` (CPU): ``python _step_cast_case.py '<json cases>'``, each
case ``[model name, timm kwargs, dtype ('bf16', 'fp16' or 'fp32': autocast off), [settings]]``.
"""
from __future__ import annotations

import collections
import json
import os
import sys

os.environ["VRWKV_BACKEND"] = "triton"  # (the fused kernels on CPU tensors: run by the interpreter)

import timm  # noqa: E402
import torch  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

import vision_rwkv  # noqa: E402, F401

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


class _Copies(TorchDispatchMode):
    """Counts ``_foreach_copy_`` (the one-launch casts) while active."""

    def __init__(self):
        super().__init__()
        self.n = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.n += func.overloadpacket is torch.ops.aten._foreach_copy_
        return func(*args, **(kwargs or {}))


def _step(name: str, kwargs: dict, dtype: str, setting) -> dict:
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=5, **kwargs).train()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():  # (no parameter left at an init value)
            p.add_(torch.randn(p.shape, generator=gen) * 0.05)
    model.step_cast_blocks = setting
    x = torch.randn(2, 3, 40, 56, generator=gen)
    steps = collections.Counter()
    mod = vision_rwkv.ops.fused.mixer_steps()
    saved = {op: getattr(mod, op) for op in ("time_mix6_step", "spatial_mix_step", "channel_mix_step")}

    def counted(op):
        def run(*args, **kw):
            steps[op] += 1
            return saved[op](*args, **kw)
        return run

    for op in saved:
        setattr(mod, op, counted(op))
    try:
        torch.manual_seed(2)  # (drop path's draws: the same in every run)
        with _Copies() as fwd, torch.autocast("cpu", dtype=DTYPES[dtype], enabled=dtype != "fp32"):
            y = model(x)
        with _Copies() as bwd:
            y.float().square().sum().backward()
    finally:
        for op, fn in saved.items():
            setattr(mod, op, fn)
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    return dict(y=y.detach().float(), grads=grads, copies=[fwd.n, bwd.n], steps=dict(steps))


def main(cases: list) -> dict:
    out = {}
    for name, kwargs, dtype, settings in cases:
        base = _step(name, kwargs, dtype, None)
        rows = {"None": dict(copies=base["copies"], steps=base["steps"])}
        for setting in settings:
            res = _step(name, kwargs, dtype, setting)
            same_keys = set(res["grads"]) == set(base["grads"])
            diff = max(float((res["grads"][k] - base["grads"][k]).abs().max()) for k in base["grads"])
            rows[str(setting)] = dict(copies=res["copies"], steps=res["steps"], same_keys=same_keys, grad_diff=diff,
                                      y_diff=float((res["y"] - base["y"]).abs().max()),
                                      finite=all(bool(torch.isfinite(g).all()) for g in res["grads"].values()),
                                      grad_dtypes_ok=all(res["grads"][k].dtype == p.dtype for k, p in
                                                         base["grads"].items()))
        out[f"{name}/{dtype}"] = rows
    return out


if __name__ == "__main__":
    print(json.dumps(main(json.loads(sys.argv[1]))))
