#!/bin/bash
# Device call 1: CUDA tests at real shapes, compute-sanitizer memcheck, op benchmark + a small launch-config sweep.
export PYTHONPATH=. PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv
python -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
T0=$(date +%s)
timeout 200 python -m pytest -q -n 8 -p no:cacheprovider tests/ops/test_bi_wkv_triton.py tests/ops/test_bi_wkv6_triton.py -k cuda -rf 2>&1 | tail -40 | tee $OUT/tests.log
echo "tests took $(( $(date +%s) - T0 ))s"
T1=$(date +%s)
timeout 100 compute-sanitizer --tool memcheck --leak-check no --error-exitcode 3 python benchmarks/sanitize_ops.py > $OUT/sanitizer.log 2>&1; echo "sanitizer rc=$?" >> $OUT/sanitizer.log
tail -8 $OUT/sanitizer.log
echo "sanitizer took $(( $(date +%s) - T1 ))s"
T2=$(date +%s)
timeout 170 python tools/benchmark.py --ops --out $OUT/h100_ops.json > $OUT/ops.log 2>&1
grep "^|" $OUT/ops.log | head -90
echo "ops bench took $(( $(date +%s) - T2 ))s"
T3=$(date +%s)
timeout 45 python tools/benchmark.py --ops --op v4_biwkv --v4-mode exact --dtype fp32 --iters 10 --kernel-config v4.single_max_t=256 --out $OUT/sweep_single256.json 2>&1 | grep "^|" | grep fwd
timeout 45 python tools/benchmark.py --ops --op v4_biwkv --v4-mode exact --dtype fp32 --iters 10 --kernel-config v4.block_c=16 --kernel-config v4.chunk_t=128 --out $OUT/sweep_c16_t128.json 2>&1 | grep "^|" | grep fwd
timeout 60 python tools/benchmark.py --ops --op v6_biwkv --dtype fp32 --iters 10 --kernel-config v6.warps=8 --kernel-config v6.fp32_precision=tf32x3 --out $OUT/sweep_v6_w8_tf32x3.json 2>&1 | grep "^|" | grep fwd
echo "sweeps took $(( $(date +%s) - T3 ))s"
tar czf $OUT/triton_cache.tgz -C ~/.triton cache 2>/dev/null; ls -la $OUT
