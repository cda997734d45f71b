#!/bin/bash
# Device call 2: launch overhead, launch-setting sweep (eager vs CUDA graph), profiler tables, v6 tests with the
# tf32x3 config, the long-T v4 test in detail.
export PYTHONPATH=. PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore
T0=$(date +%s)
timeout 60 python benchmarks/sweep.py overhead 2>&1 | tail -6 | tee $OUT/overhead.log
python - > /tmp/cfgs.txt <<'PY'
import json, sys
sys.path.insert(0, "benchmarks")
import sweep
for op, cfgs in (("v4", sweep.V4_CONFIGS), ("v6", sweep.V6_CONFIGS)):
    for name, cfg in cfgs.items():
        print(op, json.dumps(cfg).replace(" ", ""))
PY
while read op cfg; do
  for dt in fp32 bf16; do
    (timeout 220 python -c "import sys, json; sys.path.insert(0,'benchmarks'); import sweep; sweep.warm('$op', json.loads(sys.argv[1]), ('$dt',))" "$cfg" > /dev/null 2>> $OUT/warm_errors.log) &
  done
done < /tmp/cfgs.txt
wait
echo "warm-up done at $(( $(date +%s) - T0 ))s"; tail -5 $OUT/warm_errors.log
VRWKV_TRITON_V6="warps=8,fp32_precision=tf32x3,stages=2" timeout 120 python -m pytest -q -n 8 -p no:cacheprovider tests/ops/test_bi_wkv6_triton.py -k cuda 2>&1 | grep -E "Error|passed|failed|FAILED" | head -12
timeout 60 python -m pytest -q -p no:cacheprovider tests/ops/test_bi_wkv_triton.py -k "65537 or k_pm60" 2>&1 | grep -E "Error|relative|passed|failed" | head -8
echo "tests done at $(( $(date +%s) - T0 ))s"
timeout 170 python benchmarks/sweep.py time $OUT/sweep.json 150 > $OUT/sweep.log 2>&1
python - <<'PY'
import json, os
rows = json.load(open(os.environ["OUT"] + "/sweep.json"))
print(f"{'op':3} {'config':22} {'dt':4} {'shape':18} {'eag_f':>7} {'eag_fb':>7} {'gr_f':>7} {'gr_fb':>7}")
for r in rows:
    if "error" in r:
        print(r["op"], r["config"], r["dtype"], r["shape"], r["error"][:90]); continue
    print(f"{r['op']:3} {r['config']:22} {r['dtype']:4} {str(r['shape']):18} {r['eager_f']:7.3f} {r['eager_fb']:7.3f} {r['graph_f']:7.3f} {r['graph_fb']:7.3f}")
PY
echo "sweep done at $(( $(date +%s) - T0 ))s"
timeout 70 python benchmarks/sweep.py profile > $OUT/profile.log 2>&1
grep -E "====|_kernel|Self CPU time total|Self CUDA time total" $OUT/profile.log | head -40
echo "all done at $(( $(date +%s) - T0 ))s"
