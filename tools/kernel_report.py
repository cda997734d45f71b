#!/usr/bin/env python3
"""Static report of the Bi-WKV Triton kernels compiled for an H100 (sm_90), on a machine WITHOUT a GPU.

Runs each operator's forward and backward host code on CPU tensors of the given shape with every Triton launch
compiled ahead of time and recorded instead of run, then prints per kernel: grid, warps, registers, stack / local
memory (spills), shared memory, and static SASS counts (instructions, global loads and how many are 16-byte /
16-bit, stores, shuffles, barriers, special-function ops, tensor-core and fp64 ops). ``thr_instr/elem`` =
static instructions x launched threads / elements: exact for loop-free kernels, a lower bound for kernels with loops.

Examples:
  python tools/kernel_report.py --op v4_biwkv --shape 16,4096,192 --dtype bf16 --variant scan --variant seq:v4.seq=1
  python tools/kernel_report.py --op v6_biwkv --shape 16,4096,192 --variant walk --variant chunk:v6.algo=chunk
  python tools/kernel_report.py --op linear_relu_square --shape 65536,192,768 --variant bm128 --variant bm64:gemm.bm=64
  python tools/kernel_report.py --op mix_v6x5 --shape 16,4096,192 --variant wide --variant m64:mix.bm=64,mix.bn=64
GEMM-epilogue ops take --shape M,K,N and report their forward kernel (elements = M x N outputs). The operand-forming
GEMMs of VRWKV_FUSED_MIX (mix_v4x3, mix_v6x5: a token mix's projections; norm_gemm: the VRWKV6 output projection)
take B,T,C and add warp_instr_M, the dynamic warp instructions (millions) with the main loop once per K step.
A variant is NAME[:OP.KEY=VAL,...] (the same settings as tools/benchmark.py --kernel-config).
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import sys
from pathlib import Path

import torch

from vision_rwkv import benchmark as bm
from vision_rwkv.kernel_report import CuobjdumpError, capture_kernels, format_rows, kernel_rows


def _parse_variant(text: str) -> tuple[str, list[str]]:
    name, _, settings = text.partition(":")
    return name, [s for s in settings.split(",") if s]


GEMM_OPS = ("linear_relu_square", "linear_sigmoid_mul")


def _with_variants(variants: list[tuple[str, list[str]]], body) -> list[dict]:
    """Run ``body(name)`` once per variant with its launch settings applied (restored afterwards); rows joined."""
    saved = {k: copy.deepcopy(v) for k, v in bm.kernel_configs().items()}
    rows = []
    try:
        for name, settings in variants:
            for key, cfg in bm.kernel_configs().items():
                cfg.clear()
                cfg.update(saved[key])
            bm.apply_kernel_config(settings)
            rows += body(name)
    finally:
        for key, cfg in bm.kernel_configs().items():
            cfg.clear()
            cfg.update(saved[key])
    return rows


def _gemm_report(op: str, shape: tuple, dtype: str, variants: list[tuple[str, list[str]]], arch: int) -> list[dict]:
    """Rows for the forward GEMM-epilogue kernel of ``op`` at (M, K, N)."""
    from vision_rwkv.ops.fused import linear_triton as lt

    M, K, N = shape
    dt = bm.DTYPES[dtype]
    x, w, y = torch.empty(M, K, dtype=dt), torch.empty(N, K, dtype=dt), torch.empty(M, N, dtype=dt)

    def body(name):
        with capture_kernels(arch, tag=f"{name}/fwd") as recs:
            if op == "linear_relu_square":
                lt.linear_relu_square_triton(x, w)  # no gradient needed: the bare forward
            else:
                lt._sigmoid_mul_fwd(x, w, y, save_pre=True)
        rows = kernel_rows(recs)
        for row in rows:
            row["thr_instr/elem"] = round(row["instr"] * row["programs"] * row["warps"] * 32 / (M * N), 1)
        return rows
    return _with_variants(variants, body)


OPERAND_OPS = ("mix_v4x3", "mix_v6x5", "norm_gemm")  # GEMMs forming their operand while loading it (VRWKV_FUSED_MIX)


def _operand_report(op: str, shape: tuple, dtype: str, variants: list[tuple[str, list[str]]], arch: int) -> list[dict]:
    """Rows for the forward launches of a token mix's projections (the v4 key, value, receptance; the v6 five with
    their LoRA offsets, heads of 64) or of the VRWKV6 output projection on GroupNorm * gate, at (B, T, C) on a
    square grid, with ``warp_instr_M``: the dynamic warp instructions (millions) when the longest loop runs once per
    K step (mix: C / bk; norm: one head of 64 per step) and the rest once."""
    from vision_rwkv.ops.fused import mix_group_triton as mg
    from vision_rwkv.ops.fused import mix_linear_triton as ml
    from vision_rwkv.ops.fused import norm_linear_triton as nl

    B, T, C = shape
    side = math.isqrt(T)
    dt = bm.DTYPES[dtype]
    x = torch.empty(B, T, C, dtype=dt)
    P = 3 if op == "mix_v4x3" else 5
    coefs, ws = [torch.empty(C, dtype=dt) for _ in range(P)], [torch.empty(C, C, dtype=dt) for _ in range(P)]
    h, w2 = torch.empty(B, T, P * 32, dtype=dt), torch.empty(P, 32, C, dtype=dt)

    def body(name):
        with capture_kernels(arch, tag=f"{name}/fwd") as recs:
            if op == "norm_gemm":
                nl._fwd(x, x, C // 64, torch.empty(C), torch.empty(C), 1e-5, True, ws[0])
            elif op == "mix_v4x3":
                mg._group_fwd(x, side, side, 0, None, None, True, coefs, ws)
            else:  # groups of at most 4 per launch, as mix_linear_group runs them
                for i in range(0, P, mg.MAX_GROUP):
                    j = min(P, i + mg.MAX_GROUP)
                    mg._group_fwd(x, side, side, 64, h[..., i * 32:j * 32], w2[i:j], False, coefs[i:j], ws[i:j])
        rows = kernel_rows(recs)
        trips = C // 64 if op == "norm_gemm" else math.ceil(C / ml.CONFIG["bk"])
        for row in rows:
            per_warp = row["loop_instr"] * trips + row["instr"] - row["loop_instr"]
            row["warp_instr_M"] = round(row["programs"] * row["warps"] * per_warp / 1e6, 1)
        return rows
    return _with_variants(variants, body)


def report(op: str, shape: tuple, dtype: str, variants: list[tuple[str, list[str]]], mode: str = "exact",
           arch: int = 90) -> list[dict]:
    """Rows of ``kernel_rows`` for each variant's forward and backward launches (tag "<variant>/fwd|bwd")."""
    from vision_rwkv.ops.bi_wkv import triton as t4
    from vision_rwkv.ops.bi_wkv6 import triton as t6

    if op in GEMM_OPS:
        return _gemm_report(op, shape, dtype, variants, arch)
    if op in OPERAND_OPS:
        return _operand_report(op, shape, dtype, variants, arch)
    shape_op = shape if op == "v4_biwkv" else (shape[0], shape[1], shape[2] // 64, 64)
    ins = bm._op_inputs(op, shape_op, bm.DTYPES[dtype], "cpu")
    elems = math.prod(shape)

    def body(name):
        with capture_kernels(arch, tag=f"{name}/fwd") as fwd_recs:
            if op == "v4_biwkv":
                y, m, car = t4._fwd(*ins, mode, 32)
            else:
                y = t6._fwd(*ins)
        with capture_kernels(arch, tag=f"{name}/bwd") as bwd_recs:
            if op == "v4_biwkv":
                t4._bwd(*ins, m, car, torch.randn_like(y), mode, 32)
            else:
                t6._bwd(*ins, torch.randn_like(y))
        rows = kernel_rows(fwd_recs + bwd_recs)
        for row in rows:
            row["thr_instr/elem"] = round(row["instr"] * row["programs"] * row["warps"] * 32 / elems, 1)
        return rows
    return _with_variants(variants, body)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--op", choices=["v4_biwkv", "v6_biwkv", *GEMM_OPS, *OPERAND_OPS], default="v4_biwkv")
    p.add_argument("--shape", default="16,4096,192",
                   help="B,T,C (v6: H = C/64 heads of 64; mix / norm ops: T a square grid); GEMM ops: M,K,N")
    p.add_argument("--dtype", choices=list(bm.DTYPES), default="bf16")
    p.add_argument("--mode", choices=["exact", "original"], default="exact", help="v4 mode")
    p.add_argument("--variant", action="append", help="NAME[:OP.KEY=VAL,...], repeatable; default: current settings")
    p.add_argument("--arch", type=int, default=90, help="compute capability x10 (90 = H100/H200)")
    p.add_argument("--json", type=Path, help="write the rows here")
    args = p.parse_args(argv)
    try:
        shape = tuple(int(x) for x in args.shape.split(","))
    except ValueError:
        shape = ()
    if (len(shape) != 3 or min(shape) < 1
            or (args.op in ("v6_biwkv", "mix_v6x5", "norm_gemm") and shape[2] % 64)):
        p.error(f"--shape must be B,T,C (C a multiple of 64 for v6) or M,K,N, each >= 1, got {args.shape!r}")
    if args.op in OPERAND_OPS and math.isqrt(shape[1]) ** 2 != shape[1]:
        p.error(f"--op {args.op} runs on a square token grid: T must be a square, got {shape[1]}")
    variants = [_parse_variant(v) for v in (args.variant or ["default"])]
    try:
        rows = report(args.op, shape, args.dtype, variants, args.mode, args.arch)
    except (ValueError, FileNotFoundError, CuobjdumpError) as e:
        raise SystemExit(f"kernel_report: {e}")
    print(f"{args.op} {args.mode if args.op == 'v4_biwkv' else ''} shape {shape} {args.dtype}, sm_{args.arch}, "
          f"static SASS counts\n")
    table = format_rows(rows)
    lines = table.splitlines()
    extra = "warp_instr_M" if args.op in OPERAND_OPS else "thr_instr/elem"
    lines[0] += f" {extra} |"
    lines[1] += "---|"
    for i, r in enumerate(rows):
        lines[i + 2] += f" {r[extra]} |"
    print("\n".join(lines))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(dict(op=args.op, shape=shape, dtype=args.dtype, mode=args.mode,
                                             arch=args.arch, rows=rows), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
