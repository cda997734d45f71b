#!/bin/bash
# Device call 3 (final): compile in parallel, v4 layout sweep (vectorized default vs scalar in-thread scans), the
# full op table with the defaults, CUDA tests of the changed defaults, a small backbone table.
export PYTHONPATH=. PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore
T0=$(date +%s)
W='import sys, json; sys.path.insert(0,"benchmarks"); import sweep'
for cfg in '{}' '{"scalar":1,"warps":1,"chunk_t":16,"single_max_t":16}' '{"scalar":1,"warps":2,"chunk_t":16,"single_max_t":16}'; do
  for dt in fp32 bf16; do
    (timeout 95 python -c "$W; sweep.warm('v4', json.loads(sys.argv[1]), ('$dt',))" "$cfg" >/dev/null 2>>$OUT/warm_errors.log) &
  done
done
for dt in fp32 bf16; do
  (timeout 95 python -c "$W; sweep.warm('v6', {}, ('$dt',))" >/dev/null 2>>$OUT/warm_errors.log) &
done
wait
echo "warm-up done at $(( $(date +%s) - T0 ))s"; grep -c Error $OUT/warm_errors.log
timeout 40 python benchmarks/sweep.py time $OUT/sweep3.json 28 v4 > $OUT/sweep3.log 2>&1
python - <<'PY'
import json, os
rows = json.load(open(os.environ["OUT"] + "/sweep3.json"))
for r in rows:
    if "error" in r:
        print(r["config"], r["dtype"], r["shape"], r["error"][:100]); continue
    print(f"{r['config']:18} {r['dtype']:4} {str(r['shape']):16} eager {r['eager_f']:.3f} {r['eager_fb']:.3f} graph {r['graph_f']:.3f} {r['graph_fb']:.3f}")
PY
echo "sweep done at $(( $(date +%s) - T0 ))s"
timeout 80 python tools/benchmark.py --ops --out $OUT/h100_ops.json > $OUT/ops.log 2>&1
grep "^|" $OUT/ops.log | cut -d'|' -f2-7,8,10,12,13,15 | head -64
echo "ops bench done at $(( $(date +%s) - T0 ))s"
timeout 35 python -m pytest -q -n 6 -p no:cacheprovider tests/ops/test_bi_wkv_triton.py tests/ops/test_bi_wkv6_triton.py -k "cuda and (65537 or exact_64x196x192 or original_8x196 or 64x196x3x64 or 2x4096x6x64 or head80 or strong_decays)" 2>&1 | grep -E "relative|passed|failed|Error" | cut -c1-400 | head -12
echo "tests done at $(( $(date +%s) - T0 ))s"
timeout 55 python tools/benchmark.py --backbones --model vrwkv_tiny_patch16_224 --model vrwkv6_tiny_patch16_224 --res 224 --res 1024 --batch 224=256 --batch 1024=16 --dtype bf16 --no-train --iters 10 --warmup 2 --out $OUT/h100_backbones_mini.json > $OUT/bb.log 2>&1
grep "^|" $OUT/bb.log | head -12; tail -3 $OUT/bb.log
echo "all done at $(( $(date +%s) - T0 ))s"
