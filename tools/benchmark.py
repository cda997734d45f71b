#!/usr/bin/env python3
"""Benchmark the Bi-WKV operators, the GEMM-epilogue ops and the backbones; prints markdown tables and writes JSON.

Examples:
  python tools/benchmark.py --ops --device cuda --out benchmarks/results/h100_ops.json
  python tools/benchmark.py --gemm --device cuda --kernel-config gemm.bm=64     # fused GEMMs vs cuBLAS + kernel
  python tools/benchmark.py --mix-gemm --dtype bf16 --kernel-config mix.bm=64    # the mixed-operand rows alone
  python tools/benchmark.py --backbones --device cuda --dtype bf16 --out bb.json
  python tools/benchmark.py --ops --backbones --device cpu --quick          # tiny CPU smoke run
  python tools/benchmark.py --backbones --device cpu --dtype fp32 --res 224 --batch 224=8 --train-batch 8  # CPU
Kernel launch settings can be overridden for sweeps: --kernel-config v4.chunk_t=128 --kernel-config v6.warps=8
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

from vision_rwkv import benchmark as bm


def _parse_shapes(text: str | None):
    if not text:
        return None
    return [tuple(int(x) for x in s.split(",")) for s in text.split(";") if s]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ops", action="store_true", help="operator table")
    p.add_argument("--gemm", action="store_true",
                   help="GEMM-epilogue table (fused vs cuBLAS + elementwise; mixed-operand GEMMs vs the shift pass + "
                        "cuBLAS)")
    p.add_argument("--mix-gemm", action="store_true",
                   help="only the mixed-operand part of the GEMM table (the ops of VRWKV_FUSED_MIX / _MLP: a tile "
                        "sweep's table, with --kernel-config mix.KEY=VAL)")
    p.add_argument("--backbones", action="store_true", help="backbone table")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", action="append", choices=list(bm.DTYPES), help="repeatable; default fp32 and bf16")
    p.add_argument("--out", help="write all rows (and metadata) to this JSON file")
    p.add_argument("--quick", action="store_true", help="tiny shapes / batches, few iterations (smoke test)")
    p.add_argument("--iters", type=int, default=None, help="timed repetitions (median; default 20, quick 2)")
    p.add_argument("--warmup", type=int, default=None, help="untimed calls first (default 3, quick 1)")
    p.add_argument("--shapes", help="op shapes 'B,T,C;B,T,C' (v6 uses H = C/64)")
    p.add_argument("--op", action="append", choices=["v4_biwkv", "v6_biwkv"], help="repeatable; default both")
    p.add_argument("--v4-mode", action="append", choices=["exact", "original"], help="repeatable; default both")
    p.add_argument("--backend", action="append", choices=["reference", "triton"],
                   help="repeatable; default triton on CUDA, reference on CPU")
    p.add_argument("--model", action="append", help="backbone(s); default all of vision_rwkv.benchmark.BACKBONES")
    p.add_argument("--res", action="append", type=int, help="resolution(s); default 224 512 1024")
    p.add_argument("--batch", action="append", help="RES=BATCH, repeatable")
    p.add_argument("--no-train", action="store_true", help="skip the training-step rows")
    p.add_argument("--train-only", action="store_true",
                   help="only the training-step rows (224 px; with --kernel-config settings picked for training)")
    p.add_argument("--train-batch", type=int, default=None,
                   help="batch of the training-step rows (default 128, quick 2; on CPU e.g. 8)")
    p.add_argument("--graph", action="store_true",
                   help="backbones: also time inference and the training step as CUDA-graph replays (no Python / "
                        "launch overhead; CUDA only)")
    p.add_argument("--no-deit", action="store_true", help="skip the DeiT rows")
    p.add_argument("--kernel-config", action="append",
                   help="v4. / v6. / gemm. / mix. / norm. / mlp.KEY=VAL (Triton launch settings)")
    args = p.parse_args(argv)
    if not (args.ops or args.gemm or args.mix_gemm or args.backbones):
        p.error("choose --ops, --gemm (or --mix-gemm) and/or --backbones")
    if args.gemm and args.mix_gemm:
        p.error("--gemm includes the mixed-operand rows; --mix-gemm is that part alone: pass one of them")
    if args.train_only and (args.no_train or args.res):
        p.error("--train-only runs the training rows (224 px) alone: not with --no-train or --res")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        bm.apply_kernel_config(args.kernel_config)
    except ValueError as e:
        raise SystemExit(f"--kernel-config: {e}")
    dtypes = args.dtype or ["fp32", "bf16"]
    iters = args.iters or (2 if args.quick else 20)
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 3)
    meta = dict(bm.run_metadata(args.device), device=args.device, iters=iters, warmup=warmup,
                argv=sys.argv[1:] if argv is None else list(argv))
    out: dict = {"meta": meta}
    section = {"key": "ops"}  # where tick() files its rows until the section's full list replaces them

    def save() -> None:
        if args.out:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(f"{args.out}.tmp")
            tmp.write_text(json.dumps(out, indent=1))
            os.replace(tmp, args.out)

    def tick(r: dict) -> None:
        """Print a row as it comes and keep the JSON up to date: a run cut short (a timeout) keeps what it measured."""
        print("  " + json.dumps({k: r[k] for k in r if k in ("op", "model", "wkv_mode", "dtype", "shape", "res", "mode",
                                                              "train", "ms", "img_per_s", "error", "epilogue", "impl",
                                                              "M", "K", "N")}), flush=True)
        out.setdefault(section["key"], []).append(r)
        save()

    if args.ops:
        shapes = _parse_shapes(args.shapes) or ([(2, 40, 64), (1, 300, 64)] if args.quick else None)
        rows = bm.bench_ops(args.device, dtypes, shapes, ops=args.op or ("v4_biwkv", "v6_biwkv"),
                            backends=args.backend, v4_modes=args.v4_mode or ("exact", "original"), iters=iters,
                            warmup=warmup, progress=tick)
        out["ops"] = rows
        print("\n## Operators\n")
        print(bm.format_table(rows, bm.OPS_COLUMNS))
    if args.gemm or args.mix_gemm:
        section["key"] = "gemm"
        shapes = ([(300, 40, 72, "relu_square"), (300, 40, 40, "sigmoid_mul"), (300, 40, 32, "tanh"),
                   (300, 16, 40, "decay")] if args.quick else None)
        rows = [] if args.mix_gemm else bm.bench_gemm_epilogues(args.device, args.dtype or ["bf16"], shapes,
                                                                iters=iters, warmup=warmup, progress=tick)
        mix_shapes = [(1, 5, 6, 64, v) for v in ("v4x3", "v6x5", "v6gn", "mlp", "res")] if args.quick else None
        rows += bm.bench_mix_gemms(args.device, args.dtype or ["bf16"], mix_shapes, iters=iters, warmup=warmup,
                                   progress=tick)
        out["gemm"] = rows
        print("\n## GEMM epilogues\n")
        print(bm.format_table(rows, bm.GEMM_COLUMNS))
    if args.backbones:
        section["key"] = "backbones"
        batches = {int(b.split("=")[0]): int(b.split("=")[1]) for b in args.batch} if args.batch else None
        models = args.model
        res = args.res
        if args.quick:
            models = models or ["vrwkv_tiny_patch16_224", "vrwkv6_tiny_patch16_224"]
            res = res or [64]
            batches = batches or {r: 1 for r in res}
        train_batch = args.train_batch or (2 if args.quick else 128)
        rows = bm.bench_backbones(args.device, models, () if args.train_only else res or (224, 512, 1024), batches,
                                  dtypes,
                                  train=not args.no_train, train_batch=train_batch, iters=iters,
                                  warmup=warmup, with_deit=not args.no_deit, progress=tick, graph=args.graph)
        out["backbones"] = rows
        print("\n## Backbones\n")
        print(bm.format_table(rows, bm.BACKBONE_COLUMNS))
    if args.out:
        save()
        print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
