#!/bin/bash
# Device plan, round 8 (after the H200 rounds 6-7 of benchmarks/results/README.md): one call, about 480 s, for a
# session's 15 minutes of device time (the machine's start takes ~30-40 s of it). Carry timm's wheel (the image's
# timm is older; see device_run6.sh) and run
#     run(command="python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl &&
#                  W=${W:-/tmp/device_run8}
source benchmarks/device_common.sh
V6CFGS=chunk,chunk_st16,chunk_st32,chunk_16bit_states,chunk_st16_16bit,chunk_st32_16bit

# ---- 1. correctness, diagnostics, warm-ups (parallel; nothing here is timed)
CUDA_TESTS="$CUDA_TESTS tests/tools/test_capture_bisect.py"
timeout 240 python -m pytest -v -n 8 -p no:cacheprovider --run-slow $PT_TIMEOUT $CUDA_TESTS -k cuda \
  > "$W/tests_default.log" 2>&1 &
timeout 230 python benchmarks/capture_bisect.py --batch 32 --timeout 60 --out "$OUT/bisect.json" > "$W/bisect.log" 2>&1 &
timeout 200 python benchmarks/v6_blocks_check.py --out "$OUT/v6_blocks.json" > "$W/v6_blocks.log" 2>&1 &
for m in vrwkv_tiny_patch16_224 vrwkv6_tiny_patch16_224 vrwkv_small_patch16_224 vrwkv6_small_patch16_224; do
  timeout 150 python tools/benchmark.py $BB --model $m --iters 1 --warmup 1 --no-deit > "$W/warm_$m.log" 2>&1 &
done
for cfg in '{"algo":"chunk"}' '{"algo":"chunk","state_t":16}' '{"algo":"chunk","state_t":32}' \
  '{"algo":"chunk","state_dtype":"input"}' '{"algo":"chunk","state_t":16,"state_dtype":"input"}' \
  '{"algo":"chunk","state_t":32,"state_dtype":"input"}'; do
  timeout 200 python benchmarks/sweep.py warm v6 "$cfg" > "$W/warm_sweep_$(echo "$cfg" | tr -dc 'a-z0-9').log" 2>&1 &
done
wait
stamp "correctness + diagnostics + warm-ups done"
grep -E "^(FAILED|ERROR)|[0-9]+ (passed|failed)" "$W/tests_default.log" | cut -c1-200 | tail -12
cat "$W/bisect.log" "$W/v6_blocks.log"
checkpoint

# ---- 2. timing (GPU to itself)
timeout 150 python tools/benchmark.py $BB $MODELS --graph --iters 10 --warmup 2 --out "$OUT/bb_old.json" \
  > "$W/bb.log" 2>&1
stamp "backbones done"
checkpoint
timeout 75 python benchmarks/sweep.py time "$OUT/sweep.json" 55 v6 $V6CFGS > "$W/sweep.log" 2>&1
stamp "sweep done"

# ---- 3. summary (the tables are the last thing printed)
checkpoint
grep -E "^\| (vrwkv|deit)" "$W/bb.log" | head -20
cat "$OUT/summary.md"
stamp "all done"
