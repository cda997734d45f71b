#!/bin/bash
# Device plan, round 10: compute-sanitizer over every kernel family - the issue's "no out-of-bounds access (run
# compute-sanitizer on a device)". Round 18's H200 run got through 16 of the cases in its 220 s (the sanitizer ran
# next to the compile warm-ups, each kernel compiled under it). For a session after runs 8 / 9 (or when they have
# been run), one call of about 550 s:
#     run(command="bash benchmarks/device_run10.sh", timeout_s=600)
# 1. benchmarks/sanitize_ops.py without the sanitizer, its four sections (v4, v6, fused, mix) in parallel (<= 180 s):
#    every kernel variant compiled into Triton's cache (170 cases: ~16 min interpreted on CPU; compiles dominate on a
#    GPU), each case's outputs and gradients checked finite (sanitize_plain_*.log).
# 2. The same cases under compute-sanitizer's memcheck, two processes side by side (v4 + fused, v6 + mix; <= 360 s;
#    sanitizer_*.log, then sanitizer.log): out-of-bounds and misaligned accesses of every kernel family - v4 tile
#    scans and seq kernels, both modes, the gate; v6 walk (and its value blocks) and chunk kernels (states walked,
#    scanned, carried, 16-bit), the time mix's entry points; the fused elementwise, GEMM-epilogue and mixed-operand
#    kernels - fp32 and bf16, odd sizes.
# 3. summary.md (benchmarks/device_summary.py: the sanitizer line - rc, ERROR SUMMARY, cases ok, non-finite).
W=${W:-/tmp/device_run10}
source benchmarks/device_common.sh

for part in v4 v6 fused mix; do
  ( SANITIZE_SECTIONS=$part timeout 180 python benchmarks/sanitize_ops.py > "$W/sanitize_plain_$part.log" 2>&1
    echo "plain rc=$?" >> "$W/sanitize_plain_$part.log" ) &
done
wait
stamp "plain runs done ($(cat "$W"/sanitize_plain_*.log | grep -c ' ok$') cases ok)"
grep -h "plain rc\|cases done\|NON-FINITE" "$W"/sanitize_plain_*.log
checkpoint

for part in v4,fused v6,mix; do
  ( SANITIZE_SECTIONS=$part timeout 360 compute-sanitizer --tool memcheck --leak-check no --error-exitcode 3 \
      python benchmarks/sanitize_ops.py > "$W/sanitizer_${part/,/_}.log" 2>&1
    echo "sanitizer rc=$?" >> "$W/sanitizer_${part/,/_}.log" ) &
done
wait
cat "$W"/sanitizer_v4_fused.log "$W"/sanitizer_v6_mix.log > "$W/sanitizer.log"  # (device_summary reads this one)
stamp "memcheck done"
checkpoint
grep -E "ERROR SUMMARY|NON-FINITE|Invalid|sanitizer rc|cases done" "$W/sanitizer.log" | head -20
grep "^Sanitizer:" "$OUT/summary.md"
stamp "all done"
