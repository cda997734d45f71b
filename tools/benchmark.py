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
Exit status: 2 for an argument mistake (nothing runs: e.g. --device cuda without a GPU, a v6 shape whose C is not a
multiple of 64), 1 when every row of a table failed (the JSON is still written), else 0.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

from vision_rwkv import benchmark as bm
from vision_rwkv.ops._triton_utils import triton_interpret


def _parse_shapes(text: str | None):
    """'B,T,C;B,T,C' -> [(B, T, C), ...] (None when not given); a ValueError naming the bad item."""
    if not text:
        return None
    shapes = []
    for item in filter(None, (s.strip() for s in text.split(";"))):
        try:
            shape = tuple(int(x) for x in item.split(","))
        except ValueError:
            shape = ()
        if len(shape) != 3:
            raise ValueError(f"expected 'B,T,C;B,T,C' (three integers per shape), got {item!r}")
        shapes.append(shape)
    if not shapes:
        raise ValueError(f"no shape in {text!r}")
    return shapes


def _parse_batches(items: list[str] | None) -> dict | None:
    """['224=8', ...] -> {224: 8, ...} (None when not given); a ValueError naming the bad item."""
    if not items:
        return None
    out = {}
    for item in items:
        res, sep, batch = item.partition("=")
        try:
            out[int(res)] = int(batch)
        except ValueError:
            raise ValueError(f"expected RES=BATCH (e.g. 224=8), got {item!r}") from None
        if not sep or int(res) < 1 or int(batch) < 1:
            raise ValueError(f"expected RES=BATCH with both >= 1 (e.g. 224=8), got {item!r}")
    return out


def _check_args(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Usage errors (status 2) for what would otherwise fail every row, or time something other than asked."""
    try:
        dev = torch.device(args.device)
    except RuntimeError:
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda"):
        p.error(f"--device must be cpu or cuda[:N], got {args.device!r}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device here (use --device cpu for a CPU run)")
    if dev.type == "cpu" and "triton" in (args.backend or ()) and not triton_interpret():
        p.error("--backend triton needs --device cuda (or TRITON_INTERPRET=1: Triton's CPU interpreter, tiny shapes)")
    for name in ("iters", "train_batch"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.warmup is not None and args.warmup < 0:
        p.error(f"--warmup must be >= 0, got {args.warmup}")
    try:
        args.shapes = _parse_shapes(args.shapes)
        for op in args.op or ("v4_biwkv", "v6_biwkv"):
            for shape in args.shapes or ():
                bm.op_shape(op, shape)
    except ValueError as e:
        p.error(f"--shapes: {e}")
    try:
        args.batch = _parse_batches(args.batch)
    except ValueError as e:
        p.error(f"--batch: {e}")
    bad_res = [r for r in args.res or () if r < 1]
    if bad_res:
        p.error(f"--res must be >= 1, got {bad_res[0]}")
    if args.backbones and args.model:
        import timm

        unknown = [m for m in args.model if not timm.is_model(m)]
        if unknown:
            p.error(f"--model {unknown[0]!r} is not a timm model (ours: {', '.join(bm.BACKBONES)})")


def _backbone_plan(p: argparse.ArgumentParser, args: argparse.Namespace) -> tuple:
    """(models, resolutions, batches) of the backbone rows (--quick: two tiny models at 64 px, batch 1); a usage
    error, before anything runs, for a resolution without a batch."""
    models, res, batches = args.model, args.res, args.batch
    if args.quick:
        models = models or ["vrwkv_tiny_patch16_224", "vrwkv6_tiny_patch16_224"]
        res = res or [64]
        batches = batches or {r: 1 for r in res}
    res = () if args.train_only else res or (224, 512, 1024)
    try:
        bm.backbone_batches(args.device, res, batches)
    except ValueError as e:
        p.error(f"--batch: {e}")
    return models, res, batches


def _failed_sections(out: dict) -> list[str]:
    """The sections (ops, gemm, backbones) whose rows all failed: the run measured nothing there."""
    return [key for key in ("ops", "gemm", "backbones")
            if out.get(key) and all("error" in r for r in out[key])]


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
    _check_args(p, args)
    backbone_plan = _backbone_plan(p, args) if args.backbones else None
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        bm.apply_kernel_config(args.kernel_config)
    except ValueError as e:
        raise SystemExit(f"--kernel-config: {e}")
    dtypes = args.dtype or ["fp32", "bf16"]
    iters = args.iters if args.iters is not None else (2 if args.quick else 20)
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
        shapes = args.shapes or ([(2, 40, 64), (1, 300, 64)] if args.quick else None)
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
        models, res, batches = backbone_plan
        train_batch = args.train_batch if args.train_batch is not None else (2 if args.quick else 128)
        rows = bm.bench_backbones(args.device, models, res, batches, dtypes,
                                  train=not args.no_train, train_batch=train_batch, iters=iters,
                                  warmup=warmup, with_deit=not args.no_deit, progress=tick, graph=args.graph)
        out["backbones"] = rows
        print("\n## Backbones\n")
        print(bm.format_table(rows, bm.BACKBONE_COLUMNS))
    if args.out:
        save()
        print(f"\nwrote {args.out}")
    failed = _failed_sections(out)
    if failed:
        first = next(r["error"] for r in out[failed[0]] if "error" in r)
        print(f"error: every {' and every '.join(failed)} row failed (first: {first})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
