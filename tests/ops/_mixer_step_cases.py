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

A case with ``residual`` (``{"post": bool, "gamma": bool, "scale": bool}``) passes the block's residual add +
LayerNorm (a ``ResidualNorm``: residual x, optional layer scale, LayerNorm weight / bias, optional drop-path factors)
to the mixer, which returns ``(s, n)`` (``n`` None for post-norm): the step does it inside its node, the per-op
path and the plain path through ``add_norm``; the residual's gradients are ``res:x``, ``res:gamma``, ``res:weight``,
``res:bias``.

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
    """Counts the per-weight casts of ``module``'s matrices (``_to_copy`` reading one; what autocast would launch),
    the ``_foreach_copy_`` calls (the one-launch casts) and the stacks of its matrices while active."""

    def __init__(self, module):
        super().__init__()
        self.matrices = {p.data_ptr() for p in module.parameters() if p.dim() >= 2}
        self.weight_casts = self.foreach_copies = self.stacks = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._to_copy.default and args[0].data_ptr() in self.matrices:
            self.weight_casts += 1
        if func.overloadpacket is torch.ops.aten._foreach_copy_:
            self.foreach_copies += 1
        if func.overloadpacket is torch.ops.aten.stack and any(t.data_ptr() in self.matrices for t in args[0]):
            self.stacks += 1
        return func(*args, **(kwargs or {}))


def _residual(spec: dict, res: dict, dtype: torch.dtype, out_dtype: torch.dtype):
    """A ``ResidualNorm`` of leaf copies of ``res``'s tensors in ``dtype`` (the float64 pass: float64), and the leaves
    by gradient name."""
    from vision_rwkv.ops.fused import ResidualNorm

    leaves = {k: res[k].detach().to(dtype).requires_grad_(True) for k in ("x", "gamma", "weight", "bias")
              if k in res}
    scale = res.get("scale")
    norm = ResidualNorm(leaves["x"], leaves.get("gamma"), leaves["weight"], leaves["bias"], 1e-5, spec["post"],
                        out_dtype, False, None if scale is None else scale.to(dtype))
    return norm, {f"res:{k}": t for k, t in leaves.items()}


def _precast(module, x):
    """The step's matrices as a backbone hands them over (``cast=``): cast by ``cast_weight_groups`` from the
    module's ``step_cast_request`` (inside the caller's autocast)."""
    from vision_rwkv.ops import fused
    from vision_rwkv.ops.cast_weights import cast_weight_groups

    weights, groups, tail = module.step_cast_request(x)
    return cast_weight_groups(weights, fused.compute_dtype(x), groups) + tail


def _run(module, x, grid, dtype, autocast: bool, backend: str, step: str, frozen=(), casts=None, residual=None,
         precast: bool = False):
    """Forward + backward of ``module`` on ``x`` (inside ``casts``, a dispatch mode, when given; with ``residual``
    = (spec, tensors) the block's residual add + LayerNorm too; ``precast``: the step's matrices cast outside it,
    :func:`_precast`); returns (output - ``s`` with a residual -, the LayerNorm output ``n`` or None, {name: grad},
    grad_fn class name)."""
    os.environ["VRWKV_BACKEND"], os.environ["VRWKV_FUSED_STEP"] = backend, step
    module.zero_grad(set_to_none=True)
    for name, p in module.named_parameters():
        p.requires_grad_(name not in frozen)
    x = x.detach().clone().requires_grad_(True)
    ctx = torch.autocast(x.device.type, dtype=dtype) if autocast else contextlib.nullcontext()
    gen = torch.Generator().manual_seed(7)
    norm, leaves = _residual(*residual, x.dtype, dtype) if residual is not None else (None, {})
    with casts or contextlib.nullcontext():
        with ctx:
            kw = dict(cast=_precast(module, x)) if precast else {}
            y = module(x, grid, **kw) if norm is None else module(x, grid, residual=norm, **kw)
        y, n = (y, None) if norm is None else y
        outs = [t for t in (y, n) if t is not None]
        grads_in = [torch.randn(t.shape, generator=gen, dtype=torch.float64).to(t.device, t.dtype) for t in outs]
        torch.autograd.backward(outs, grads_in)
    node = type(y.grad_fn).__name__ if y.grad_fn is not None else None
    grads = {"x": x.grad}
    grads.update({n: p.grad for n, p in module.named_parameters() if p.grad is not None})
    grads.update({k: t.grad for k, t in leaves.items()})
    return y.detach(), (None if n is None else n.detach()), grads, node


def _setup(case: dict, device: str):
    """(module with every parameter perturbed, random input x, grid (h, w), compute dtype, the generator)."""
    torch.manual_seed(case.get("seed", 0))
    kw = case["kwargs"]
    module = _module(case["kind"], kw)
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * case.get("noise", 0.3))
    h, w = case["grid"]
    x = torch.randn(case["batch"], h * w, kw["dim"], generator=gen).to(device)
    return module.to(device), x, (h, w), DTYPES[case.get("dtype", "fp32")], gen


def run_case(case: dict, device: str = "cpu") -> dict:
    """One training case (see the module docstring); ``v4_config``: v4 WKV kernel settings for its duration (e.g.
    ``seq=0``: the tile kernels, whose backward the spatial mix step feeds with d y instead of the gate)."""
    from vision_rwkv.ops.bi_wkv import triton as v4_triton

    saved = dict(v4_triton.CONFIG)
    v4_triton.CONFIG.update(case.get("v4_config", {}))
    try:
        return _run_case(case, device)
    finally:
        v4_triton.CONFIG.clear()
        v4_triton.CONFIG.update(saved)


def _run_case(case: dict, device: str) -> dict:
    kw = case["kwargs"]
    module, x, (h, w), dtype, gen = _setup(case, device)
    autocast = dtype != torch.float32
    frozen = tuple(case.get("frozen", ()))
    residual = None
    if "residual" in case:
        spec, dim = case["residual"], kw["dim"]
        res = {"x": torch.randn(x.shape, generator=gen), "weight": 1 + 0.3 * torch.randn(dim, generator=gen),
               "bias": 0.3 * torch.randn(dim, generator=gen)}
        if spec.get("gamma"):
            res["gamma"] = torch.randn(dim, generator=gen)
        if spec.get("scale"):  # drop path: one sample dropped, the others scaled by 1 / keep
            res["scale"] = torch.tensor([0.0] + [2.0] * (x.shape[0] - 1))
        residual = (spec, {k: t.to(device) for k, t in res.items()})
    try:
        y_ref, n_ref, g_ref, _ = _run(copy.deepcopy(module).double(), x.double(), (h, w), torch.float64, False,
                                      "reference", "1", frozen, residual=residual)
        y_op, n_op, g_op, _ = _run(module, x, (h, w), dtype, autocast, "triton", "0", frozen, residual=residual)
        casts = _Casts(module)
        y, n, g, node = _run(module, x, (h, w), dtype, autocast, "triton", "1", frozen, casts, residual)
        y_pre, n_pre, g_pre, node_pre = _run(module, x, (h, w), dtype, autocast, "triton", "1", frozen,
                                             residual=residual, precast=True)
    finally:
        os.environ.pop("VRWKV_BACKEND", None)
        os.environ.pop("VRWKV_FUSED_STEP", None)
    out = {"y": rel_err(y, y_ref), "op_y": rel_err(y, y_op), "node": node, "weight_casts": casts.weight_casts,
           "foreach_copies": casts.foreach_copies,
           "grads": sorted(g), "ref_grads": sorted(g_ref), "op_grads": sorted(g_op),
           # the step given its matrices cast outside it (cast=): the same node, bit for bit the same results
           "precast_node": node_pre, "precast_grads": sorted(g_pre),
           "precast_diff": max([float((a.float() - b.float()).abs().max()) for a, b in ((y_pre, y), (n_pre, n))
                                if a is not None] + [float((g_pre[k].float() - g[k].float()).abs().max())
                                                     for k in g if k in g_pre])}
    if residual is not None:
        out["has_n"] = [t is not None for t in (n, n_op, n_ref)]
        if n is not None:
            out["n"], out["op_n"] = rel_err(n, n_ref), rel_err(n, n_op)
    for name in g:
        if name in g_ref:
            out[f"g:{name}"] = rel_err(g[name], g_ref[name])
        if name in g_op:
            out[f"op_g:{name}"] = rel_err(g[name], g_op[name])
    params = dict(module.named_parameters())
    out["finite"] = (bool(torch.isfinite(y).all()) and all(bool(torch.isfinite(t).all()) for t in g.values())
                     and (n is None or bool(torch.isfinite(n).all())))
    # the output in the compute dtype - with a residual s in the residual's dtype, n in the compute dtype -, every
    # gradient in its leaf's dtype
    out["dtype_ok"] = ((y.dtype == (dtype if residual is None else x.dtype)) and (n is None or n.dtype == dtype)
                       and g["x"].dtype == x.dtype and all(g[k].dtype == params[k].dtype for k in g if k in params)
                       and all(g[k].dtype == x.dtype for k in g if k.startswith("res:")))
    return out


_FWD = {"time_mix6": "_time_mix6_fwd", "spatial_mix": "_spatial_mix_fwd", "channel_mix": "_channel_mix_fwd"}


def run_infer_case(case: dict, device: str = "cpu") -> dict:
    """Eager inference (``torch.no_grad()``): the step as one call vs the per-op path and the float64 plain path -
    outputs only; with ``residual`` (pre-norm) written in place into the residual x. Reports ``lean_calls`` (forwards
    of the step without saving), the casts of the second call (``casts_again``: the model keeps the cast matrices)
    and ``y_updated``: the error vs the per-op path after an in-place update of every parameter (the kept matrices
    must follow)."""
    from vision_rwkv.ops import fused

    kind, kw = case["kind"], case["kwargs"]
    module, x, (h, w), dtype, gen = _setup(case, device)
    res_x = torch.randn(x.shape, generator=gen).to(device) if case.get("residual") else None
    ln = tuple((a + 0.3 * torch.randn(kw["dim"], generator=gen)).to(device) for a in (1.0, 0.0))
    opts = case["residual"] if isinstance(case.get("residual"), dict) else {}
    gamma = (1.0 + 0.3 * torch.randn(kw["dim"], generator=gen)).to(device) if opts.get("gamma") else None
    steps = fused.mixer_steps()
    lean = {"calls": 0}
    fwd_name = _FWD[kind]
    fwd = getattr(steps, fwd_name)

    def counted(*args, **kwargs):
        lean["calls"] += not args[-1]  # save=False: the inference form
        return fwd(*args, **kwargs)

    def run(mod, xx, backend, step, inplace=False):
        os.environ["VRWKV_BACKEND"], os.environ["VRWKV_FUSED_STEP"] = backend, step
        ctx = torch.autocast(xx.device.type, dtype=dtype) if dtype != torch.float32 else contextlib.nullcontext()
        with torch.no_grad(), ctx:
            if res_x is None:
                return mod(xx, (h, w)), None
            rx = res_x.to(xx.dtype).clone()
            norm = fused.ResidualNorm(rx, None if gamma is None else gamma.to(xx.dtype), ln[0].to(xx.dtype),
                                      ln[1].to(xx.dtype), 1e-5, bool(opts.get("post")), dtype, inplace)
            s_, n_ = mod(xx, (h, w), residual=norm)
            return (s_, n_), rx

    setattr(steps, fwd_name, counted)
    try:
        ref, _ = run(copy.deepcopy(module).double(), x.double(), "reference", "1")
        op, _ = run(module, x, "triton", "0")
        casts = _Casts(module)
        got, rx = run(module, x, "triton", "1", inplace=True)
        with casts:
            run(module, x, "triton", "1")
        with torch.no_grad():
            for p in module.parameters():
                p.mul_(1.1)
        op2, _ = run(module, x, "triton", "0")
        got2, _ = run(module, x, "triton", "1")
    finally:
        setattr(steps, fwd_name, fwd)
        os.environ.pop("VRWKV_BACKEND", None)
        os.environ.pop("VRWKV_FUSED_STEP", None)
    pick = (lambda t: t) if res_x is None else (
        lambda t: torch.cat([u.float().flatten() for u in t if u is not None]))  # (s, n); post-norm: n is None
    out = {"y": rel_err(pick(got), pick(ref)), "op_y": rel_err(pick(got), pick(op)),
           "y_updated": rel_err(pick(got2), pick(op2)), "lean_calls": lean["calls"],
           "casts_again": casts.weight_casts + casts.foreach_copies + casts.stacks,
           "finite": bool(torch.isfinite(pick(got)).all())}
    if res_x is not None:
        out["in_place"] = got[0].data_ptr() == rx.data_ptr()
    return out


def main(cases: dict) -> dict:
    results = {}
    for name, case in cases.items():
        try:
            results[name] = run_infer_case(case) if case.get("infer") else run_case(case)
        except Exception as e:  # reported per case
            results[name] = {"error": f"{type(e).__name__}: {e}\n{traceback.format_exc()}"}
    return results


if __name__ == "__main__":
    torch.set_num_threads(1)
    print(json.dumps(main(json.loads(sys.argv[1]))))
