"""The one-node mixers (``vision_rwkv.ops.fused.mixer_steps_triton``) vs the per-op fused path and the float64 plain
path, case by case: output and the gradient of the input and of every parameter.

Imported by ``test_mixer_steps.py`` (CUDA, in-process) or run as a script in a subprocess with ``TRITON_INTERPRET=1``
(CPU): ``python _mixer_step_cases.py '<json dict of cases>'`` prints one JSON object {case name: result}. Per case a
mixer module (``TimeMixV6``, ``SpatialMix``, ``ChannelMix``) with random parameters (every one perturbed: the LoRA
matrices are ~0 at init) runs three times on one random input:

* ``plain``: float64 copy of the module on the plain-PyTorch path (``VRWKV_BACKEND=reference``) - the reference;
* ``per_op``: the fused path with one autograd node per op (``VRWKV_FUSED_STEP=0``);
* ``step``: the fused path as one autograd node (the default), which must have run (its backward node is the
  output's ``grad_fn``, or it is absent where the case expects the per-op fallback).

The result holds relative 2-norm errors ``step`` vs ``plain`` (``y``, ``g:<name>``) and ``step`` vs ``per_op``
(``op_y``, ``op_g:<name>``), plus ``finite``, ``dtype_ok``, ``node`` (the output's grad_fn class name) and, for the
step pass, ``weight_casts`` (per-weight casts of the module's matrices) and ``foreach_copies`` (one-launch casts).
Kernel outputs are NaN-poisoned (``VRWKV_TRITON_DEBUG=1``).
"""
from __future__ import annotations

import contextlib
import copy
import json
import os
import sys
import traceback

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from _case_utils import DTYPES, rel_err


def _module(kind: str, kw: dict) -> torch.nn.Module:
    from vision_rwkv.models.mixing import ChannelMix, TimeMixV6
    from vision_rwkv.models.vrwkv import SpatialMix

    dim = kw["dim"]
    if kind == "time_mix6":
        return TimeMixV6(dim, 1, 4, head_size=kw["head_size"], mix_rank=kw.get("mix_rank", 16),
                         decay_rank=kw.get("decay_rank", 16))
    if kind == "spatial_mix":
        return SpatialMix(dim, 1, 4, wkv_mode=kw.get("mode", "exact"), wkv_chunks=kw.get("chunks", 32))
    return ChannelMix(dim, 1, 4, kw.get("hidden", 3 * dim), head_size=kw.get("head_size"),
                      param_style=kw.get("style", "vrwkv"))


class _Casts(TorchDispatchMode):
    """Counts the per-weight casts of ``module``'s matrices (``_to_copy`` reading one; what autocast would launch)
    and the ``_foreach_copy_`` calls (the one-launch casts) while active."""

    def __init__(self, module):
        super().__init__()
        self.matrices = {p.data_ptr() for p in module.parameters() if p.dim() >= 2}
        self.weight_casts = self.foreach_copies = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._to_copy.default and args[0].data_ptr() in self.matrices:
            self.weight_casts += 1
        if func.overloadpacket is torch.ops.aten._foreach_copy_:
            self.foreach_copies += 1
        return func(*args, **(kwargs or {}))


def _run(module, x, grid, dtype, autocast: bool, backend: str, step: str, frozen=(), casts=None):
    """Forward + backward of ``module`` on ``x`` (inside ``casts``, a dispatch mode, when given); returns (output,
    {name: grad}, grad_fn class name)."""
    os.environ["VRWKV_BACKEND"], os.environ["VRWKV_FUSED_STEP"] = backend, step
    module.zero_grad(set_to_none=True)
    for name, p in module.named_parameters():
        p.requires_grad_(name not in frozen)
    x = x.detach().clone().requires_grad_(True)
    ctx = torch.autocast(x.device.type, dtype=dtype) if autocast else contextlib.nullcontext()
    gen = torch.Generator().manual_seed(7)
    with casts or contextlib.nullcontext():
        with ctx:
            y = module(x, grid)
        gy = torch.randn(y.shape, generator=gen, dtype=torch.float64).to(y.dtype)
        y.backward(gy)
    node = type(y.grad_fn).__name__ if y.grad_fn is not None else None
    grads = {"x": x.grad}
    grads.update({n: p.grad for n, p in module.named_parameters() if p.grad is not None})
    return y.detach(), grads, node


def run_case(case: dict, device: str = "cpu") -> dict:
    torch.manual_seed(case.get("seed", 0))
    kind, kw = case["kind"], case["kwargs"]
    dtype = DTYPES[case.get("dtype", "fp32")]
    autocast = dtype != torch.float32
    module = _module(kind, kw)
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * case.get("noise", 0.3))
    module = module.to(device)
    h, w = case["grid"]
    x = torch.randn(case["batch"], h * w, kw["dim"], generator=gen).to(device)
    frozen = tuple(case.get("frozen", ()))
    try:
        y_ref, g_ref, _ = _run(copy.deepcopy(module).double(), x.double(), (h, w), torch.float64, False, "reference",
                               "1", frozen)
        y_op, g_op, _ = _run(module, x, (h, w), dtype, autocast, "triton", "0", frozen)
        casts = _Casts(module)
        y, g, node = _run(module, x, (h, w), dtype, autocast, "triton", "1", frozen, casts)
    finally:
        os.environ.pop("VRWKV_BACKEND", None)
        os.environ.pop("VRWKV_FUSED_STEP", None)
    out = {"y": rel_err(y, y_ref), "op_y": rel_err(y, y_op), "node": node, "weight_casts": casts.weight_casts,
           "foreach_copies": casts.foreach_copies,
           "grads": sorted(g), "ref_grads": sorted(g_ref), "op_grads": sorted(g_op)}
    for name in g:
        if name in g_ref:
            out[f"g:{name}"] = rel_err(g[name], g_ref[name])
        if name in g_op:
            out[f"op_g:{name}"] = rel_err(g[name], g_op[name])
    params = dict(module.named_parameters())
    out["finite"] = bool(torch.isfinite(y).all()) and all(bool(torch.isfinite(t).all()) for t in g.values())
    out["dtype_ok"] = (y.dtype == dtype and g["x"].dtype == x.dtype
                       and all(g[n].dtype == params[n].dtype for n in g if n != "x"))
    return out


def main(cases: dict) -> dict:
    results = {}
    for name, case in cases.items():
        try:
            results[name] = run_case(case)
        except Exception as e:  # reported per case
            results[name] = {"error": f"{type(e).__name__}: {e}\n{traceback.format_exc()}"}
    return results


if __name__ == "__main__":
    torch.set_num_threads(1)
    print(json.dumps(main(json.loads(sys.argv[1]))))
