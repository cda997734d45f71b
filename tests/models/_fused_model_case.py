"""Run a tiny model's forward + backward twice - plain-PyTorch path vs fused Triton path - and print JSON errors.

Run as a script in a subprocess with ``TRITON_INTERPRET=1`` (CPU; ``test_fused_path.py``) or imported on CUDA:
``python _fused_model_case.py '<json list of [name, kwargs]>'``. The WKV operators run on the reference backend in
both passes (``backend`` forced per op is not exposed by the models, so the fused pass sets
``VRWKV_BACKEND=triton`` and the Triton WKV kernels run too); the comparison is relative 2-norm error of the logits
and of every parameter gradient. Fused outputs are NaN-poisoned (``VRWKV_TRITON_DEBUG=1``).

``name`` is a registered timm model (image input) or :data:`TEXT_TOWER` (the RWKV-CLIP text tower, token-id input;
its kwargs are ``TextRWKV`` arguments plus ``tokens`` = sequence length). ``calls`` counts, for the fused pass, the
calls of each fused elementwise op, of the token mixes' batched projections (``linear_stack``), of the mixers'
one-launch weight casts (``cast_weights``) and of the backbones' once-per-step casts (``cast_weight_groups``), of
the one-node mixers of eager training (``step:time_mix6``,
``step:spatial_mix``, ``step:channel_mix``) and of each Triton WKV entry point (``wkv:<op>``), so a test can tell that
the fused kernels really ran (not counted when the pass is compiled).

``train=True`` runs both passes in training mode from the same RNG seed, so drop path draws the same per-sample masks
in the plain path (timm ``DropPath``) and in the fused path (per-sample factors of the fused residual adds);
``drops`` counts the (dropped, kept) samples the plain pass's DropPath modules produced, so a test can tell that
both kinds occurred. ``infer=True`` runs both forwards under ``torch.no_grad()`` (the inference-only fused paths,
e.g. ``VRWKV_FUSED_MIX=1``) and compares the logits only. ``fx=True`` runs the fused pass through the graph of timm's
torch.fx feature extractor (``create_feature_extractor(model, {'head': ...})``; image models only), whose leaf blocks
choose the fused path when the graph runs.
"""
from __future__ import annotations

import contextlib
import json
import os
import sys
import traceback

import torch

TEXT_TOWER = "rwkv_clip.TextRWKV"
FUSED_OPS = ("token_shift_mix", "token_shift_mix_lora", "sigmoid_mul", "relu_square", "group_norm_mul", "decay_logd",
             "add_norm", "lora_mlp", "linear_relu_square", "linear_sigmoid_mul", "linear_tanh", "linear_decay",
             "mix_linear", "mix_linear_group", "mix_mlp", "group_norm_mul_linear", "linear_add_norm")


def _build(name: str, kwargs: dict, gen: torch.Generator, img, batch: int):
    """(model, input) on CPU: a timm model and an image batch, or the text tower and a batch of token ids."""
    if name == TEXT_TOWER:
        from rwkv_clip.text_model import TextRWKV

        kw = dict(kwargs)
        tokens = kw.pop("tokens")
        model = TextRWKV(**kw)
        return model, lambda: torch.randint(0, kw["vocab_size"], (batch, tokens), generator=gen)
    import timm

    import vision_rwkv  # noqa: F401

    model = timm.create_model(name, num_classes=5, **kwargs)
    return model, lambda: torch.randn(batch, 3, *img, generator=gen)


class _CallCounter:
    """Counts calls of the fused ops (module attributes the models look up at call time) and of the Triton WKV
    entry points while active."""

    def __init__(self):
        self.calls = {}
        self._saved = []

    def _wrap(self, key, fn):
        def counted(*args, **kwargs):
            self.calls[key] = self.calls.get(key, 0) + 1
            return fn(*args, **kwargs)
        return counted

    def __enter__(self):
        from vision_rwkv.ops import fused

        for op in FUSED_OPS:
            self._saved.append((fused, op, getattr(fused, op)))
            setattr(fused, op, self._wrap(op, getattr(fused, op)))
        for name in ("mixing", "vrwkv"):  # the token mixes' batched projection GEMM (looked up in these modules)
            mod = sys.modules[f"vision_rwkv.models.{name}"]
            self._saved.append((mod, "linear_stack", mod.linear_stack))
            mod.linear_stack = self._wrap("linear_stack", mod.linear_stack)
        steps = fused.mixer_steps()  # the one-node mixers of eager training (looked up on the module per call)
        for op in ("time_mix6_step", "spatial_mix_step", "channel_mix_step"):
            self._saved.append((steps, op, getattr(steps, op)))
            setattr(steps, op, self._wrap(f"step:{op[:-5]}", getattr(steps, op)))
        proj = sys.modules["vision_rwkv.models._projections"]  # the mixers' one-launch weight casts (autocast)
        self._saved.append((proj, "cast_weights", proj.cast_weights))
        proj.cast_weights = self._wrap("cast_weights", proj.cast_weights)
        base = sys.modules["vision_rwkv.models._base"]  # the backbones' once-per-step casts (autocast training)
        self._saved.append((base, "cast_weight_groups", base.cast_weight_groups))
        base.cast_weight_groups = self._wrap("cast_weight_groups", base.cast_weight_groups)
        for op in ("bi_wkv", "bi_wkv6"):
            mod = sys.modules[f"vision_rwkv.ops.{op}"]
            impl = mod.triton_impl
            self._saved.append((mod, "triton_impl", impl))
            mod.triton_impl = lambda name, _impl=impl: self._wrap(f"wkv:{name}", _impl(name))
        return self

    def __exit__(self, *exc):
        for owner, attr, value in reversed(self._saved):
            setattr(owner, attr, value)
        self._saved.clear()


@contextlib.contextmanager
def _count_launches(counts: dict):
    """Counts the Triton kernel launches (by kernel name) while active: under ``TRITON_INTERPRET=1`` every launch,
    eager or from a compiled graph's custom op, goes through the interpreter's ``run``."""
    from triton.runtime import interpreter

    run = interpreter.InterpretedFunction.run

    def counted(fn_self, *args, **kwargs):
        name = fn_self.fn.__name__
        counts[name] = counts.get(name, 0) + 1
        return run(fn_self, *args, **kwargs)

    interpreter.InterpretedFunction.run = counted
    try:
        yield counts
    finally:
        interpreter.InterpretedFunction.run = run


def _count_drops(model: torch.nn.Module, drops: list) -> list:
    """Forward hooks on the model's DropPath modules that add (dropped, kept) sample counts to ``drops``."""
    from timm.layers import DropPath

    def hook(module, inputs, out):
        if module.training and module.drop_prob > 0:
            zero = out.detach().flatten(1).abs().sum(1) == 0
            drops[0] += int(zero.sum())
            drops[1] += int((~zero).sum())

    return [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, DropPath)]


def compare(name: str, kwargs: dict, device: str = "cpu", img=(40, 56), batch: int = 2, autocast: bool = False,
            compile_fused: bool | str = False, train: bool = False, infer: bool = False, ckpt: bool = False,
            fx: bool = False) -> dict:
    """Plain vs fused path of ``timm.create_model(name, **kwargs)`` or the text tower, forward and backward (eval
    mode unless ``train``: then both passes draw the same drop-path masks); ``compile_fused`` runs the fused pass
    through ``torch.compile(fullgraph=True, backend='aot_eager')`` (a string: that backend, e.g. ``'inductor'``).
    ``launches`` counts the fused pass's Triton launches by kernel (CPU interpreter only). ``ckpt``: the fused pass
    with activation checkpointing (``set_grad_checkpointing``: its blocks' forwards run again in the backward)."""
    try:
        torch.manual_seed(0)
        gen = torch.Generator().manual_seed(1)
        model, make_input = _build(name, kwargs, gen, img, batch)
        model = model.to(device).train(train)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn(p.shape, generator=gen).to(device) * 0.05)
        x = make_input().to(device)
        results = {}
        counter = _CallCounter()
        drops = [0, 0]
        launches: dict = {}
        hooks = _count_drops(model, drops)
        for backend in ("reference", "triton"):
            os.environ["VRWKV_BACKEND"] = backend
            model.zero_grad()
            torch.manual_seed(2)  # the same drop-path draws in both passes (train mode)
            fwd = model
            if ckpt:
                model.set_grad_checkpointing(backend == "triton")
            if backend == "triton" and compile_fused:
                torch._dynamo.reset()
                fwd = torch.compile(model, fullgraph=True,
                                    backend=compile_fused if isinstance(compile_fused, str) else "aot_eager")
            if backend == "triton" and fx:
                from timm.models import create_feature_extractor

                graph = create_feature_extractor(model, {"head": "logits"})
                fwd = lambda t: graph(t)["logits"]  # noqa: E731
            counted = counter if backend == "triton" and not compile_fused else contextlib.nullcontext()
            interpreted = os.environ.get("TRITON_INTERPRET") == "1" and backend == "triton"
            launched = _count_launches(launches) if interpreted else contextlib.nullcontext()
            with counted, launched, torch.set_grad_enabled(not infer):
                with torch.autocast(device, dtype=torch.bfloat16, enabled=autocast):
                    out = fwd(x)
                if not infer:
                    out.float().square().mean().backward()
            if backend == "reference":
                for h in hooks:
                    h.remove()
            results[backend] = (out.detach().double(),
                                {n: p.grad.detach().double() for n, p in model.named_parameters()
                                 if p.grad is not None})
        (yr, gr), (yf, gf) = results["reference"], results["triton"]
        rel = lambda a, b: ((a - b).norm() / b.norm().clamp_min(1e-30)).item()  # noqa: E731
        grad_errs = {n: rel(gf[n], gr[n]) for n in gr}
        worst = max(grad_errs, key=grad_errs.get) if grad_errs else None
        ordered = sorted(grad_errs.values()) or [0.0]
        return {"y": rel(yf, yr), "grad_max": grad_errs.get(worst, 0.0), "grad_worst": worst,
                "grad_median": ordered[len(ordered) // 2],
                "same_grads": sorted(gr) == sorted(gf), "calls": counter.calls, "drops": drops, "launches": launches,
                "finite": bool(torch.isfinite(yf).all()) and all(bool(torch.isfinite(g).all()) for g in gf.values())}
    except Exception as e:
        return {"error": f"{type(e).__name__}: {e}\n{traceback.format_exc()}"}
    finally:
        os.environ.pop("VRWKV_BACKEND", None)


if __name__ == "__main__":
    torch.set_num_threads(1)
    cases = json.loads(sys.argv[1])
    print(json.dumps({f"{n}|{json.dumps(kw, sort_keys=True)}": compare(n, kw, compile_fused=kw.pop("compile", False),
                                                                       batch=kw.pop("batch", 2),
                                                                       train=kw.pop("train", False),
                                                                       infer=kw.pop("infer", False),
                                                                       ckpt=kw.pop("ckpt", False),
                                                                       fx=kw.pop("fx", False),
                                                                       autocast=kw.pop("autocast", False))
                      for n, kw in cases}))
