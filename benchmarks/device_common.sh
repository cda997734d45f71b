# Sourced by the device plans (benchmarks/device_run*.sh) after they set W (their log folder): the environment,
# $OUT, the step clock, the checkpoint after each step and the machine's description, and the run's common settings.
# (PYTHONPATH keeps what the caller put there: e.g. /tmp/site with a carried timm wheel, see device_run6.sh)
export PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore
OUT=${OUT:-device_out}
rm -rf "$W"; mkdir -p "$OUT" "$W"
T0=$(date +%s)
stamp() { echo "[$1 at $(( $(date +%s) - T0 ))s]"; }
# after every step: logs.tar.gz and summary.md / verdict.json in $OUT as far as the run got (a run stopped at the
# call's limit - which can be under the plan's length when the machine's start ate the session's device time -
# still brings back everything done until then)
checkpoint() {
  tar -czf "$OUT/logs.tar.gz" -C "$W" $(cd "$W" && ls *.log) 2>/dev/null
  python benchmarks/device_summary.py "$OUT" "$W" > "$W/summary_stdout.txt" 2>&1
}
MODELS="--model vrwkv_tiny_patch16_224 --model vrwkv6_tiny_patch16_224 --model vrwkv_small_patch16_224 \
--model vrwkv6_small_patch16_224"
BB="--backbones --res 224 --res 1024 --batch 224=256 --batch 1024=16 --dtype bf16"
# (the test files with CUDA cases: the device image lacks open_clip / albumentations / omegaconf, which other test
# folders import at collection)
CUDA_TESTS="tests/ops tests/models tests/tools/test_profile_backbone.py"
PT_TIMEOUT=$(python -c "import pytest_timeout" 2>/dev/null && echo "--timeout 150")
{ nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,temperature.gpu,memory.used --format=csv
  python -c "import torch, triton, timm; print('torch', torch.__version__, 'triton', triton.__version__, 'timm',
timm.__version__)"
  git log --oneline -1; } > "$OUT/gpu.txt" 2>&1
cat "$OUT/gpu.txt"
