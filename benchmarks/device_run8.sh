#!/bin/bash
# Device plan, round 8 (after the H200 rounds 6-7 of benchmarks/results/README.md): one call, about 590 s (the steps'
# timeouts add up to 590), for a session's 15 minutes of device time (the machine's start takes ~30-40 s of it).
# Carry timm's wheel (the image's timm is older; see device_run6.sh) and those of flash-linear-attention's kernels
# (fla-core, einops, packaging: pure Python) and run
#     run(command="python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl &&
#                  export PYTHONPATH=/tmp/site; bash benchmarks/device_run8.sh", carry=[".whl"], timeout_s=600)
# 1. In parallel (<= 220 s): the CUDA tests with the new defaults (v4 seq, v6 chunk; the refusal of unvalidated v6
#    block sizes, the mixer-step harness fix, the capture test, the fwd_carry cases); benchmarks/capture_bisect.py
#    (which part of a training step breaks its CUDA-graph capture); benchmarks/v6_blocks_check.py (which v6
#    setting gave wrong gradients); compile warm-ups of step 2.
# 2. Timing, GPU to itself (<= 275 s): backbones VRWKV/VRWKV6 T and S at 224 and 1024 bf16 + training at 224, DeiT
#    in the same run, eager and CUDA graph, peak memory above each row's start (bb_old.json: the summary's first
#    column is the current defaults); then the v6 chunk kernels in bf16 (VRWKV6-T's 1024-px shape first) with
#    the states walked at every length (state_walk=64) or scanned at every length (state_walk=0), states every 16 /
#    64 tokens, fp32 and 16-bit states, the state-chunk output kernel (fwd_carry=1), the
#    state-chunk backward (bwd_carry=1, alone and with fwd_carry), registers capped at 128 / 168 per thread
#    (maxnreg), 8 warps (chunk_w8: the backward's spill at the training shape 528 -> 128 bytes), the walk kernels
#    (round 27: in-chunk pairs as tensor-core products, the forward's value columns in blocks of 32 or not; round
#    18's walk rows are the before-numbers), and the v4 seq kernels with 16 / 32-token chunks, 32 / 64 / 128
#    channels per program, forward registers capped at 96 / 64 (sweep.json; VRWKV-T needs
#    8.1 -> 7.4 ms at 1024, its WKV forward being 0.14-0.22 ms of it per layer), and flash-linear-attention's causal
#    kernels as the v6 WKV (config fla, both directions);
#    then VRWKV6-T with those (bb_new.json, the summary's "new" column: how fast VRWKV6 gets with a tuned
#    third-party WKV); VRWKV-T / VRWKV6-T at 1024 px, batch 4, as graph replays (bb_b4.json: L2 residency).
#    Last (<= 95 s): GPU time per op group and top kernels, VRWKV-T / VRWKV6-T / DeiT-T, of the 1024-px forward
#    (b16, profile_1024.md) and of a 224-px training step (b128, profile_train.md).
# Then, with the session's remaining device time, device_run9.sh: the backbones with the sweep's fastest settings.
# 3. summary.md (benchmarks/device_summary.py) after every step; $OUT: summary.md, verdict.json, bb_old.json,
#    sweep.json, bb_new.json, bb_b4.json, bisect.json, v6_blocks.json, profile_1024.md, profile_train.md, gpu.txt,
#    logs.tar.gz.
W=${W:-/tmp/device_run8}
source benchmarks/device_common.sh
CFGS=chunk,walk,walk_bv32,chunk_swalk64,chunk_scan,chunk_st16,chunk_16bit_states,chunk_carry,chunk_bcarry,\
chunk_carry_both,chunk_r128,chunk_r168,chunk_w8,chunk_carry_r128,seq_t16,seq_inline,seq_t16_bc128,seq_t32,seq_bc32,\
seq_r96,seq_r64,fla,chunk_carry_st128_16bit,chunk_swalk64_st128_16bit,chunk_carry_swalk64,\
chunk_carry_swalk64_st128_16bit,chunk_pairs,chunk_pairs_keys
# flash-linear-attention's causal kernels as the v6 WKV (algo=fla: the comparison point; its wheel and einops' carried
# in .whl with timm's; its autotuning is cached on disk by the warm-ups, FLA_CACHE_RESULTS defaults to 1)
FLA_BB="--backbones --res 1024 --batch 1024=16 --dtype bf16 --model vrwkv6_tiny_patch16_224 --kernel-config v6.algo=fla"

# ---- 1. correctness, diagnostics, warm-ups (parallel; nothing here is timed)
CUDA_TESTS="$CUDA_TESTS tests/tools/test_capture_bisect.py"
timeout 220 python -m pytest -v -n 8 -p no:cacheprovider --run-slow $PT_TIMEOUT $CUDA_TESTS -k cuda \
  > "$W/tests_default.log" 2>&1 &
timeout 220 python benchmarks/capture_bisect.py --batch 32 --timeout 60 --out "$OUT/bisect.json" > "$W/bisect.log" 2>&1 &
timeout 200 python benchmarks/v6_blocks_check.py --out "$OUT/v6_blocks.json" > "$W/v6_blocks.log" 2>&1 &
for m in vrwkv_tiny_patch16_224 vrwkv6_tiny_patch16_224 vrwkv_small_patch16_224 vrwkv6_small_patch16_224; do
  timeout 150 python tools/benchmark.py $BB --model $m --iters 1 --warmup 1 --no-deit > "$W/warm_$m.log" 2>&1 &
done
timeout 200 python tools/benchmark.py $FLA_BB --iters 1 --warmup 1 --no-deit > "$W/warm_fla.log" 2>&1 &
for cfg in ${CFGS//,/ }; do  # every timed config (v4 and v6), compiled for the sweep (which times bf16 only)
  timeout 200 python benchmarks/sweep.py warm "$cfg" bf16 > "$W/warm_sweep_$cfg.log" 2>&1 &
done
wait
stamp "correctness + diagnostics + warm-ups done"
grep -E "^(FAILED|ERROR)|[0-9]+ (passed|failed)" "$W/tests_default.log" | cut -c1-200 | tail -12
cat "$W/bisect.log" "$W/v6_blocks.log"
checkpoint

# ---- 2. timing (GPU to itself)
timeout 140 python tools/benchmark.py $BB $MODELS --graph --iters 10 --warmup 2 --out "$OUT/bb_old.json" \
  > "$W/bb.log" 2>&1
stamp "backbones done"
checkpoint
timeout 90 python benchmarks/sweep.py time "$OUT/sweep.json" 70 v4,v6 $CFGS bf16 > "$W/sweep.log" 2>&1
cp "$OUT/sweep.json" "$W/sweep.json" 2>/dev/null  # (for device_run9.sh, the session's second call on this machine)
stamp "sweep done"
checkpoint
# VRWKV6-T with fla's kernels as its WKV (1024 px b16 and the 224-px training step): the summary's "new" column
timeout 25 python tools/benchmark.py $FLA_BB --iters 10 --warmup 2 --no-deit --out "$OUT/bb_new.json" \
  > "$W/bb_fla.log" 2>&1
stamp "fla backbone done"
checkpoint
# the 1024-px forward at batch 4 (graph replays; DeiT-T's b16 rows: bb_old.json): do smaller batches, whose 6-MB
# activation planes stay in the 50-MB L2 between a kernel and the next, run more images per second than b16's 25 MB?
timeout 20 python tools/benchmark.py --backbones --res 1024 --batch 1024=4 --dtype bf16 --no-train --no-deit --graph \
  --model vrwkv_tiny_patch16_224 --model vrwkv6_tiny_patch16_224 --iters 10 --warmup 2 --out "$OUT/bb_b4.json" \
  > "$W/bb_b4.log" 2>&1
stamp "batch-4 rows done"
checkpoint
# where the GPU time goes, kernels per op group, ours and DeiT-T, last (a stop at the call's limit loses only these):
# the 1024-px forward (VRWKV-T 8.1 ms per batch of 16 where 2x DeiT-T asks 7.4; its floor ~3.7 ms at 4.8 TB/s) and a
# 224-px training step (round 7: VRWKV6-T ~73 ms per b128 step, its WKV ~20 ms of it, DeiT-T 25 ms)
timeout 35 python tools/profile_backbone.py --models VRWKV-T VRWKV6-T DeiT-T --img-size 1024 --batch 16 --steps 2 \
  --no-compare-unfused --json "$W/profile_1024.json" --md "$OUT/profile_1024.md" > "$W/profile_1024.log" 2>&1
stamp "1024 profile done"
checkpoint
timeout 60 python tools/profile_backbone.py --train --models VRWKV-T VRWKV6-T DeiT-T --img-size 224 --batch 128 \
  --steps 2 --no-compare-unfused --json "$W/profile_train.json" --md "$OUT/profile_train.md" > "$W/profile.log" 2>&1
stamp "training profile done"

# ---- 3. summary (the tables are the last thing printed)
checkpoint
grep -E "^\| (vrwkv|deit)" "$W/bb.log" "$W/bb_b4.log" | head -24
cat "$OUT/summary.md"
stamp "all done"
