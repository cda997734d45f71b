#!/bin/bash
# Device plan, round 7: the short follow-up to round 6 for what round 6's backbone tables lost (every row after
# VRWKV-T's training step failed: the CUDA-graph capture of that step was invalidated and left the CUDA generator
# mid-capture, "Offset increment outside graph capture encountered unexpectedly"). Eager timings only (no --graph),
# with the kernels round 6's verdict picks (v4 seq=1, v6 chunk), DeiT of the same size in the same process; plus the
# mixer-step CUDA tests whose harness round 6 found broken (CPU output gradients). About 215 s:
#     run(command="<install the carried timm wheel, see device_run6.sh>; bash benchmarks/device_run7.sh",
#         carry=[".whl"], timeout_s=235)
# $OUT: bb.json, bb.log (rows as they come, so a run stopped at the limit still reports), tests.log, gpu.txt.
export PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore
OUT=${OUT:-device_out}
mkdir -p "$OUT"
T0=$(date +%s)
stamp() { echo "[$1 at $(( $(date +%s) - T0 ))s]"; }
export VRWKV_TRITON_V4=seq=1 VRWKV_TRITON_V6=algo=chunk
MODELS="--model vrwkv_tiny_patch16_224 --model vrwkv6_tiny_patch16_224 --model vrwkv_small_patch16_224 \
--model vrwkv6_small_patch16_224"
BB="--backbones --res 224 --res 1024 --batch 224=256 --batch 1024=16 --dtype bf16"
{ nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,temperature.gpu --format=csv; git log --oneline -1; } > "$OUT/gpu.txt" 2>&1
# 1. compile warm-ups (each model's kernels into Triton's cache) beside the mixer-step tests (<= 85 s)
timeout 85 python -m pytest -v -n 4 -p no:cacheprovider tests/ops/test_mixer_steps.py -k cuda > "$OUT/tests.log" 2>&1 &
for m in vrwkv_tiny_patch16_224 vrwkv6_tiny_patch16_224 vrwkv_small_patch16_224 vrwkv6_small_patch16_224; do
  timeout 85 python tools/benchmark.py $BB --model $m --iters 1 --warmup 1 --no-deit > /dev/null 2>&1 &
done
wait
stamp "warm-ups + tests done"
grep -E "[0-9]+ (passed|failed)" "$OUT/tests.log" | tail -1
# 2. the timed backbones, GPU to itself (<= 125 s)
timeout 125 python tools/benchmark.py $BB $MODELS --iters 10 --warmup 2 --out "$OUT/bb.json" 2>&1 | tee "$OUT/bb.log"
stamp "backbones done"
