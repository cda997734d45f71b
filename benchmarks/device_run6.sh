#!/bin/bash
# Device plan, round 6: everything in ONE call that fits a session's 15 minutes of device time (machine start about
# 1-2 min + this script, bounded to about 575 s by the step timeouts below):
#     run(command="bash benchmarks/device_run6.sh", timeout_s=590)
# The device image's timm is older than ours (no timm.models._input; our fallback covers that, but the numbers should
# come from the timm CI runs): carry our timm's wheel (`pip download --no-deps timm==1.0.31 -d .whl`, .whl ignored
# in .git/info/exclude) and start the command with
#     python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site;
# 1. Correctness, in parallel (<= 240 s): the CUDA tests with the current defaults (every op, fused-kernel and model
#    case, the opt-in kernels' own cases included; pytest -v, so a killed run still leaves a line per test), the
#    whole-model CUDA tests with every opt-in on, compute-sanitizer memcheck over every kernel family, and compile
#    warm-ups of the timing steps (so that step 2 hits the Triton cache), and tools/benchmark_host.py --autocast on
#    the machine's CPU (host time per training step / forward with the launches stubbed: host_autocast.log; with
#    Triton's host path per launch, compiled kernels: host_launches.log).
# 2. Timing, one process at a time (<= 325 s): WKV kernels old vs new (benchmarks/sweep.py, eager and CUDA graph), the
#    GEMM-epilogue table (with the mixed-operand GEMMs of VRWKV_FUSED_MIX against the shift pass + cuBLAS), backbones VRWKV/VRWKV6 T and S at 224 and 1024 in bf16 plus a training step at 224, with the
#    current defaults ("old", DeiT of the same size in the same run) and with every opt-in ("new"); inference also
#    as CUDA-graph replays (--graph: what eager 224, which is launch-bound, would give without the host overhead).
# 3. benchmarks/device_summary.py: summary.md (tests, backbones against DeiT and the issue-3 targets, kernels old/new)
#    and verdict.json (which opt-in to make default, by the rule in its docstring), printed last.
# $OUT gets at most 8 files: summary.md, verdict.json, the four timing JSONs, gpu.txt and logs.tar.gz (every log).
W=${W:-/tmp/device_run6}
source benchmarks/device_common.sh
NEW="VRWKV_TRITON_V4=seq=1 VRWKV_TRITON_V6=algo=chunk VRWKV_FUSED_GEMM=1 VRWKV_FUSED_MIX=1 VRWKV_FUSED_MLP=1"

# ---- 1. correctness + compile warm-ups (parallel; the GPU is shared, nothing here is timed)
timeout 240 python -m pytest -v -n 8 -p no:cacheprovider --run-slow $PT_TIMEOUT $CUDA_TESTS -k cuda \
  > "$W/tests_default.log" 2>&1 &
env $NEW timeout 200 python -m pytest -v -p no:cacheprovider --run-slow $PT_TIMEOUT tests/models/test_fused_path.py -k cuda \
  > "$W/tests_optin.log" 2>&1 &
( timeout 220 compute-sanitizer --tool memcheck --leak-check no --error-exitcode 3 python benchmarks/sanitize_ops.py \
  > "$W/sanitizer.log" 2>&1; echo "sanitizer rc=$?" >> "$W/sanitizer.log" ) &
for m in vrwkv_tiny_patch16_224 vrwkv6_tiny_patch16_224 vrwkv_small_patch16_224 vrwkv6_small_patch16_224; do
  ( timeout 110 python tools/benchmark.py $BB --model $m --iters 1 --warmup 1 --no-deit
    env $NEW timeout 110 python tools/benchmark.py $BB --model $m --iters 1 --warmup 1 --no-deit
  ) > "$W/warm_$m.log" 2>&1 &
done
i=0
for cfg in 'v4 {"seq":0}' 'v4 {"seq":1}' 'v6 {"algo":"walk"}' 'v6 {"algo":"chunk"}' 'v6 {"algo":"chunk","state_t":128}' \
  'v6 {"algo":"chunk","state_dtype":"input"}'; do
  i=$((i + 1))
  timeout 200 python benchmarks/sweep.py warm ${cfg%% *} "${cfg#* }" > "$W/warm_sweep_$i.log" 2>&1 &
done
timeout 120 python tools/benchmark.py --gemm --dtype bf16 --iters 1 --warmup 1 > "$W/warm_gemm.log" 2>&1 &
# the host-time harness on this machine's CPU (stubbed launches, bf16 autocast): set against the eager / graph
# training steps of step 2 it tells how much of the eager gap is Python per launch
( timeout 150 python tools/benchmark_host.py --train --autocast --per-op --repeats 3 --calls 10
  timeout 60 python tools/benchmark_host.py --autocast --per-op --repeats 3 --calls 10 ) > "$W/host_autocast.log" 2>&1 &
# the same with Triton's own host path per launch (compiled kernels, C call recorded; our short launch path vs
# Triton's JITFunction.run): what a launch costs this machine's CPU before the driver
timeout 200 python tools/benchmark_host.py --train --autocast --launches triton --repeats 3 --calls 10 \
  > "$W/host_launches.log" 2>&1 &
wait
stamp "correctness + warm-ups done"
grep -E "^(FAILED|ERROR)|[0-9]+ (passed|failed)" "$W/tests_default.log" | cut -c1-200 | tail -12
grep -E "[0-9]+ (passed|failed)" "$W/tests_optin.log" | tail -2
grep -E "ERROR SUMMARY|NON-FINITE|sanitizer rc" "$W/sanitizer.log" | head -5
checkpoint

# ---- 2. timing (GPU to itself; the backbones first: the issue-3 targets)
timeout 100 python tools/benchmark.py $BB $MODELS --graph --iters 10 --warmup 2 --out "$OUT/bb_old.json" \
  > "$W/bb_old.log" 2>&1
stamp "backbones old done"
checkpoint
env $NEW timeout 90 python tools/benchmark.py $BB $MODELS --graph --iters 10 --warmup 2 --no-deit --out "$OUT/bb_new.json" \
  > "$W/bb_new.log" 2>&1
stamp "backbones new done"
checkpoint

# (the chunk variants with fewer state bytes: tools/roofline.py puts the chunk WKV's floor at 8.9 ms for VRWKV6-T at
# 1024 / b64, 6.5 with states every 128 tokens or in 16 bits)
timeout 85 python benchmarks/sweep.py time "$OUT/sweep.json" 65 v4,v6 \
  d_default,seq_t16,walk,chunk,chunk_st128,chunk_16bit_states \
  > "$W/sweep.log" 2>&1
stamp "sweep done"
checkpoint
timeout 55 python tools/benchmark.py --gemm --dtype bf16 --iters 10 --warmup 2 --out "$OUT/gemm.json" \
  > "$W/gemm.log" 2>&1
stamp "gemm done"
# ---- 3. summary (the tables are the last thing printed)
checkpoint
cat "$OUT/summary.md"
stamp "all done"
