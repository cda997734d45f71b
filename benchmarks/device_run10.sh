#!/bin/bash
# Device plan, round 10: compute-sanitizer over every kernel family - the issue's "no out-of-bounds access (run
# compute-sanitizer on a device)". Round 18's H200 run got through 16 of the cases in its 220 s (the sanitizer ran
# next to the compile warm-ups, each kernel compiled under it). For a session after runs 8 / 9 (or when they have
# been run), one call of about 560 s:
#     run(command="bash benchmarks/device_run10.sh", timeout_s=600)
# 1. benchmarks/sanitize_ops.py once without the sanitizer (<= 150 s): every kernel variant compiled into Triton's
#    cache, and each case's outputs and gradients checked finite (sanitize_plain.log).
# 2. The same cases under compute-sanitizer's memcheck (<= 380 s; sanitizer.log): out-of-bounds and misaligned
#    accesses of every kernel family - v4 tile scans and seq kernels, both modes, the gate; v6 walk (and its value
#    blocks) and chunk kernels (states walked, scanned, carried, 16-bit), the time mix's entry points; the fused
#    elementwise, GEMM-epilogue and mixed-operand kernels - fp32 and bf16, odd sizes.
# 3. summary.md (benchmarks/device_summary.py: the sanitizer line - rc, ERROR SUMMARY, cases ok, non-finite).
W=${W:-/tmp/device_run10}
source benchmarks/device_common.sh

timeout 150 python benchmarks/sanitize_ops.py > "$W/sanitize_plain.log" 2>&1
echo "plain rc=$?" >> "$W/sanitize_plain.log"
stamp "plain run done ($(grep -c ' ok$' "$W/sanitize_plain.log") cases ok)"
tail -3 "$W/sanitize_plain.log"
checkpoint

( timeout 380 compute-sanitizer --tool memcheck --leak-check no --error-exitcode 3 python benchmarks/sanitize_ops.py \
  > "$W/sanitizer.log" 2>&1; echo "sanitizer rc=$?" >> "$W/sanitizer.log" )
stamp "memcheck done"
checkpoint
grep -E "ERROR SUMMARY|NON-FINITE|Invalid|sanitizer rc|cases done" "$W/sanitizer.log" | head -20
grep "^Sanitizer:" "$OUT/summary.md"
stamp "all done"
