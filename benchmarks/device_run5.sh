#!/bin/bash
# Device plan, rounds 4-5 (see benchmarks/results/README.md, "Round 4" and "Round 5"): validate and time the kernels
# written without a GPU in sessions 4-5 -- v4 register-sequential kernels (VRWKV_TRITON_V4 seq=1), v6 chunk-parallel
# kernels (VRWKV_TRITON_V6 algo=chunk), GEMMs with relu^2 / sigmoid-gate epilogues (VRWKV_FUSED_GEMM=1) -- against
# the current defaults. Two calls of <= 10 min:
#   bash benchmarks/device_run5.sh tests    # compile, CUDA tests of the new variants (+ the exact_1x65537x8 errors),
#                                           # compute-sanitizer memcheck over every kernel family
#   bash benchmarks/device_run5.sh bench    # op sweep, GEMM-epilogue table, backbones 224/1024 bf16 old vs new
# Everything lands in $OUT; the last lines printed are the tables.
export PYTHONPATH=. PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore
OUT=${OUT:-device_out}
mkdir -p "$OUT"
T0=$(date +%s)
stamp() { echo "[$1 at $(( $(date +%s) - T0 ))s]"; }
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,temperature.gpu --format=csv > "$OUT/gpu.txt" 2>&1
python -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee "$OUT/versions.txt"
W='import sys, json; sys.path.insert(0, "benchmarks"); import sweep'

if [ "${1:-tests}" = "tests" ]; then
  # compile every new variant in parallel processes (the Triton cache is shared), then test
  for cfg in '{"seq":1}' '{"seq":1,"seq_bc":128,"seq_warps":2}' '{"seq":1,"seq_t":8,"seq_bwd_bc":64}'; do
    for dt in fp32 bf16; do
      (timeout 120 python -c "$W; sweep.warm('v4', json.loads(sys.argv[1]), ('$dt',))" "$cfg" >/dev/null 2>>"$OUT/warm_errors.log") &
    done
  done
  for cfg in '{"algo":"chunk"}' '{"algo":"chunk","state_t":128}' '{"algo":"chunk","state_dtype":"input"}'; do
    for dt in fp32 bf16; do
      (timeout 120 python -c "$W; sweep.warm('v6', json.loads(sys.argv[1]), ('$dt',))" "$cfg" >/dev/null 2>>"$OUT/warm_errors.log") &
    done
  done
  for cfg in "gemm.warps=8" "gemm.warps=4" "gemm.bm=64,gemm.warps=4"; do
    (timeout 120 python tools/benchmark.py --gemm --dtype bf16 --iters 1 --warmup 1 --kernel-config ${cfg%%,*} \
      $( [ "$cfg" != "${cfg%%,*}" ] && echo --kernel-config ${cfg#*,} ) >/dev/null 2>>"$OUT/warm_errors.log") &
  done
  wait
  stamp "compiled"; grep -c Error "$OUT/warm_errors.log"; grep Error "$OUT/warm_errors.log" | head -5
  timeout 60 python - <<'PY' 2>&1 | tee "$OUT/exact_65537.txt"
import sys
sys.path.insert(0, "tests/ops")
from _triton_cases import run_v4
for cfg in ({}, {"seq": 1}):
    print("exact_1x65537x8", cfg, run_v4(dict(shape=(1, 65537, 8), config=cfg), "cuda"))
PY
  stamp "65537"
  timeout 200 python -m pytest -q -n 6 -p no:cacheprovider tests/ops/test_bi_wkv_triton.py tests/ops/test_bi_wkv6_triton.py \
    tests/ops/test_fused_triton.py -k "cuda and (seq or chunk or linear)" > "$OUT/cuda_tests_new.log" 2>&1
  grep -E "relative|Error|passed|failed" "$OUT/cuda_tests_new.log" | cut -c1-300 | tail -30
  stamp "op tests done"
  # whole models (fused path vs plain path, fp32 and bf16 autocast) with the new WKV kernels
  VRWKV_TRITON_V4=seq=1 VRWKV_TRITON_V6=algo=chunk VRWKV_FUSED_GEMM=1 timeout 100 python -m pytest -q -p no:cacheprovider \
    tests/models/test_fused_path.py -k "cuda" > "$OUT/cuda_models_new.log" 2>&1
  grep -E "Error|passed|failed" "$OUT/cuda_models_new.log" | cut -c1-300 | tail -8
  stamp "model tests done"
  # every kernel family (old and new) under compute-sanitizer memcheck: out-of-bounds accesses fail the run
  timeout 100 compute-sanitizer --tool memcheck --leak-check no --error-exitcode 3 python benchmarks/sanitize_ops.py \
    > "$OUT/sanitizer.log" 2>&1; echo "sanitizer rc=$?" | tee -a "$OUT/sanitizer.log"; grep -c " ok$" "$OUT/sanitizer.log"
  grep -E "NON-FINITE|ERROR SUMMARY|Invalid" "$OUT/sanitizer.log" | head -5
  stamp "tests done"
else
  timeout 210 python benchmarks/sweep.py time "$OUT/sweep4.json" 200 > "$OUT/sweep4.log" 2>&1
  stamp "sweep done"
  python - <<'PY'
import json, os
rows = json.load(open(os.environ.get("OUT", "device_out") + "/sweep4.json"))
for r in rows:
    if "error" in r:
        print(r["op"], r["config"], r["dtype"], r["shape"], r["error"][:100]); continue
    print(f"{r['op']} {r['config']:20} {r['dtype']:4} {str(r['shape']):18} eager {r['eager_f']:.3f} {r['eager_fb']:.3f}"
          f" graph {r['graph_f']:.3f} {r['graph_fb']:.3f}")
PY
  for cfg in "gemm.warps=8" "gemm.warps=4"; do
    timeout 45 python tools/benchmark.py --gemm --dtype bf16 --iters 10 --warmup 2 --kernel-config $cfg \
      --out "$OUT/gemm_${cfg#*=}.json" > "$OUT/gemm_${cfg#*=}.log" 2>&1
    echo "== GEMM epilogues $cfg"; grep "^|" "$OUT/gemm_${cfg#*=}.log" | grep -E "fwd\+bwd|fused" | head -14
  done
  stamp "gemm done"
  for variant in "old:" "new:VRWKV_TRITON_V4=seq=1 VRWKV_TRITON_V6=algo=chunk VRWKV_FUSED_GEMM=1"; do
    name=${variant%%:*}; envs=${variant#*:}
    env $envs timeout 110 python tools/benchmark.py --backbones --model vrwkv_tiny_patch16_224 --model vrwkv6_tiny_patch16_224 \
      --model vrwkv_small_patch16_224 --model vrwkv6_small_patch16_224 --res 224 --res 1024 --batch 224=256 --batch 1024=16 \
      --dtype bf16 --no-train --iters 10 --warmup 2 --out "$OUT/bb4_$name.json" > "$OUT/bb4_$name.log" 2>&1
    echo "== backbones $name"; grep "^|" "$OUT/bb4_$name.log" | head -14
  done
  stamp "all done"
fi
