#!/usr/bin/env python
"""Backbones vs timm DeiT of the same size, measured in one run on one GPU (images/s, peak memory, ratios).

    python tools/benchmark_backbones.py --out out/h100_backbones.json --md out/h100_backbones.md \
        --res 224 512 1024 --dtypes bf16 fp32 --modes eager compile --train --deadline 500

Inference is ``forward_features`` (no head) under ``torch.inference_mode`` (bf16 autocast for bf16; fp32 with TF32
off, like the anchors); the training step is forward + cross-entropy backward + AdamW at 224, batch 128. Modes:
``eager`` (fused path), ``eager-graph`` (CUDA-graph replays of the eager forward: GPU time without host launch
overhead), ``eager-unfused`` (``VRWKV_FUSED=0``), ``compile`` (``torch.compile(fullgraph=True)``
of the fused path) and ``compile-plain`` (compiled plain elementwise code: inductor's own fusions).
Results are appended to the JSON after every measurement, so a run cut short keeps what it measured; the markdown
table adds the ratio to DeiT and the original implementations' numbers (benchmarks/anchors/backbones.json).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vision_rwkv.benchmark import run_metadata  # noqa: E402
from vision_rwkv.profiling import benchmark_backbones, deit_of, format_benchmark  # noqa: E402

OURS = ["VRWKV-T", "VRWKV-S", "VRWKV-B", "VRWKV6-T", "VRWKV6-S", "VRWKV6-B"]


def plan(models, res_list, dtypes, modes, train, unfused_models, compile_res=None, compile_first=None) -> list:
    """Benchmark configs in priority order (what matters most first, so a deadline cuts the least important):
    eager in the first dtype (+ CUDA-graph replays at the smallest and largest resolution, plain-path rows for
    the ``unfused_models`` among ``models`` and the training step), compiled runs of
    ``compile_first`` (+ their DeiT, a compile-plain row and, with ``train``, the compiled training step), eager in the other dtypes, then the other compiled
    runs (first dtype, ``compile_res`` resolutions, largest first)."""
    def with_deit(ms):
        return list(dict.fromkeys(sum(([m, deit_of(m)] for m in ms), [])))

    labels = with_deit(models)
    first = with_deit([m for m in (compile_first or []) if m in models])
    dt0 = dtypes[0]
    cfgs = []

    def compiled(ms):
        out = []
        for res in sorted(compile_res or res_list, reverse=True):
            out += [dict(model=m, res=res, dtype=dt0, mode="compile", kind="inference") for m in ms]
            out += [dict(model=m, res=res, dtype=dt0, mode="compile-plain", kind="inference")
                    for m in ms if m in unfused_models]
        if train:  # the training step under torch.compile (the tools' train.compile=true)
            out += [dict(model=m, res=224, dtype=dt0, mode="compile", kind="train") for m in ms]
        return out

    if "eager" in modes:
        for res in res_list:
            cfgs += [dict(model=m, res=res, dtype=dt0, mode="eager", kind="inference") for m in labels]
        for res in sorted({res_list[0], res_list[-1]}, reverse=True):
            cfgs += [dict(model=m, res=res, dtype=dt0, mode="eager-graph", kind="inference") for m in labels]
        cfgs += [dict(model=m, res=r, dtype=dt0, mode="eager-unfused", kind="inference")
                 for m in unfused_models if m in models for r in sorted({res_list[0], res_list[-1]})]
        if train:
            cfgs += [dict(model=m, res=224, dtype=dt0, mode="eager", kind="train") for m in labels]
    if "compile" in modes:
        cfgs += compiled(first)
    if "eager" in modes:
        for dtype in dtypes[1:]:
            for res in res_list:
                cfgs += [dict(model=m, res=res, dtype=dtype, mode="eager", kind="inference") for m in labels]
    if "compile" in modes:
        cfgs += compiled([m for m in labels if m not in first])
    return cfgs


def main(argv=None) -> list:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=OURS, choices=OURS)
    ap.add_argument("--res", nargs="+", type=int, default=[224, 512, 1024])
    ap.add_argument("--dtypes", nargs="+", default=["bf16", "fp32"], choices=["bf16", "fp32"])
    ap.add_argument("--modes", nargs="+", default=["eager", "compile"], choices=["eager", "compile"])
    ap.add_argument("--compile-res", nargs="+", type=int, default=None,
                    help="resolutions of the compiled runs (default --res)")
    ap.add_argument("--compile-first", nargs="*", default=["VRWKV-T", "VRWKV6-T"],
                    help="models whose compiled runs come before the second dtype")
    ap.add_argument("--train", action="store_true", help="also time a training step at 224 (first dtype)")
    ap.add_argument("--unfused", nargs="*", default=["VRWKV-T", "VRWKV6-T"],
                    help="those of --models also timed on the plain path (VRWKV_FUSED=0)")
    ap.add_argument("--deadline", type=float, default=float("inf"), help="stop starting configs after this many s")
    root = Path(__file__).resolve().parents[1]
    anchors = next((p for p in (root / "benchmarks" / "anchors" / "backbones.json",
                                root.parent / "shared" / "anchors" / "backbones.json") if p.is_file()), None)
    ap.add_argument("--anchors", type=Path, default=anchors, help="the originals' numbers (backbones.json)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--md", type=Path, default=None)
    ap.add_argument("--dry-run", action="store_true", help="print the plan and exit")
    args = ap.parse_args(argv)
    cfgs = plan(args.models, args.res, args.dtypes, args.modes, args.train, args.unfused or [], args.compile_res,
                args.compile_first)
    if args.dry_run:
        for c in cfgs:
            print(c)
        return cfgs
    if not torch.cuda.is_available():
        ap.error("needs a CUDA device")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    meta = dict(run_metadata("cuda"), device=torch.cuda.get_device_name(), tf32=False)
    done = []
    args.out.parent.mkdir(parents=True, exist_ok=True)

    def save(res):
        done.append(res)
        print(json.dumps(res), flush=True)
        args.out.write_text(json.dumps({"meta": meta, "results": done}, indent=1))

    results = benchmark_backbones(cfgs, deadline_s=args.deadline, on_result=save)
    skipped = [r for r in results if "skipped" in r]
    args.out.write_text(json.dumps({"meta": meta, "results": done + skipped}, indent=1))
    anchors = json.loads(args.anchors.read_text()) if args.anchors and args.anchors.is_file() else None
    table = format_benchmark(results, anchors)
    print(table)
    if args.md:
        args.md.write_text(f"# Backbones vs DeiT ({meta['device']}, torch {meta['torch']})\n\n{table}\n")
    return results


if __name__ == "__main__":
    main()
