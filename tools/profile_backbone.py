#!/usr/bin/env python
"""Per-op share-of-time table of whole backbones (torch.profiler), fused path vs plain path.

    python tools/profile_backbone.py --models VRWKV-T VRWKV6-T --img-size 1024 --batch 8 --dtype bf16 \
        --json out/profile.json --md out/profile.md

For every model, profiles the inference forward twice: the fused path and, unless ``--no-compare-unfused``, the
plain path (``VRWKV_FUSED=0``; the WKV keeps its Triton kernel), and prints a markdown table of the share of device
time per group (WKV, shift+lerp, GEMMs, attention, norms, casts/copies, elementwise/other). Where the models' fused
path is off (CPU tensors, unless ``TRITON_INTERPRET=1`` and ``VRWKV_BACKEND=triton``; or ``VRWKV_FUSED=0``), both
would run the same plain code: each model is then profiled once, as "plain", with a note saying so.
``--train`` profiles a whole training step instead (forward in train mode, cross-entropy backward, fused AdamW;
the backward's kernels are attributed through our autograd Functions' backward nodes):

    python tools/profile_backbone.py --train --models VRWKV-T VRWKV6-T DeiT-T --img-size 224 --batch 128 \
        --no-compare-unfused --md out/profile_train.md

``--device cpu`` profiles CPU ops instead of CUDA kernels (smoke test; the plain path only).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vision_rwkv.ops.fused import fused_enabled  # noqa: E402
from vision_rwkv.profiling import (BACKBONES, build_backbone, format_profile, profile_backbone,  # noqa: E402
                                   train_step)


def _workload(label: str, args: argparse.Namespace, dtype) -> Callable[[], object]:
    """What is profiled for one model: a training step (``--train``) or the inference forward of its features."""
    model = build_backbone(label, args.img_size, num_classes=1000 if args.train else 0, device=args.device)
    x = torch.randn(args.batch, 3, args.img_size, args.img_size, device=args.device)
    if args.train:
        return train_step(model, x, torch.randint(0, 1000, (args.batch,), device=args.device), dtype)
    model.eval()

    def forward():
        with torch.inference_mode(), torch.autocast(args.device, dtype=dtype or torch.float32,
                                                    enabled=dtype is not None):
            return model.forward_features(x)

    return forward


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=["VRWKV-T", "VRWKV6-T"], choices=sorted(BACKBONES))
    ap.add_argument("--img-size", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--dtype", choices=("fp32", "bf16"), default="bf16")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--train", action="store_true", help="profile a training step, not the inference forward")
    ap.add_argument("--compare-unfused", action=argparse.BooleanOptionalAction, default=True,
                    help="also profile the plain path (VRWKV_FUSED=0) next to the fused one (default: on)")
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    ap.add_argument("--json", type=Path, default=None, help="write the full results here")
    ap.add_argument("--md", type=Path, default=None, help="write the markdown table here")
    args = ap.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("no CUDA device (use --device cpu for a CPU smoke run)")
    dtype = torch.bfloat16 if args.dtype == "bf16" else None
    results = {}
    if fused_enabled(torch.empty(1, device=args.device)):
        variants = [("fused", None)] + ([("plain", "0")] if args.compare_unfused else [])
    else:  # a "fused" column would run the plain code again: a comparison of noise
        variants = [("plain", None)]
        print(f"note: the models' fused path is off for {args.device} tensors here (it needs CUDA, or "
              "TRITON_INTERPRET=1 with VRWKV_BACKEND=triton, and VRWKV_FUSED not 0): profiling the plain path only",
              file=sys.stderr)
    for label in args.models:
        fn = _workload(label, args, dtype)
        for vname, env in variants:
            if label.startswith("DeiT") and env is not None:
                continue  # (DeiT has no fused path: profiled once)
            old = os.environ.get("VRWKV_FUSED")
            if env is not None:
                os.environ["VRWKV_FUSED"] = env
            try:
                name = label if label.startswith("DeiT") else f"{label} {vname}"
                results[name] = profile_backbone(fn, steps=args.steps, device=args.device)
                results[name]["config"] = dict(model=label, variant=vname, img_size=args.img_size,
                                               batch=args.batch, dtype=args.dtype, train=args.train)
            finally:
                if old is None:
                    os.environ.pop("VRWKV_FUSED", None)
                else:
                    os.environ["VRWKV_FUSED"] = old
        fn = None  # free the model before the next one
    table = format_profile(results)
    what = "training step (forward, backward, AdamW)" if args.train else "inference forward_features"
    header = (f"Share of {args.device} time per op group, {what}, {args.img_size}x"
              f"{args.img_size}, batch {args.batch}, {args.dtype}\n\n")
    print(header + table)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1))
    if args.md:
        args.md.parent.mkdir(parents=True, exist_ok=True)
        tops = []
        for name, r in results.items():
            tops.append(f"\n### {name}: top kernels\n\n| kernel | group | ms/step | calls/step |\n|---|---|---|---|")
            tops += [f"| `{t['kernel'][:80]}` | {t['group']} | {t['ms']:.3f} | {t['calls']:.0f} |" for t in r["top"][:12]]
        args.md.write_text(header + table + "\n" + "\n".join(tops) + "\n")
    return results


if __name__ == "__main__":
    main()
