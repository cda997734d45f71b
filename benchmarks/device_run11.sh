#!/bin/bash
# Device plan, round 11: the mixed-operand GEMMs' tiles (VRWKV_FUSED_MIX=1), about 310 s at most (the last 20 s, step
# 5, optional). By the roofline (round 36 of benchmarks/results/README.md) VRWKV6 reaches 2x DeiT at 1024 px only with
# these GEMMs, which device run 6's H200 GEMM table measured at 0.27-0.55x the unfused path. Their time fit the mixing
# work (each column tile of a row block forms the mixed operand again: K x N / bn per row) rather than bytes or FLOPs,
# so round 38 made the 16-bit default tiles 128 x 256 on 8 warps (one column tile for N <= 256) from 64 x 64 on 4:
# sm_90 static counts give 2.7-2.8x fewer instructions for VRWKV-T's and VRWKV6-T's projections. This times that
# against the old tiles and other shapes, then the backbones with the fastest. For the call after device_run10.sh in a
# session (900 s - the start - run 10's 550 s), or any call with ~5 minutes left:
#     run(command="python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target
#                  /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site || exit; bash benchmarks/device_run11.sh",
#         carry=[".whl"], timeout_s=<what is left>)
# (timm's wheel, as for device_run8.sh: the image's timm lacks DeiT's fused attention flag and without it the DeiT
# rows fail; the mix table runs either way.)
# 1. Warm-ups in parallel (<= 80 s): every tile config's mix table compiled (one iteration), the fused-mix backbones.
# 2. The mix table per config, GPU to itself (<= 6 x 20 s): mix_<config>.json.
# 3. mix_tiles.md (benchmarks/mix_tiles.py): fused ms per shape and config, the unfused path, the pick.
# 4. VRWKV / VRWKV6 T and S at 1024 px, batch 16, VRWKV_FUSED_MIX=1 VRWKV_FUSED_MLP=1 with the picked tiles, DeiT in
#    the same run, eager and CUDA graph (<= 60 s): bb_mix_tiles_1024.json; then the T models unfused in the same call
#    (<= 30 s): bb_unfused_1024.json.
# 5. Host time per launch (<= 20 s, ~10): launch_cost.json - is the launcher's per-tensor driver query (which the
#    short launch path no longer makes, round 40) worth microseconds on this host, and what does a launch cost
#    against a PyTorch op.
W=${W:-/tmp/device_run11}
source benchmarks/device_common.sh
# name:settings (comma-separated OP.KEY=VAL; none = the defaults)
# (old: the tiles until round 38 at C 192, mix and norm; the v6gn rows of the table are the norm GEMM's. res16k: the
# residual-epilogue GEMM with 64-row tiles at C 192, 32 at 384 - the table's res rows, 0.75x / 0.37x the unfused path
# in device run 6; static counts 1.8x / 1.3x fewer instructions, at 255 registers without spills; not picked
# automatically. s3_mlp64: 3 pipeline stages, and the fused MLP's hidden in chunks of 64 - the table's mlp rows, which
# no mix setting changes; static 43 against 55 M instructions, 253 registers; not carried into the backbone rows)
MIX_CFGS="default: old:mix.bm=64,mix.bn=64,mix.warps=4,norm.bm=64,norm.bn=64,norm.warps=4 \
m64n256w4:mix.bm=64,mix.bn=256,mix.warps=4 m128n128w8:mix.bm=128,mix.bn=128,mix.warps=8 \
s3_mlp64:mix.bm=128,mix.bn=256,mix.warps=8,mix.stages=3,mlp.bh=64 res16k:mix.res_elems=16384"
cfg_args() { local a="" kv; for kv in ${1//,/ }; do a+=" --kernel-config $kv"; done; echo "$a"; }
T_MODELS="--model vrwkv_tiny_patch16_224 --model vrwkv6_tiny_patch16_224"
BB1024="--backbones --res 1024 --batch 1024=16 --dtype bf16 --no-train"

# ---- 1. warm-ups (parallel; nothing here is timed)
for entry in $MIX_CFGS; do
  timeout 80 python tools/benchmark.py --mix-gemm --dtype bf16 --iters 1 --warmup 1 $(cfg_args "${entry#*:}") \
    > "$W/warm_mix_${entry%%:*}.log" 2>&1 &
done
VRWKV_FUSED_MIX=1 VRWKV_FUSED_MLP=1 timeout 80 python tools/benchmark.py $BB1024 $MODELS --no-deit --iters 1 \
  --warmup 1 > "$W/warm_bb.log" 2>&1 &
wait
stamp "warm-ups done"
checkpoint

# ---- 2. the mix table per tile config (GPU to itself)
for entry in $MIX_CFGS; do
  timeout 20 python tools/benchmark.py --mix-gemm --dtype bf16 --iters 10 --warmup 2 $(cfg_args "${entry#*:}") \
    --out "$OUT/mix_${entry%%:*}.json" > "$W/mix_${entry%%:*}.log" 2>&1
  stamp "mix table ${entry%%:*} done"
done
checkpoint

# ---- 3. the pick
python benchmarks/mix_tiles.py summary "$OUT" --shell > "$W/mix_pick.sh" 2> "$W/mix_pick.log"
source "$W/mix_pick.sh" 2>/dev/null
echo "mix tiles picked: ${MIX_ARGS:-defaults}"

# ---- 4. the backbones with the picked tiles, DeiT in the same run; the T models unfused after
VRWKV_FUSED_MIX=1 VRWKV_FUSED_MLP=1 timeout 60 python tools/benchmark.py $BB1024 $MODELS $MIX_ARGS --graph \
  --iters 10 --warmup 2 --out "$OUT/bb_mix_tiles_1024.json" > "$W/bb_mix.log" 2>&1
stamp "fused-mix backbones done"
timeout 30 python tools/benchmark.py $BB1024 $T_MODELS --no-deit --graph --iters 10 --warmup 2 \
  --out "$OUT/bb_unfused_1024.json" > "$W/bb_unfused.log" 2>&1
stamp "unfused rows done"
checkpoint
# ---- 5. host time per launch by launch path (benchmarks/launch_cost.py, ~10 s; last: a stop at the call's limit
# loses only this): a PyTorch op, the short path, the launcher handed tensors or addresses, Triton's own path
timeout 20 python benchmarks/launch_cost.py --out "$OUT/launch_cost.json" > "$W/launch_cost.log" 2>&1
stamp "launch cost done"
checkpoint

# ---- the tables (printed last: the reply carries the end of the output)
grep -E "^\| (vrwkv|deit)" "$W/bb_mix.log" "$W/bb_unfused.log" | cut -c1-220
cat "$OUT/mix_tiles.md"
tail -8 "$W/launch_cost.log"
stamp "all done"
