#!/bin/bash
# Backbone performance run on a lent GPU (tools/benchmark_backbones.py, tools/profile_backbone.py).
#   LIMIT=420 bash benchmarks/run_backbones_device.sh all      # CUDA tests + profile + benchmarks in priority order
#   LIMIT=420 bash benchmarks/run_backbones_device.sh compile  # compile tests + compiled benchmarks
#   LIMIT=130 bash benchmarks/run_backbones_device.sh confirm  # short re-measure: eager bf16 224/1024, VRWKV-T profile
# The benchmark stops starting new configs ~70 s before LIMIT (seconds); results are saved after each config.
# Writes under $OUT (default ./out): tests.log, h100_profile.{json,md}, h100_backbones*.{json,md}.
set -u
OUT=${OUT:-out}
LIMIT=${LIMIT:-570}
mkdir -p "$OUT"
export PYTHONPATH=. PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore
nvidia-smi --query-gpu=name,memory.used,memory.total,clocks.sm --format=csv,noheader
python -c "import torch, triton, timm; print('torch', torch.__version__, 'triton', triton.__version__, 'timm', timm.__version__)"
left() { echo $(( LIMIT - SECONDS )); }
if [ "${1:-all}" = "all" ]; then
  timeout 130 python -m pytest -q -p no:cacheprovider --run-slow tests/ops/test_fused_triton.py tests/models/test_fused_path.py \
    -k "cuda and not compile_fullgraph" -rf 2>&1 | tail -25 | tee "$OUT/tests.log"
  echo "tests done at ${SECONDS}s"
  timeout 70 python tools/profile_backbone.py --models VRWKV-T VRWKV6-T DeiT-T --img-size 1024 \
    --batch 16 --json "$OUT/h100_profile.json" --md "$OUT/h100_profile.md" 2>&1 | grep "^|"
  echo "profile done at ${SECONDS}s"
  timeout $(( $(left) - 5 )) python tools/benchmark_backbones.py --out "$OUT/h100_backbones.json" \
    --md "$OUT/h100_backbones.md" --res 224 512 1024 --dtypes bf16 fp32 --modes eager compile --train \
    --compile-res 1024 --compile-first VRWKV-T --deadline $(( $(left) - 60 )) 2>&1 | grep -v '^{' \
    | grep -v "deadline |" | tail -110
elif [ "$1" = "confirm" ]; then
  timeout 40 python tools/profile_backbone.py --models VRWKV-T --img-size 1024 --batch 16 --no-compare-unfused \
    --json "$OUT/h100_profile_confirm.json" --md "$OUT/h100_profile_confirm.md" 2>&1 | grep "^|"
  timeout $(( $(left) - 5 )) python tools/benchmark_backbones.py --out "$OUT/h100_backbones_confirm.json" \
    --md "$OUT/h100_backbones_confirm.md" --models VRWKV-T VRWKV-S VRWKV-B VRWKV6-T --res 224 1024 --dtypes bf16 \
    --modes eager --unfused --deadline $(( $(left) - 25 )) 2>&1 | grep -v '^{' | grep -v "deadline |" | tail -40
else
  timeout 200 python -m pytest -q -p no:cacheprovider --run-slow tests/models/test_fused_path.py -k "compile_fullgraph_cuda" \
    2>&1 | tail -20 | tee "$OUT/tests_compile.log"
  timeout $(( $(left) - 5 )) python tools/benchmark_backbones.py --out "$OUT/h100_backbones_compile.json" \
    --md "$OUT/h100_backbones_compile.md" --res 224 1024 --dtypes bf16 --modes compile --compile-res 1024 224 \
    --compile-first VRWKV-S VRWKV6-S VRWKV-B VRWKV6-B --deadline $(( $(left) - 70 )) 2>&1 | grep -v '^{' | tail -60
fi
echo "elapsed ${SECONDS}s"
