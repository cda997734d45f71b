"""Small forward+backward calls of every Triton kernel variant, meant to run under compute-sanitizer (memcheck):
single-chunk and multi-chunk v4 paths in both modes, fp32 and bf16, odd sizes, and the RWKV-6 kernels.
Prints one line per case; exits non-zero if an output is non-finite."""
import os
import sys

import torch

os.environ.setdefault("VRWKV_TRITON_DEBUG", "1")
from vision_rwkv.ops.bi_wkv import triton as v4  # noqa: E402
from vision_rwkv.ops.bi_wkv6 import triton as v6  # noqa: E402

dev = "cuda"
bad = 0
torch.manual_seed(0)
cases = [((2, 37, 40), "exact", 32, {}), ((2, 300, 40), "exact", 32, {}), ((1, 301, 33), "original", 32, {}),
         ((2, 53, 17), "original", 4, {"chunk_t": 8}), ((1, 1, 5), "exact", 32, {})]
for (B, T, C), mode, P, cfg in cases:
    for dt in (torch.float32, torch.bfloat16):
        old = dict(v4.CONFIG)
        v4.CONFIG.update(cfg)
        w = (torch.randn(C, device=dev) / T).requires_grad_()
        u = (torch.randn(C, device=dev) / T).requires_grad_()
        k = torch.randn(B, T, C, device=dev, dtype=dt).requires_grad_()
        v = torch.randn(B, T, C, device=dev, dtype=dt).requires_grad_()
        y = v4.bi_wkv_triton(w, u, k, v, mode, P)
        y.backward(torch.randn_like(y))
        ok = all(torch.isfinite(t).all().item() for t in (y, w.grad, u.grad, k.grad, v.grad))
        bad += not ok
        print("v4", (B, T, C), mode, P, dt, "ok" if ok else "NON-FINITE", flush=True)
        v4.CONFIG.clear()
        v4.CONFIG.update(old)
for (B, T, H, N) in [(2, 37, 2, 64), (1, 20, 1, 80), (1, 1, 1, 64)]:
    for dt in (torch.float32, torch.bfloat16):
        r, k, v = (torch.randn(B, T, H, N, device=dev, dtype=dt).requires_grad_() for _ in range(3))
        logd = (-torch.exp(torch.randn(B, T, H, N, device=dev))).to(dt).requires_grad_()
        u = torch.randn(H, N, device=dev).requires_grad_()
        y = v6.bi_wkv6_triton(r, k, v, logd, u)
        y.backward(torch.randn_like(y))
        ok = all(torch.isfinite(t).all().item() for t in (y, r.grad, k.grad, v.grad, logd.grad, u.grad))
        bad += not ok
        print("v6", (B, T, H, N), dt, "ok" if ok else "NON-FINITE", flush=True)
torch.cuda.synchronize()
print("sanitize cases done, bad =", bad)
sys.exit(1 if bad else 0)
