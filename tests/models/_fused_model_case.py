"""Run a tiny model's forward + backward twice - plain-PyTorch path vs fused Triton path - and print JSON errors.

Run as a script in a subprocess with ``TRITON_INTERPRET=1`` (CPU; ``test_fused_path.py``) or imported on CUDA:
``python _fused_model_case.py '<json list of [name, kwargs]>'``. The WKV operators run on the reference backend in
both passes (``backend`` forced per op is not exposed by the models, so the fused pass sets
``VRWKV_BACKEND=triton`` and the Triton WKV kernels run too); the comparison is relative 2-norm error of the logits
and of every parameter gradient. Fused outputs are NaN-poisoned (``VRWKV_TRITON_DEBUG=1``).
"""
from __future__ import annotations

import json
import os
import sys
import traceback

import torch


def compare(name: str, kwargs: dict, device: str = "cpu", img=(40, 56), batch: int = 2, autocast: bool = False,
            compile_fused: bool = False) -> dict:
    """Plain vs fused path of ``timm.create_model(name, **kwargs)`` (eval mode: no drop-path draws), forward and
    backward; ``compile_fused`` runs the fused pass through ``torch.compile(fullgraph=True, backend='aot_eager')``."""
    import timm

    import vision_rwkv  # noqa: F401

    try:
        torch.manual_seed(0)
        model = timm.create_model(name, num_classes=5, **kwargs).to(device).eval()  # eval: no drop path draws
        gen = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn(p.shape, generator=gen).to(device) * 0.05)
        x = torch.randn(batch, 3, *img, generator=gen).to(device)
        results = {}
        for backend in ("reference", "triton"):
            os.environ["VRWKV_BACKEND"] = backend
            model.zero_grad()
            fwd = model
            if backend == "triton" and compile_fused:
                torch._dynamo.reset()
                fwd = torch.compile(model, fullgraph=True, backend="aot_eager")
            with torch.autocast(device, dtype=torch.bfloat16, enabled=autocast):
                out = fwd(x)
            out.float().square().mean().backward()
            results[backend] = (out.detach().double(),
                                {n: p.grad.detach().double() for n, p in model.named_parameters()
                                 if p.grad is not None})
        (yr, gr), (yf, gf) = results["reference"], results["triton"]
        rel = lambda a, b: ((a - b).norm() / b.norm().clamp_min(1e-30)).item()  # noqa: E731
        grad_errs = {n: rel(gf[n], gr[n]) for n in gr}
        worst = max(grad_errs, key=grad_errs.get)
        ordered = sorted(grad_errs.values())
        return {"y": rel(yf, yr), "grad_max": grad_errs[worst], "grad_worst": worst,
                "grad_median": ordered[len(ordered) // 2],
                "same_grads": sorted(gr) == sorted(gf),
                "finite": bool(torch.isfinite(yf).all()) and all(bool(torch.isfinite(g).all()) for g in gf.values())}
    except Exception as e:
        return {"error": f"{type(e).__name__}: {e}\n{traceback.format_exc()}"}
    finally:
        os.environ.pop("VRWKV_BACKEND", None)


if __name__ == "__main__":
    torch.set_num_threads(1)
    cases = json.loads(sys.argv[1])
    print(json.dumps({f"{n}|{json.dumps(kw, sort_keys=True)}": compare(n, kw, compile_fused=kw.pop("compile", False))
                      for n, kw in cases}))
